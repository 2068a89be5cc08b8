"""gossip_fast: Celery's worker Gossip bootstep with a compiled hot path.

Public API: :class:`Gossip` (the drop-in bootstep), :func:`install` (the
one-line opt-in), :func:`uninstall`, :class:`Consumer` (for
``worker_consumer = 'gossip_fast:Consumer'``) and :data:`IMPLEMENTATION`
(``"cython"`` or ``"python"``).
"""
from ._version import __version__
from .bootstep import Gossip
from .consumer import Consumer
from .implementation import IMPLEMENTATION
from .install import install, uninstall

__all__ = ('Gossip', 'Consumer', 'install', 'uninstall', 'IMPLEMENTATION',
           '__version__')
