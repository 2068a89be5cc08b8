"""``gossip_fast.install(app)``: the one-line opt-in (and its undo)."""
from celery import current_app
from celery.utils.imports import symbol_by_name

from .bootstep import ensure_clock
from .consumer import Consumer, consumer_class

__all__ = ('install', 'uninstall')

DEFAULT_CONSUMER = 'celery.worker.consumer:Consumer'
OUR_CONSUMER = 'gossip_fast.consumer:Consumer'


def install(app=None):
    """Make the workers of *app* (default: the current app) use gossip_fast.

    Sets ``app.conf.worker_consumer`` to a Consumer whose Gossip step is
    ours (wrapping a custom consumer class if one is configured), and gives
    the app a hardened Lamport clock, keeping its value.  Call it where the
    app is defined, before the worker starts.  Returns the app.
    """
    app = app if app is not None else current_app._get_current_object()
    configured = app.conf.worker_consumer or DEFAULT_CONSUMER
    base = symbol_by_name(configured)
    if base is not Consumer and not getattr(app, '_gossip_fast_installed', False):
        app._gossip_fast_previous_consumer = app.conf.worker_consumer
        app.conf.worker_consumer = (
            OUR_CONSUMER if configured == DEFAULT_CONSUMER else consumer_class(base))
    app._gossip_fast_installed = True
    ensure_clock(app)
    from . import control  # noqa: F401  registers `inspect gossip_stats`
    return app


def uninstall(app=None):
    """Undo :func:`install`: the app's workers use stock Gossip again.

    The hardened clock stays (it behaves like kombu's for valid input).
    """
    app = app if app is not None else current_app._get_current_object()
    if getattr(app, '_gossip_fast_installed', False):
        previous = getattr(app, '_gossip_fast_previous_consumer', None)
        app.conf.worker_consumer = previous or DEFAULT_CONSUMER
        app._gossip_fast_installed = False
    return app
