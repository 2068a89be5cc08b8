"""Build the optional compiled core of gossip_fast.

The Cython source ``src/_core.pyx`` (with the files it includes and the
declarations in ``src/gossip_fast/_core.pxd``; see ``docs/internals.md``)
becomes the extension module ``gossip_fast._core``.  It is optional: when it
cannot be built (no compiler, PyPy) the package installs anyway and uses the
pure-Python fallback ``gossip_fast/_core_py.py``.  Set ``GOSSIP_FAST_REQUIRE_EXTENSIONS=1`` (as the
wheel builds do) to make a failed build an error instead, and
``GOSSIP_FAST_NO_EXTENSIONS=1`` to skip building it at all.
"""
import glob
import os
import platform

from setuptools import Extension, setup


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


REQUIRE = _flag("GOSSIP_FAST_REQUIRE_EXTENSIONS")
SKIP = _flag("GOSSIP_FAST_NO_EXTENSIONS") or platform.python_implementation() != "CPython"
#: Every file the compiled core is made of: the shell, the .pyx files it
#: includes, and the .pxd declarations.
SOURCES = sorted(glob.glob("src/**/*.pyx", recursive=True)
                 + glob.glob("src/**/*.pxd", recursive=True))
GENERATED = "src/_core.c"


def _stale(target, sources):
    """True if *target* is missing or older than one of *sources*."""
    if not os.path.exists(target):
        return True
    built = os.path.getmtime(target)
    return any(os.path.getmtime(source) > built for source in sources)


def extensions():
    if SKIP and not REQUIRE:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        print("gossip_fast: Cython is not available, installing the pure-Python fallback only")
        return []
    ext = Extension(
        "gossip_fast._core",
        ["src/_core.pyx"],
        depends=SOURCES,  # a change in any of them recompiles the module
        optional=not REQUIRE,
    )
    built = cythonize(
        [ext],
        # cythonize() follows the files src/_core.pyx includes, but not the
        # module's own declarations (Cython finds src/gossip_fast/_core.pxd
        # by the module's name, cythonize's dependency scan only beside the
        # .pyx): regenerate the C whenever any source is newer than it
        force=_stale(GENERATED, SOURCES),
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )
    for extension in built:  # cythonize() does not carry `optional` over
        extension.optional = not REQUIRE
    return built


setup(ext_modules=extensions())
