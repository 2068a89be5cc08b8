#!/usr/bin/env bash
# Set up and run the whole test suite: the linter (ruff, [tool.ruff] in
# pyproject.toml), then two passes:
#  1. pytest tests: unit, differential, property and fuzz tests on both
#     implementations, real Redis/RabbitMQ broker tests, real-worker cluster
#     tests and the packaging check (in .venv, the newest Celery);
#  2. scripts/test-compat.sh: the unit suite again against the oldest
#     supported Celery/kombu (5.5), in .venv-compat.
# Extra arguments go to pytest in pass 1 (e.g. scripts/test.sh -m "not
# cluster", or -k election); pass 2 then does not run, since a filter meant
# for one pass would not select the same tests in the other: run it with
# `scripts/test-compat.sh <same arguments>`; nor does the linter (run it
# with `.venv/bin/ruff check .`).  GOSSIP_FAST_SKIP_COMPAT=1 skips
# pass 2 always.  The install is redone only when something changed
# (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-brokers.sh
if [ "$#" -eq 0 ]; then
    .venv/bin/ruff check .
fi
set +e
# no explicit "tests": pyproject's testpaths picks it when no path is given,
# so "scripts/test.sh tests/test_cli.py" runs that file only
.venv/bin/python -m pytest --durations=15 "$@"  # the slowest tests, to keep the suite short
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
if [ "${GOSSIP_FAST_SKIP_COMPAT:-0}" = "1" ]; then
    echo "test.sh: compat pass (oldest Celery) skipped: GOSSIP_FAST_SKIP_COMPAT=1"
elif [ "$#" -gt 0 ]; then
    printf -v args ' %q' "$@"
    echo "test.sh: compat pass (oldest Celery) skipped: pytest arguments were given;" \
         "run it with: scripts/test-compat.sh$args"
else
    bash scripts/test-compat.sh
fi
