#!/usr/bin/env bash
# Set up and run the whole test suite: unit, differential, property and
# fuzz tests on both implementations, real Redis/RabbitMQ broker tests,
# real-worker cluster tests and the packaging check; then the unit suite
# again against the oldest supported Celery (scripts/test-compat.sh; skip it
# with GOSSIP_FAST_SKIP_COMPAT=1).
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
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
if [ "${GOSSIP_FAST_SKIP_COMPAT:-0}" != "1" ]; then
    bash scripts/test-compat.sh
fi
