"""Build the optional compiled core of gossip_fast.

The Cython source ``src/_core.pyx`` becomes the extension module
``gossip_fast._core``.  It is optional: when it cannot be built (no compiler,
PyPy) the package installs anyway and uses the pure-Python fallback
``gossip_fast/_core_py.py``.  Set ``GOSSIP_FAST_REQUIRE_EXTENSIONS=1`` (as the
wheel builds do) to make a failed build an error instead, and
``GOSSIP_FAST_NO_EXTENSIONS=1`` to skip building it at all.
"""
import os
import platform

from setuptools import Extension, setup


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


REQUIRE = _flag("GOSSIP_FAST_REQUIRE_EXTENSIONS")
SKIP = _flag("GOSSIP_FAST_NO_EXTENSIONS") or platform.python_implementation() != "CPython"


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
        optional=not REQUIRE,
    )
    built = cythonize(
        [ext],
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
