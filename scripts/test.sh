#!/usr/bin/env bash
# Set up and run the whole test suite: unit, differential, property and
# fuzz tests on both implementations, real Redis/RabbitMQ broker tests,
# real-worker cluster tests and the packaging check.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not cluster").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-brokers.sh
set +e
.venv/bin/python -m pytest tests "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$status"
