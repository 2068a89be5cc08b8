#!/usr/bin/env bash
# Create .venv (if needed) and install gossip_fast into it, compiled core
# included, with the dev extra (the test suite and the build tools).  Safe to
# run again, and quick then: pip (and the ~40 s compile) runs only when the
# install is out of date.
#
# Up to date means: the stamp recorded by the last successful install
# ($VENV/.gossip-fast-setup) matches a hash of what the install depends on
# (pyproject.toml, setup.py, src/*, gossip_fast/_version.py, this script, the
# venv's Python, the extras and pins below), and gossip_fast imports from
# this folder with its compiled core.  A change in src/ therefore rebuilds;
# a change in gossip_fast/*.py needs nothing (the install is editable).
#
# Environment:
#   PYTHON                     interpreter that creates the venv (python3)
#   GOSSIP_FAST_VENV           the venv folder (.venv)
#   GOSSIP_FAST_PINS           extra requirements, e.g. "celery==5.5.3 kombu==5.5.4"
#                              (scripts/test-compat.sh)
#   GOSSIP_FAST_SETUP_FORCE=1  install even when up to date
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${GOSSIP_FAST_VENV:-.venv}
PINS=${GOSSIP_FAST_PINS:-}
EXTRAS='.[dev]'
STAMP_FILE="$VENV/.gossip-fast-setup"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi

stamp() {
    {
        "$VENV/bin/python" -c 'import sys; print(sys.version); print(sys.prefix)'
        echo "extras: $EXTRAS pins: $PINS"
        # sorted, NUL-separated: file names with spaces are fine, and a file
        # added to or removed from src/ changes the list; not the C that the
        # build itself writes there
        find pyproject.toml setup.py gossip_fast/_version.py scripts/setup.sh src \
            -type f ! -name '*.c' ! -name '*.so' -print0 | LC_ALL=C sort -z \
            | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
}

# The compiled core imports, from this folder (not another checkout's
# editable install).  Run from / so that the current folder is not on
# sys.path; without GOSSIP_FAST_NO_EXTENSIONS, which would hide the core.
ROOT=$(pwd)
VENV_PYTHON="$(cd "$VENV" && pwd)/bin/python"
installed_here() {
    (cd / && env -u GOSSIP_FAST_NO_EXTENSIONS "$VENV_PYTHON" -c '
import os, sys
import gossip_fast, gossip_fast._core
here = os.path.realpath(sys.argv[1])
assert gossip_fast.IMPLEMENTATION == "cython", gossip_fast.IMPLEMENTATION
for module in (gossip_fast, gossip_fast._core):
    assert os.path.realpath(module.__file__).startswith(here + os.sep), module.__file__
' "$ROOT") >/dev/null 2>&1
}

want=$(stamp)
if [ "${GOSSIP_FAST_SETUP_FORCE:-0}" != "1" ] && [ -f "$STAMP_FILE" ] \
        && [ "$(cat "$STAMP_FILE")" = "$want" ] && installed_here; then
    echo "gossip_fast: $VENV is up to date (nothing changed since the last install; GOSSIP_FAST_SETUP_FORCE=1 reinstalls)"
    exit 0
fi

rm -f "$STAMP_FILE"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# GOSSIP_FAST_REQUIRE_EXTENSIONS=1: a broken build fails here instead of
# silently installing the pure-Python fallback
# shellcheck disable=SC2086  # PINS is a list of requirement specifiers
GOSSIP_FAST_REQUIRE_EXTENSIONS=1 "$VENV/bin/python" -m pip install --quiet $PINS -e "$EXTRAS"
if ! installed_here; then
    echo "gossip_fast: installed, but the compiled core does not import from $ROOT" >&2
    exit 1
fi
echo "$want" > "$STAMP_FILE"
"$VENV/bin/python" -c 'import gossip_fast; print("gossip_fast", gossip_fast.__version__, "implementation:", gossip_fast.IMPLEMENTATION)'
