"""Cluster tests: real ``celery worker`` processes on real Redis and RabbitMQ.

``app.py`` is the Celery app the workers run, ``harness.py`` starts, watches
and stops them, ``conftest.py`` has the fixtures and ``test_cluster.py`` the
tests.  Run them with ``python -m pytest tests/cluster`` from the repository
root (they need ``scripts/install-brokers.sh``).
"""
