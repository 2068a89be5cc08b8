#!/usr/bin/env bash
# The unit suite (no brokers, no cluster, no slow tests) against the oldest
# Celery/kombu we support, in its own virtualenv (.venv-compat).  Run by
# scripts/test.sh when it is given no pytest arguments.  Arguments go to
# pytest after the suite's own marker filter (a -m of yours replaces it), e.g.
#   scripts/test-compat.sh -k election
# Like scripts/setup.sh, it reinstalls only when something changed.
set -euo pipefail
cd "$(dirname "$0")/.."
CELERY=${COMPAT_CELERY:-5.5.3}
KOMBU=${COMPAT_KOMBU:-5.5.4}
GOSSIP_FAST_VENV=.venv-compat GOSSIP_FAST_PINS="celery==$CELERY kombu==$KOMBU" \
    bash scripts/setup.sh
.venv-compat/bin/python -c 'import celery, kombu, gossip_fast; print("compat: celery", celery.__version__, "kombu", kombu.__version__, "gossip_fast", gossip_fast.IMPLEMENTATION)'
GOSSIP_FAST_DIFF_STREAMS=${GOSSIP_FAST_DIFF_STREAMS:-100} \
    .venv-compat/bin/python -m pytest -m "not broker and not cluster and not slow" -q "$@"
