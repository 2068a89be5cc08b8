#!/usr/bin/env bash
# Create .venv (if needed) and install gossip_fast into it, compiled core
# included, with the dev extra (the test suite and the build tools).  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# GOSSIP_FAST_REQUIRE_EXTENSIONS=1: a broken build fails here instead of
# silently installing the pure-Python fallback
GOSSIP_FAST_REQUIRE_EXTENSIONS=1 .venv/bin/python -m pip install --quiet -e '.[dev]'
.venv/bin/python -c 'import gossip_fast; print("gossip_fast", gossip_fast.__version__, "implementation:", gossip_fast.IMPLEMENTATION)'
