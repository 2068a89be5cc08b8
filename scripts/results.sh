#!/usr/bin/env bash
# Regenerate the in-process results shown in the README: the pytest-benchmark
# suite (stock / python / cython side by side, one run) -> docs/benchmarks.md,
# and the main job's side-by-side table and chart -> docs/bench-cli.txt, .png.
# The real-broker cluster benchmark is scripts/cluster-bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
mkdir -p docs .benchmarks
.venv/bin/python -m pytest benchmarks --benchmark-only -q -p no:cacheprovider \
    --benchmark-json=.benchmarks/results.json
.venv/bin/python benchmarks/summary.py .benchmarks/results.json -o docs/benchmarks.md
.venv/bin/gossip-fast bench --quiet --plot docs/bench-cli.png | tee docs/bench-cli.txt
cat docs/benchmarks.md
