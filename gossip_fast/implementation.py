"""The one place that chooses the hot path: compiled Cython or pure Python.

``GOSSIP_FAST_NO_EXTENSIONS=1`` forces the pure-Python fallback; so does a
missing or unloadable extension (no compiler at install time, PyPy).
:data:`IMPLEMENTATION` says which one is active.
"""
import importlib
import os
import platform

__all__ = ('core', 'IMPLEMENTATION', 'NO_EXTENSIONS', 'EXTENSION_ERROR')

NO_EXTENSIONS = (
    os.environ.get('GOSSIP_FAST_NO_EXTENSIONS', '').strip().lower()
    not in ('', '0', 'false', 'no')
    or platform.python_implementation() != 'CPython'
)
#: Why the compiled core could not be used (None if it is used or was
#: not wanted).
EXTENSION_ERROR = None

if NO_EXTENSIONS:
    from . import _core_py as core
else:
    try:
        core = importlib.import_module('gossip_fast._core')
    except ImportError as exc:  # not built: no compiler, or a source install
        EXTENSION_ERROR = exc
        from . import _core_py as core

#: ``"cython"`` or ``"python"``.
IMPLEMENTATION = 'python' if core.__name__.endswith('_py') else 'cython'
