"""The digest readers: a worker's few exact subscriptions, woken by data.

Every digest-mode worker reads, on a connection of its own, only what its
role needs (docs/digest-mode.md, 4.2-4.3): members the two election keys of
``celeryev`` and the ``digest`` and ``snapshot.<own>`` keys of the digest
exchange (successors the ``pulse`` key too), the relay the ``digest``,
``pulse``, ``announce`` and ``snapshot.<own>`` keys (its heartbeats come
through the normal fast reader, :mod:`gossip_fast.fastpath`).  The readers
are the fast path's transport readers with other subscriptions, driven the
same way (:class:`gossip_fast.fastpath.loop.HubDriver`: the worker's event
loop wakes them when their socket has data, never a polling timer):

* :class:`DigestRedisReader`: SUBSCRIBEs exact channels (replies are
  ``message``, not ``pmessage``; parsed by hiredis: members receive a
  message every few seconds, the compiled splitter is for the full stream).
* :class:`DigestAMQPReader`: one auto-delete queue with exact bindings,
  consumed ``no_ack``.

A role change changes the subscriptions on the live connection (Redis
SUBSCRIBE / UNSUBSCRIBE; RabbitMQ ``queue.bind`` with no-wait and
``queue.unbind``), and a reconnect subscribes to what the role needs then.
Messages of the digest exchange go to the digest mode, the rest (elections)
to the step's receiver (:class:`Dispatch`).
"""
import time
import uuid
from struct import pack

import hiredis
from amqp.serialization import dumps as amqp_dumps
from kombu import Queue, binding
from kombu.transport.virtual import base as virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads as kombu_loads

from .. import _common
from ..fastpath.amqp import FRAME_END, FRAME_METHOD, AMQPReader
from ..fastpath.redis import _PUSH, RedisReader, _command

__all__ = ('Dispatch', 'DigestRedisReader', 'DigestAMQPReader', 'digest_queue')

#: queue.bind-ok and queue.unbind-ok (class 50), as one 32-bit word
_BIND_OK = (50 << 16) | 21
_UNBIND_OK = (50 << 16) | 51


class Dispatch:
    """A reader's receiver: digest-exchange messages to *on_digest*
    (``(routing_key, headers, body, content_type)``), the rest to the
    step's receiver (elections, as from the normal path)."""

    def __init__(self, receiver, exchange, on_digest):
        self.receiver = receiver
        self.exchange = exchange
        self.on_digest = on_digest

    def on_raw(self, routing_key, headers, body, content_type='application/json',
               content_encoding='utf-8', exchange='celeryev'):
        if exchange == self.exchange:
            return self.on_digest(routing_key, headers, body, content_type)
        return self.receiver.on_raw(routing_key, headers, body, content_type,
                                    content_encoding, exchange)

    def apply_held(self, items, deadline, minimum, other, error):
        return _common.apply_held(self.on_raw, items, deadline, minimum, other, error)

    @property
    def accept(self):
        return self.receiver.accept

    @property
    def fast_prepare(self):
        return self.receiver.fast_prepare


class DigestRedisReader(RedisReader):
    """SUBSCRIBEs the exact pub/sub channels :attr:`channels`."""

    name = 'redis_digest'

    def __init__(self, gossip, channel, channels, dispatch, max_delay=0.25):
        super().__init__(gossip, channel, None, max_delay=max_delay)
        self.channels = tuple(channels)
        self.receiver = dispatch
        self.digest_exchange = dispatch.exchange

    def _subscription(self):
        self._dedup = None
        return 'SUBSCRIBE', self.channels

    def _new_parser(self):
        self._parser = hiredis.Reader()
        self._feed = self._parser.feed
        if self._buf is None or len(self._buf) != self.chunk:
            self._buf = bytearray(self.chunk)
            self._view = memoryview(self._buf)

    def _parse(self):
        gets = self._parser.gets
        append = self.pending.append
        while True:
            reply = gets()
            if reply is False:
                return
            kind = reply.__class__
            if ((kind is _PUSH or kind is list) and len(reply) == 3
                    and reply[0] == b'message'):
                item = self._envelope(reply[2])
                if item is not None:
                    append(item)
            else:
                self._reply(reply)

    def _reply(self, reply):
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, list) and reply and reply[0] == b'subscribe':
            self._subscribed += 1

    def resubscribe(self, channels):
        """Subscribe to *channels* instead (on the live connection)."""
        channels = tuple(channels)
        old, new = set(self.channels), set(channels)
        self.channels = channels
        sock = self._sock
        if sock is None or old == new:
            return  # the next connect() subscribes to them
        commands = []
        add = [c for c in channels if c not in old]
        drop = [c for c in old if c not in new]
        if add:
            commands.append(_command('SUBSCRIBE', *add))
        if drop:
            commands.append(_command('UNSUBSCRIBE', *drop))
        try:
            sock.sendall(b''.join(commands))
        except OSError as exc:
            self._failed(exc, time.monotonic())

    def apply_other(self, data):
        """An envelope only kombu may decode: digest-exchange messages to
        the dispatch, the rest as the normal reader does."""
        try:
            payload = kombu_loads(bytes_to_str(data))
            exchange = payload['properties']['delivery_info']['exchange']
        except Exception:  # pylint: disable=broad-except
            return super().apply_other(data)
        if exchange != self.digest_exchange:
            return super().apply_other(data)
        try:
            message = virtual.Message(payload, channel=self.channel)
            return self.receiver.on_raw(
                message.delivery_info.get('routing_key'), message.headers or {},
                message.body, message.content_type, message.content_encoding, exchange)
        except Exception as exc:  # pylint: disable=broad-except
            return self._bad('bad_envelope', f'{exc!r}: {data[:200]!r}')


def digest_queue(app, connection, bindings, ttl, name=None):
    """The kombu ``Queue`` of a digest reader on RabbitMQ: auto-delete, no
    main binding, *bindings* ``[(exchange name, routing_key), ...]``, the
    event exchange declared as Celery declares it (``get_exchange`` on the
    kombu *connection*), the digest exchange as
    :meth:`~gossip_fast.digest.names.DigestNames.kombu_exchange` does."""
    from celery.events.event import get_exchange

    from .names import DigestNames

    event_exchange = app.conf.event_exchange
    transport = connection.transport.driver_type
    exchanges = {event_exchange: get_exchange(connection, name=event_exchange)}
    digest = DigestNames(event_exchange).kombu_exchange(transport)
    exchanges[digest.name] = digest
    prefix = app.conf.event_queue_prefix or 'celeryev'
    return Queue(
        name or f'{prefix}.digest.{uuid.uuid4()}',
        bindings=[binding(exchanges[ex], routing_key=key) for ex, key in bindings],
        auto_delete=True, durable=False,
        message_ttl=ttl, expires=app.conf.event_queue_expires)


def _method_frame(channel_id, class_id, method_id, argsig, args):
    payload = pack('>HH', class_id, method_id) + amqp_dumps(argsig, args)
    return pack('>BHI', FRAME_METHOD, channel_id, len(payload)) + payload + bytes((FRAME_END,))


def _pairs(queue):
    return [(b.exchange.name, b.routing_key) for b in queue.bindings]


class DigestAMQPReader(AMQPReader):
    """Consumes the digest queue (:func:`digest_queue`)."""

    name = 'amqp_digest'

    def __init__(self, gossip, channel, queue, dispatch, max_delay=0.25):
        super().__init__(gossip, channel, queue, max_delay=max_delay)
        self.receiver = dispatch
        self.rebinds = 0

    def rebind(self, queue):
        """Bind the queue as *queue* says (same name) on the live
        connection: ``queue.bind`` with no-wait for new keys,
        ``queue.unbind`` for the others (their ``-ok`` is skipped)."""
        old, new = _pairs(self.queue), _pairs(queue)
        self.queue = queue
        send = self._send
        if send is None or old == new:
            return  # the next connect() declares the new bindings
        channel_id, name = self._channel_id, self.queue_name
        frames = [_method_frame(channel_id, 50, 20, 'BsssbF', (0, name, ex, key, True, {}))
                  for ex, key in new if (ex, key) not in old]
        frames += [_method_frame(channel_id, 50, 50, 'BsssF', (0, name, ex, key, {}))
                   for ex, key in old if (ex, key) not in new]
        try:
            self._sock.sendall(b''.join(frames))
            self.rebinds += 1
        except OSError as exc:
            self._broken = True
            self._failed(exc, time.monotonic())

    def _other_frame(self, buf, pos, ftype, channel, size, method):
        if (ftype == FRAME_METHOD and channel == self._channel_id
                and method in (_BIND_OK, _UNBIND_OK)):
            return pos + 8 + size
        return super()._other_frame(buf, pos, ftype, channel, size, method)
