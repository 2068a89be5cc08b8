#!/usr/bin/env bash
# Instructions per heartbeat through Gossip.on_message, counted by
# valgrind/callgrind (independent of the machine's load): 2,000 workers in
# the table, LOOPS x 2,000 heartbeats, real kombu messages
# (benchmarks/callgrind_feed.py).  Needs valgrind; about 4 min for stock.
# Usage: scripts/callgrind.sh [IMPLEMENTATIONS [TRANSPORT [LOOPS]]]
#        e.g. scripts/callgrind.sh stock,python,cython redis 10
set -euo pipefail
cd "$(dirname "$0")/.."
implementations=${1:-stock,python,cython}
transport=${2:-redis}
loops=${3:-10}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for impl in ${implementations//,/ }; do
    valgrind --tool=callgrind --toggle-collect=starmap_next \
        --callgrind-out-file="$out/$impl.out" \
        .venv/bin/python benchmarks/callgrind_feed.py "$impl" "$loops" "$transport" \
        > /dev/null 2> "$out/$impl.log" || { cat "$out/$impl.log" >&2; exit 1; }
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$out/$impl.out")
    echo "$impl $transport: $((total / (loops * 2000))) instructions per heartbeat"
done
