#!/usr/bin/env bash
# Instructions the whole worker executes, stock Celery vs gossip_fast, counted
# by valgrind's callgrind on real brokers (benchmarks/cluster/instructions.py):
# independent of the machine's load, for the small clusters where the CPU-time
# benchmark (scripts/cluster-bench.sh) is noisiest.  ~5 min a broker.
#
#   scripts/callgrind-worker.sh                      # Redis and RabbitMQ, idle, 10, 50, 100 workers
#   scripts/callgrind-worker.sh --brokers redis --sizes 0,10 --out /tmp/x.md
#   scripts/callgrind-worker.sh --help
#
# Writes docs/worker-instructions.md (unless --out) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    bash scripts/setup.sh >&2
fi
if ! .venv/bin/python -c 'import psutil, redis' 2>/dev/null; then
    .venv/bin/python -m pip install --quiet 'psutil>=5.9' 'redis>=5' >&2
fi
case " $* " in
    *" -h "*|*" --help "*) exec .venv/bin/python -m benchmarks.cluster.instructions "$@" ;;
esac
if ! command -v valgrind >/dev/null; then
    { apt-get update -qq && apt-get install -y -qq valgrind; } >&2 || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
fi
bash scripts/install-brokers.sh >&2
exec .venv/bin/python -m benchmarks.cluster.instructions "$@"
