#!/usr/bin/env bash
# Cluster benchmark: stock Celery Gossip vs gossip_fast, real brokers, real workers.
#
#   scripts/cluster-bench.sh            # full run, ~25 min on 2 cores
#   scripts/cluster-bench.sh --quick    # smoke run, ~3 min
#   scripts/cluster-bench.sh --help     # every option (sizes, brokers, windows, ...)
#   scripts/cluster-bench.sh --brokers redis --sizes 0,10,100 --kinds stock,fast --no-max-rate
#
# Starts its own Redis and RabbitMQ on loopback (tests/brokers.py), publishes
# byte-realistic heartbeats of N simulated workers (benchmarks/cluster/publisher.py),
# runs `celery worker --pool solo` processes of the bench app
# (benchmarks/cluster/app.py: stock Gossip, gossip_fast, gossip_fast with the
# classic receive path) side by side for N = idle, 10, 50, 100, 500, 2,000
# and 10,000, and measures the total CPU of their main processes (idle
# included; per-thread nanoseconds from /proc on Linux: benchmarks/cluster/cpu.py),
# the publish-to-applied latency of the heartbeats at 10, 100 and 2,000
# (benchmarks/cluster/latency.py) and the highest rate each follows
# (benchmarks/cluster/run.py).  Writes docs/cluster-benchmark.md (the
# tables), docs/cluster-benchmark.png (CPU and stock ÷ gossip_fast against
# cluster size) and docs/cluster-benchmark.json (raw data), then prints the
# tables.  --quick writes to ${TMPDIR:-/tmp}/gossip-fast-cluster-bench-quick/
# unless --out-dir is given, so a smoke run never replaces the published numbers
# (give --out-dir to a partial run, e.g. the last example above, for the same).
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
