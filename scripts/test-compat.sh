#!/usr/bin/env bash
# The unit suite (no brokers) against the oldest Celery/kombu we support,
# in its own virtualenv (.venv-compat).  Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
CELERY=${COMPAT_CELERY:-5.5.3}
KOMBU=${COMPAT_KOMBU:-5.5.4}
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-compat/bin/python ]; then
    "$PYTHON" -m venv .venv-compat
fi
.venv-compat/bin/python -m pip install --quiet --upgrade pip
GOSSIP_FAST_REQUIRE_EXTENSIONS=1 .venv-compat/bin/python -m pip install --quiet \
    "celery==$CELERY" "kombu==$KOMBU" -e '.[dev]'
.venv-compat/bin/python -c 'import celery, kombu, gossip_fast; print("compat: celery", celery.__version__, "kombu", kombu.__version__, "gossip_fast", gossip_fast.IMPLEMENTATION)'
GOSSIP_FAST_DIFF_STREAMS=${GOSSIP_FAST_DIFF_STREAMS:-100} \
    .venv-compat/bin/python -m pytest tests -m "not broker and not cluster and not slow" -q
