"""What a gossip_fast worker tells its operator: the start line and
``gossip_stats``.

The bootstep only calls in here (:func:`announce` once its consumer has
connected, :func:`stats` for the remote-control command), so that what is
reported, and why, lives in one place.

The start line (INFO, logger of the Gossip step's module)::

    gossip_fast 0.1.0: core cython, receive redis (batched, max delay 0.25 s)
    gossip_fast 0.1.0: core python (GOSSIP_FAST_NO_EXTENSIONS is set), receive
        kombu (classic mode: GOSSIP_FAST_RECEIVE=classic; no batching delay)

It is logged from ``Gossip.get_consumers``, because the receive path is
chosen only when the consumer connects, and once per Gossip step (one per
worker process): a consumer restart after a broker reconnect logs again only
if the receive path changed.  A disabled step (``--without-gossip``, or a
transport gossip does not support) is never started, so it logs nothing.
"""
import os
import platform
import weakref

from . import implementation
from ._version import __version__

__all__ = ('announce', 'start_line', 'core_info', 'receive_info',
           'disabled_reason', 'stats')

#: Gossip step -> (path, reason) last announced.  Weak: a step (and so a
#: worker) that is gone is forgotten; one entry per worker process in practice.
_announced = weakref.WeakKeyDictionary()


def core_info(gossip):
    """``(name, why)`` of the hot path *gossip* runs: ``('cython', None)``,
    or ``('python', <why the compiled core is not used>)``."""
    core = getattr(gossip, 'core', implementation.core)
    if not core.__name__.endswith('_py'):
        return 'cython', None
    if core is not implementation.core:
        return 'python', 'chosen by the step class (Gossip.core)'
    if implementation.EXTENSION_ERROR is not None:
        why = f'compiled core unavailable: {implementation.EXTENSION_ERROR}'
        checkout = _unbuilt_checkout()
        if checkout:  # `pip install .` then a worker started in the clone
            why += (f'; gossip_fast was imported from the source checkout {checkout}, '
                    'where it is not built: start the worker from another folder, '
                    'or install with pip install -e .')
        return 'python', why
    if platform.python_implementation() != 'CPython':
        return 'python', (f'{platform.python_implementation()}: the compiled core '
                          'is for CPython only')
    return 'python', 'GOSSIP_FAST_NO_EXTENSIONS is set'


def _unbuilt_checkout():
    """The source checkout gossip_fast was imported from, if it is one (its
    Cython source is next to it): the current folder comes first on
    ``sys.path``, so it hides a compiled install in site-packages."""
    package = os.path.dirname(os.path.abspath(implementation.__file__))
    root = os.path.dirname(package)
    if os.path.exists(os.path.join(root, 'src', '_core.pyx')):
        return root
    return None


def receive_info(gossip):
    """``(path, why)``: ``('redis' / 'amqp', None)`` for the fast reader, or
    ``('kombu', <why not the fast reader>)`` as the fast path recorded it
    when the consumer connected (:func:`gossip_fast.fastpath.start`)."""
    digest = getattr(gossip, '_digest', None)
    if digest is not None and digest.active and digest.transport:
        return digest.describe(), None
    reader = getattr(gossip, '_reader', None)
    if reader is not None:
        return reader.name, None
    return 'kombu', getattr(gossip, 'receive_fallback', None)


def _describe_receive(gossip, path, why):
    if why is None:
        reader = getattr(gossip, '_reader', None)
        delay = getattr(reader, 'max_delay', None)
        if not delay:
            return path
        where = getattr(getattr(gossip, '_driver', None), 'where', None)
        return f'{path} (batched, max delay {delay:g} s{f", {where}" if where else ""})'
    return f'{path} ({why}; no batching delay)'


def start_line(gossip, path, why):
    """The start line for a step whose receive path is *path* (:func:`receive_info`)."""
    core, core_why = core_info(gossip)
    core = f'{core} ({core_why})' if core_why else core
    return (f'gossip_fast {__version__}: core {core}, '
            f'receive {_describe_receive(gossip, path, why)}')


def announce(gossip, log):
    """Log the start line with *log* (the step module's ``info``), once per
    step; after a consumer restart, a line only if the receive path changed."""
    path, why = receive_info(gossip)
    previous = _announced.get(gossip)
    _announced[gossip] = (path, why)
    if previous is None:
        log('%s', start_line(gossip, path, why))
    elif previous[0] != path:
        log('gossip_fast: receive path changed after a consumer restart: '
            'now %s (was %s)', _describe_receive(gossip, path, why), previous[0])


def disabled_reason(gossip):
    """Why a disabled step is disabled (None if it is enabled)."""
    if gossip.enabled:
        return None
    try:
        compatible = gossip.compatible_transport(gossip.app)
    except Exception as exc:  # pylint: disable=broad-except
        return f'transport unknown ({exc!r})'
    if compatible:
        return '--without-gossip'
    with gossip.app.connection_for_read() as conn:
        driver = conn.transport.driver_type
    return (f"transport {driver!r}: gossip needs one of "
            f"{', '.join(sorted(gossip.compatible_transports))}")


def stats(gossip):
    """``Gossip.stats()``: the counters behind ``gossip_stats``.

    A disabled step receives nothing, so it reports only what it is and why
    it is off: no receive path, no membership counters.
    """
    result = {
        'version': __version__,
        'implementation': core_info(gossip)[0],
        'enabled': gossip.enabled,
        'clock': gossip.clock.value,
    }
    if not gossip.enabled:
        result['why'] = disabled_reason(gossip)
        return result
    state = gossip.state
    driver = gossip._driver  # the fast path: its reader, and what wakes it
    digest = getattr(gossip, '_digest', None)
    if digest is not None and digest.active:
        receive = digest.receive_stats()
    elif driver is not None:
        receive = dict(driver.reader.stats(), **driver.stats())
    else:
        path, why = receive_info(gossip)
        receive = {'path': path, 'why': why} if why else {'path': path}
    result.update({
        'events': gossip._receiver.stats(),
        'receive': receive,
        'dropped': dict(gossip.dropped),
        'sanitized': dict(gossip.sanitized),
        'joins': getattr(state, 'joins', None),
        'leaves': getattr(state, 'leaves', None),
        'losses': getattr(state, 'losses', None),
        'elections': dict(gossip.elections),
        'sweeps_held_back': gossip.sweeps_held_back,
        'tracked_workers': len(state.workers),
        'alive_workers': (state.alive_count() if hasattr(state, 'alive_count')
                          else None),
    })
    if digest is not None and digest.active:
        result['digest'] = digest.stats()
    elif getattr(gossip, 'digest_off', None):
        result['digest'] = {'active': False, 'why': gossip.digest_off}
    return result
