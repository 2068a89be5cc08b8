"""Fast receive path: read gossip events straight from the broker, in batches.

Stock Gossip gets each event as a kombu ``Message`` through the worker's
event loop: one wake-up, one envelope parse and one Python frame parse per
event, which costs far more than handling the event.  A *reader* here keeps
the wire protocol (the same exchange, routing keys, queue and bodies) but
opens its own connection, from the consumer's connection settings, and
drains it on the worker's timer every ``max_delay`` seconds (0.1 by
default), handing raw parts to ``Receiver.on_raw``.

Selection (``reader_for``): ``app.conf.gossip_fast_receive`` or the
environment variable ``GOSSIP_FAST_RECEIVE``: ``"auto"`` (default: the fast
reader for Redis and RabbitMQ when its library is installed, else kombu) or
``"classic"`` (always kombu's consumer, as stock).  ``gossip_fast_max_delay``
/ ``GOSSIP_FAST_MAX_DELAY`` bounds the added delay in seconds.
"""
import os

from celery.utils.log import get_logger

__all__ = ('reader_for', 'receive_mode', 'max_delay', 'MODES')

logger = get_logger(__name__)

MODES = ('auto', 'classic')
DEFAULT_MAX_DELAY = 0.1


def _setting(app, name, env, default):
    value = os.environ.get(env)
    if value is None or value == '':
        value = app.conf.get(name)
    return default if value is None else value


def receive_mode(app):
    mode = str(_setting(app, 'gossip_fast_receive', 'GOSSIP_FAST_RECEIVE', 'auto')).lower()
    if mode not in MODES:
        raise ValueError(f'gossip_fast_receive must be one of {MODES}, not {mode!r}')
    return mode


def max_delay(app):
    value = float(_setting(app, 'gossip_fast_max_delay', 'GOSSIP_FAST_MAX_DELAY',
                           DEFAULT_MAX_DELAY))
    if not 0.0 < value <= 5.0:
        raise ValueError(f'gossip_fast_max_delay must be in (0, 5] seconds, not {value!r}')
    return value


def reader_for(gossip, channel, queue):
    """A started-able reader for *channel*'s transport, or None for kombu's
    classic consumer (classic mode, another transport, or a missing
    library)."""
    app = gossip.app
    if receive_mode(app) == 'classic':
        return None
    driver = channel.connection.client.transport.driver_type
    try:
        if driver == 'redis':
            from .redis import RedisReader as Reader
        elif driver == 'amqp':
            from .amqp import AMQPReader as Reader
        else:
            return None
    except ImportError as exc:
        logger.info('gossip_fast: no fast receive path for %s (%s)', driver, exc)
        return None
    return Reader(gossip, channel, queue, max_delay=max_delay(app))
