"""Cluster benchmark: real brokers, real ``celery worker`` processes, simulated peers.

``scripts/cluster-bench.sh`` (or ``python -m benchmarks.cluster.run``) starts
Redis and RabbitMQ (``tests/brokers.py``), publishes byte-realistic
heartbeats of N simulated workers (``publisher.py``) to each, and measures
the main-process CPU of a stock Celery worker and of gossip_fast workers
(``app.py``) following the same stream; ``report.py`` writes the Markdown
table and the plot.
"""
