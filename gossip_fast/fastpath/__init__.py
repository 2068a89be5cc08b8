"""Fast receive path: read gossip events straight from the broker, in batches.

Stock Gossip gets each event as a kombu ``Message`` through the worker's
event loop: one wake-up, one envelope parse and one Python frame parse per
event, which costs far more than handling the event.  A *reader* here keeps
the wire protocol (the same exchange, routing keys, queue and bodies) but
opens its own connection, from the consumer's connection settings, and
hands raw parts to ``Receiver.on_raw`` in batches (:mod:`.base`), when
:mod:`.pacing` says: from the worker's event loop (:mod:`.loop`: prefork,
solo, threads) or from a greenlet of its own (:mod:`.green`: gevent,
eventlet).

Selection (:func:`select`): ``app.conf.gossip_fast_receive`` or the
environment variable ``GOSSIP_FAST_RECEIVE``: ``"auto"`` (default: the fast
reader for Redis and RabbitMQ when its library is installed, else kombu)
or ``"classic"`` (always kombu's consumer, as stock).
``gossip_fast_max_delay`` / ``GOSSIP_FAST_MAX_DELAY`` bounds the delay it
adds, in seconds.
"""
import importlib
import os

from celery.utils.log import get_logger

from .green import GreenDriver, green_library
from .loop import HubDriver

__all__ = ('select', 'start', 'transport_of', 'receive_mode', 'max_delay', 'MODES',
           'DEFAULT_MAX_DELAY', 'READERS', 'close_channel')

logger = get_logger(__name__)

MODES = ('auto', 'classic')
#: A quarter of a second: an eighth of the heartbeat interval, and each
#: loop turn it saves under load costs more than a hundred heartbeats
#: (docs/receive-path.md).
DEFAULT_MAX_DELAY = 0.25
#: The fast reader (module, class) of each transport that has one.
READERS = {
    'redis': ('gossip_fast.fastpath.redis', 'RedisReader'),
    'amqp': ('gossip_fast.fastpath.amqp', 'AMQPReader'),
}


def _setting(app, name, env, default, kinds):
    """A setting from the environment, else the app's configuration.

    A configured value of the wrong type is an error on a real app; on
    anything else (a test's ``Mock()`` app, as in Celery's own tests) it
    is taken as unset."""
    value = os.environ.get(env)
    if value:
        return value
    value = app.conf.get(name)
    if value is None:
        return default
    if not isinstance(value, kinds):
        from celery import Celery
        if isinstance(app, Celery):
            raise TypeError(f'{name} must be {" or ".join(k.__name__ for k in kinds)}, '
                            f'not {value!r}')
        return default
    return value


def receive_mode(app):
    mode = str(_setting(app, 'gossip_fast_receive', 'GOSSIP_FAST_RECEIVE', 'auto',
                        (str,))).lower()
    if mode not in MODES:
        raise ValueError(f'gossip_fast_receive must be one of {MODES}, not {mode!r}')
    return mode


def max_delay(app):
    value = _setting(app, 'gossip_fast_max_delay', 'GOSSIP_FAST_MAX_DELAY',
                     DEFAULT_MAX_DELAY, (int, float, str))
    try:
        value = float(value)
    except ValueError:
        raise ValueError(f'gossip_fast_max_delay must be a number of seconds, '
                         f'not {value!r}') from None
    if not 0.0 < value <= 5.0:
        raise ValueError(f'gossip_fast_max_delay must be in (0, 5] seconds, not {value!r}')
    return value


def select(app, channel, hub):
    """``(reader class, None)`` for the fast path, or ``(None, why)`` for
    kombu's consumer: classic mode, a transport without a fast reader, a
    missing library, or a worker with neither an event loop (prefork, solo,
    threads) nor greenlets (gevent, eventlet) to drive it."""
    if receive_mode(app) == 'classic':
        if os.environ.get('GOSSIP_FAST_RECEIVE'):
            return None, 'classic mode: GOSSIP_FAST_RECEIVE=classic'
        return None, "classic mode: gossip_fast_receive = 'classic'"
    driver = transport_of(channel)
    if driver not in READERS:
        return None, f'no fast reader for the {driver!r} transport'
    try:
        Reader = getattr(importlib.import_module(READERS[driver][0]), READERS[driver][1])
    except ImportError as exc:  # e.g. redis-py missing: celery[redis] not installed
        return None, f'the {driver} fast reader cannot load: {exc}'
    if hub is None and green_library() is None:
        return None, 'no event loop in this worker and no green library: kombu wakes on data'
    return Reader, None


def transport_of(channel):
    """The kombu transport's ``driver_type`` of *channel* (None if unknown)."""
    client = getattr(channel.connection, 'client', None)
    return getattr(getattr(client, 'transport', None), 'driver_type', None)


def start(gossip, channel, queue, hub, check_channel=False):
    """The fast path on *channel*'s broker, started (a :class:`HubDriver`
    on the worker's event loop *hub*, or a :class:`GreenDriver` where there
    is none), or None for kombu's consumer (with the reason in
    ``gossip.receive_fallback``).

    With *check_channel* (the consumer starting), a reader that cannot
    connect first has *queue* declared on *channel*, as kombu's consumer
    would: if the broker is gone, that raises the connection error Celery
    restarts its consumer on, as stock's declare does, and the reader is
    tried again then, instead of a fallback to kombu being announced for a
    consumer about to restart."""
    app = gossip.app
    Reader, why = select(app, channel, hub)
    gossip.receive_fallback = why
    if Reader is None:
        return None
    reader = Reader(gossip, channel, queue, max_delay=max_delay(app))
    driver = HubDriver(reader, hub) if hub is not None else GreenDriver(reader, green_library())
    try:
        driver.start()
    except Exception as exc:  # pylint: disable=broad-except
        driver.stop()
        if check_channel:
            try:
                queue.bind(channel).declare()
            except Exception:
                # no consumer will hold the channel: Celery's step would not close it
                close_channel(channel)
                raise
        logger.warning('gossip_fast: fast receive path unavailable (%r); '
                       'using the kombu consumer', exc)
        gossip.receive_fallback = (f'the {Reader.name} fast reader failed to start: '
                                   f'{exc!r}')
        return None
    return driver


def close_channel(channel):
    """Close a kombu channel, even one whose broker is gone.

    kombu's Redis channel deletes its auto-delete fanout bindings before it
    disconnects its connection pools; with the broker gone that raises, and
    the pools' sockets stay open (stock Celery leaks two per broker
    restart this way).  Whatever ``close()`` did not get to, its own
    cleanup steps finish (they are no-ops once done, and absent on other
    transports)."""
    try:
        channel.close()
    except Exception:  # pylint: disable=broad-except
        pass
    for cleanup in ('_disconnect_pools', '_close_clients'):
        step = getattr(channel, cleanup, None)
        if step is not None:
            try:
                step()
            except Exception:  # pylint: disable=broad-except
                pass
