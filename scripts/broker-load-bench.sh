#!/usr/bin/env bash
# Broker-load benchmark: broker CPU per published heartbeat and deliveries per
# second against the number of subscribing workers, stock gossip vs digest mode
# (docs/digest-mode.md), on Redis and RabbitMQ.
#
#   scripts/broker-load-bench.sh            # full run, ~8 min on 2 cores
#   scripts/broker-load-bench.sh --quick    # smoke run, ~2 min
#   scripts/broker-load-bench.sh --help     # every option (subscribers, rate, windows, ...)
#
# Starts its own Redis and RabbitMQ on loopback (tests/brokers.py), publishes
# byte-realistic heartbeats (benchmarks/cluster/publisher.py) to S simulated
# subscribers that read every socket and discard the bytes
# (benchmarks/broker_load.py), and measures the broker's CPU.  Writes
# docs/broker-load.md (tables), docs/broker-load.png (plot) and
# docs/broker-load.json (raw data), then prints the tables.  --quick writes to
# ${TMPDIR:-/tmp}/gossip-fast-broker-load-quick/ unless --out-dir is given.
#
# Measure on a quiet machine: the broker, the subscribers and the publisher
# share its cores; the report gives the machine's load during every window.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    bash scripts/setup.sh >&2
fi
# The benchmark's own needs (the `bench` extra of pyproject.toml).
if ! .venv/bin/python -c 'import psutil, matplotlib, redis, pytest' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet 'psutil>=5.9' 'matplotlib>=3.7' 'redis>=5' 'pytest>=8' >&2
fi
# Debian's redis-server and rabbitmq-server (does nothing when both are there).
bash scripts/install-brokers.sh >&2
# 500 subscribers plus the brokers' own descriptors: raise the soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec .venv/bin/python -m benchmarks.broker_load "$@"
