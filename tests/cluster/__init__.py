"""Cluster tests: real ``celery worker`` processes on real Redis and RabbitMQ.

* ``app.py``: the Celery app the workers run (``gossip_fast.install(app)``,
  or stock Gossip), with a user bootstep written as in Celery's extending
  guide that records node_join / node_leave / node_lost and election wins.
* ``harness.py``: starts, polls and stops the workers.
* ``conftest.py``: the broker / implementation fixtures, failure reports
  with the worker logs, and the end-of-run measurements.
* ``test_fast_cluster.py``, ``test_mixed_cluster.py``,
  ``test_broker_restart.py``, ``test_digest_cluster.py`` (digest mode) and
  the others: the tests (marked ``cluster`` and ``broker``);
  ``test_harness.py``: the harness itself (no broker).

Run from the repository root (the brokers come from
``scripts/install-brokers.sh``)::

    python -m pytest tests/cluster                  # about 3 minutes on 2 cores
    python -m pytest tests -m "not cluster"         # everything else

Knobs (environment): ``GOSSIP_FAST_CLUSTER_LOGLEVEL`` (the workers'
``--loglevel``, default INFO), ``GOSSIP_FAST_CLUSTER_START_TIMEOUT`` (seconds,
default 60), ``GOSSIP_FAST_CLUSTER_RESULTS`` (where to write the measurements
as JSON), ``GOSSIP_FAST_NO_EXTENSIONS=1`` (test the fallback only), and
``GOSSIP_FAST_REDIS_URL`` / ``GOSSIP_FAST_AMQP_URL`` (use existing brokers;
the restart test is then skipped).
"""
