#!/usr/bin/env bash
# Set up and run the main job: stock Celery vs gossip_fast (fallback and
# compiled) side by side on a simulated cluster, in process, no broker.
# Arguments go to `gossip-fast bench` (see --help), e.g. --workers 5000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec .venv/bin/gossip-fast bench "$@"
