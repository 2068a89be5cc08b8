#!/usr/bin/env bash
# Cluster benchmark: stock Celery Gossip vs gossip_fast, real brokers, real workers.
#
#   scripts/cluster-bench.sh            # full run, ~15 min on 2 cores
#   scripts/cluster-bench.sh --quick    # smoke run, ~2 min
#   scripts/cluster-bench.sh --help     # every option (sizes, brokers, windows, ...)
#
# Starts its own Redis and RabbitMQ on loopback (tests/brokers.py), publishes
# byte-realistic heartbeats of N simulated workers (benchmarks/cluster/publisher.py),
# runs `celery worker --pool solo` processes of the bench app
# (benchmarks/cluster/app.py: stock Gossip, gossip_fast, gossip_fast with the
# classic receive path) and measures their main-process CPU
# (benchmarks/cluster/run.py).  Writes docs/cluster-benchmark.md (the table),
# docs/cluster-benchmark.png (the plot) and docs/cluster-benchmark.json (raw
# data), then prints the table.  --quick writes to
# ${TMPDIR:-/tmp}/gossip-fast-cluster-bench-quick/ unless --out-dir is given, so a
# smoke run never replaces the published numbers.
#
# Measure on a quiet machine: the workers, the publisher and the broker share
# its cores; the report gives the machine's load during every window.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    bash scripts/setup.sh >&2
fi
# The benchmark's own needs (also the `bench` extra of pyproject.toml, once it exists).
if ! .venv/bin/python -c 'import psutil, matplotlib, redis, pytest' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet 'psutil>=5.9' 'matplotlib>=3.7' 'redis>=5' 'pytest>=8' >&2
fi
# Debian's redis-server and rabbitmq-server (does nothing when both are there).
bash scripts/install-brokers.sh >&2

exec .venv/bin/python -m benchmarks.cluster.run "$@"
