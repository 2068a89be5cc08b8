"""Fast receive path for the Redis transport.

The stock Gossip consumer gets each event through kombu: redis-py parses the
pub/sub reply, kombu decodes its JSON envelope and base64 body into a
``Message``, and the worker's event loop wakes up once per event.  This
reader subscribes to the same pub/sub topics on a connection of its own and
drains it in batches when the worker's event loop finds its socket readable
(:mod:`.loop`).  Why each choice below was made, with the measurements, is
in docs/receive-path.md.

* **Connection**: opened with kombu's own recipe: the channel's
  ``_get_pool()`` (so ``_connparams()``: host, port, db, username/password,
  credential provider, SSL, unix socket, socket options, client name, and
  Sentinel for the ``sentinel://`` transport).  redis-py connects and does the
  handshake (AUTH, SELECT, CLIENT SETNAME); then we own its socket: PSUBSCRIBE
  is sent raw and everything after it is read with non-blocking
  ``recv_into`` and parsed by our own ``hiredis.Reader`` (so no reply can be
  left behind in redis-py's buffer).  redis-py's connect retries are off (the
  base class reconnects with backoff) and, when the channel sets none, the
  connect/handshake timeout is :attr:`RedisReader.connect_timeout`: a
  reconnect runs on the worker's event loop and must not hang it.
* **Subscription**: exactly kombu's: ``self.queue`` is declared and bound on
  the consumer's channel as kombu's ``Consumer`` does (so the channel's fanout
  table knows it), but never ``basic_consume``-d (kombu would then subscribe
  and deliver the same events itself).  The patterns are the channel's
  ``_get_subscribe_topics(queue)`` (``/{db}.celeryev/worker.*``; both topics
  when Sentinel's ``sentinel_fanout_compat`` is on, de-duplicated by
  ``delivery_tag`` as kombu does), with ``global_keyprefix`` in front as
  kombu's prefixed pub/sub client adds it.
* **Envelope**: decoded by a ``msgspec`` Struct that validates the common
  shape and decodes the base64 body in the same C pass (the fastest of the
  decoders compared).  A dict decoder would need a scan for kombu's
  ``{"__type__", "__value__"}`` objects, which kombu's envelope JSON decoder
  turns into Python objects; the Struct needs none: the fields it keeps are
  typed ``str`` (headers ``dict[str, str]``), so a marker anywhere that
  matters fails validation.
  Anything that does not fit (not JSON, another ``body_encoding``, a missing
  field, odd types, non-canonical base64, non-UTF-8) goes the exact kombu way
  instead: kombu's JSON ``loads``, kombu's virtual ``Message`` built on the
  consumer's channel, then the Gossip's ``on_message``, as kombu's consumer
  would deliver it.  What kombu itself cannot turn into a message (it would
  warn and drop, or raise out of ``drain_events``) is counted
  (``bad_envelopes``, and ``dropped['bad_envelope']`` of the Gossip) and
  logged at most once per 10 s: never raised, never silently lost.
* **Compiled splitter**: with the compiled core, its ``PubSubScanner``
  (``src/pubsub.pyx``) replaces hiredis and the Struct for kombu's standard
  envelope (the one kombu always writes: same keys, same order, plain ASCII
  strings, canonical base64) and hands every other envelope to the path
  above, for the same result (tests/test_pubsub.py) in half the
  instructions.
* **Hot loop**: hiredis is fed at most :attr:`RedisReader.chunk` (16 KiB) at a
  time: hiredis compacts its buffer after every reply, so feeding it
  megabytes at once makes every reply several times dearer; the compiled
  scanner keeps a buffer of its own and takes :attr:`RedisReader.scanner_chunk`.
* **Held events** are ``Receiver.on_raw``'s arguments (the envelope's parts),
  or the envelope itself when kombu must decode it.
* **Backlog**: everything readable is read and parsed (up to
  :attr:`max_read_bytes` per drain; once half the budget is used, reading
  stops after :attr:`min_read_bytes`), so Redis does not disconnect us at
  ``client-output-buffer-limit pubsub``; events are applied in order until
  the deadline (at least :attr:`min_apply`); when some are left, older
  ``worker.heartbeat`` events of a sender that has a newer one pending are
  shed (then, above :attr:`max_pending`, the oldest heartbeats), counted in
  ``shed``; other events are never shed and the order per sender is kept.
  The next drain then comes after ``catchup_delay`` instead of
  ``max_delay`` (see ``base``).
* **Liveness**: with no byte from Redis for the channel's
  ``health_check_interval`` the reader sends a PING (pub/sub mode); with
  none for twice that, ``fill`` raises and the base class reconnects.

Needs ``hiredis`` and ``msgspec``: without them importing this module raises
ImportError and ``reader_for`` keeps kombu's consumer.
"""
import ssl
import time
from typing import Dict, Optional

import hiredis
import msgspec
from celery.utils.log import get_logger
from kombu.transport.virtual import base as virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads as kombu_loads
from redis.backoff import NoBackoff
from redis.retry import Retry

from .base import Reader

__all__ = ('RedisReader', 'envelope_parts')

logger = get_logger(__name__)

_PING = b'*1\r\n$4\r\nPING\r\n'
#: RESP3 pub/sub messages are pushes, RESP2's arrays: hiredis gives a list
#: subclass or a list.  We ask for RESP2 (see _open); both are understood.
_PUSH = getattr(hiredis, 'PushNotification', list)
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                ssl.SSLWantWriteError)


# gc=False: these hold only str, bytes, None, a dict of str and each other
# (no cycles possible); untracked, they cost the collector nothing, however
# big the backlog.
class _DeliveryInfo(msgspec.Struct, gc=False):
    routing_key: str
    exchange: Optional[str] = None


class _Properties(msgspec.Struct, gc=False):
    delivery_tag: str  # kombu's Message requires one
    delivery_info: _DeliveryInfo
    body_encoding: Optional[str] = None


class _Envelope(msgspec.Struct, gc=False):
    """kombu's Redis envelope, the common shape only (others go to kombu)."""
    body: bytes  # base64 in the JSON: decoded (strictly) by msgspec
    properties: _Properties
    content_type: Optional[str] = msgspec.field(default=None, name='content-type')
    content_encoding: Optional[str] = msgspec.field(default=None,
                                                    name='content-encoding')
    headers: Optional[Dict[str, str]] = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_MsgspecError = msgspec.MsgspecError


def envelope_parts(data):
    """``(parts, delivery_tag)`` of kombu's Redis envelope *data* (bytes):
    *parts* are ``Receiver.on_raw``'s arguments, or *data* itself (and no
    tag) when only kombu may decode it: not the common shape, or a body
    that is not base64."""
    try:
        envelope = _decode_envelope(data)
    except _MsgspecError:
        return data, None  # kombu decides, when applied
    properties = envelope.properties
    if properties.body_encoding != 'base64':
        return data, None
    info = properties.delivery_info
    return ((info.routing_key, envelope.headers, envelope.body,
             envelope.content_type, envelope.content_encoding, info.exchange),
            properties.delivery_tag)


def _command(*args):
    """A Redis command in RESP (arguments are str)."""
    out = [b'*%d\r\n' % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else bytes(arg)
        out.append(b'$%d\r\n%s\r\n' % (len(data), data))
    return b''.join(out)


class RedisReader(Reader):
    """Reads the gossip queue's pub/sub topics straight from Redis."""

    name = 'redis'
    #: recv/feed granularity (bytes) for hiredis; see the module docstring.
    chunk = 16384
    #: ... and for the compiled scanner, which keeps its own buffer: a
    #: drain under load takes one recv() instead of dozens.
    scanner_chunk = 262144
    #: Read at most this much per drain...
    max_read_bytes = 4 * 1024 * 1024
    #: ...and at least this much (when available) even when reading has used
    #: up its half of the budget, so a reader that is behind still makes
    #: progress through its socket.
    min_read_bytes = 256 * 1024
    #: Connect/handshake timeout when the channel sets none (seconds).
    connect_timeout = 2.0

    def __init__(self, gossip, channel, queue, max_delay=0.25):
        super().__init__(gossip, channel, queue, max_delay=max_delay)
        self.bad_envelopes = 0
        self.duplicates = 0
        self._conn = None
        self._pool = None
        self._sentinel_manager = None
        self._parser = None      # hiredis.Reader, or the core's PubSubScanner
        self._feed = None        # its feed(buffer, 0, size)
        self._buf = self._view = None  # recv buffer, sized for the parser
        self._declared = False
        self._topics = ()
        self._subscribed = 0
        self._dedup = None
        self._last_recv = 0.0
        self._pinged = False
        self.health_check_interval = float(
            getattr(channel, 'health_check_interval', 0) or 0)

    def housekeeping_interval(self):
        # the PING after health_check_interval of silence is sent by a drain
        if self.health_check_interval:
            return max(1.0, self.health_check_interval / 2)
        return super().housekeeping_interval()

    # -- connection -------------------------------------------------------------

    def connect(self):
        self.close()
        self._stopped = False
        command, topics = self._subscription()
        conn = self._open()
        try:
            sock = conn._sock
            timeout = conn.socket_timeout or self.connect_timeout
            sock.settimeout(timeout)
            self._new_parser()
            self._subscribed = 0
            if topics:
                sock.sendall(_command(command, *topics))
            deadline = time.monotonic() + timeout
            while self._subscribed < len(topics):
                if time.monotonic() > deadline:
                    raise TimeoutError(f'no {command} confirmation from Redis')
                count = sock.recv_into(self._buf)
                if not count:
                    raise ConnectionError('Redis closed the connection')
                self._feed(self._buf, 0, count)
                self._parse()
            sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        self._last_recv = time.monotonic()
        self._pinged = False
        self.sock = sock  # tells the watcher

    def _subscription(self):
        """What to subscribe to on connect: ``(command, topics)``; here
        the event queue's patterns, as kombu's Redis channel subscribes."""
        channel = self.channel
        if not self._declared:
            # as kombu's Consumer: bind a copy to the channel and declare it
            # (exchange, queue, binding: the channel's fanout table).
            self.queue(channel).declare()
            self._declared = True
        prefix = getattr(channel, 'global_keyprefix', '') or ''
        self._topics = tuple(prefix + topic for topic in
                             channel._get_subscribe_topics(self.queue.name))
        if getattr(channel, '_fanout_compat_active', False) and len(self._topics) > 1:
            if self._dedup is None:
                self._dedup = {}
        else:
            self._dedup = None
        return 'PSUBSCRIBE', self._topics

    def _new_parser(self):
        scanner = getattr(self.gossip.core, 'PubSubScanner', None)
        # the pure-Python core: hiredis and msgspec
        self._parser = hiredis.Reader() if scanner is None else scanner(self._envelope)
        self._feed = self._parser.feed
        size = self.chunk if scanner is None else self.scanner_chunk
        if self._buf is None or len(self._buf) != size:
            self._buf = bytearray(size)
            self._view = memoryview(self._buf)

    def _open(self):
        """A connected, authenticated redis-py connection made by kombu's
        recipe for this channel (``_get_pool``; Sentinel included)."""
        channel = self.channel
        saved = getattr(channel, '_sentinel_manager', None)
        try:
            pool = channel._get_pool()
        finally:
            # SentinelChannel._get_pool records the Sentinel it made on the
            # channel: that one is ours (closed in close()), not the channel's.
            manager = getattr(channel, '_sentinel_manager', None)
            if manager is not saved:
                self._sentinel_manager = manager
                channel._sentinel_manager = saved
        self._pool = pool
        kwargs = pool.connection_kwargs
        kwargs['retry'] = Retry(NoBackoff(), 0)  # the base class retries
        # RESP2 on this pub/sub-only connection: pmessages as plain arrays,
        # which every hiredis parses (hiredis < 3 has no RESP3 pushes), no
        # redis-py RESP3-only extras (maintenance pushes); kombu never sets it.
        kwargs['protocol'] = 2
        if kwargs.get('socket_connect_timeout') is None:
            kwargs['socket_connect_timeout'] = self.connect_timeout
        if kwargs.get('socket_timeout') is None:
            kwargs['socket_timeout'] = self.connect_timeout
        conn = pool.make_connection()
        self._conn = conn
        conn.connect()
        return conn

    def disconnect(self):
        conn, self._conn = self._conn, None
        pool, self._pool = self._pool, None
        manager, self._sentinel_manager = self._sentinel_manager, None
        self._parser = self._feed = None
        for step in (
                conn.disconnect if conn is not None else None,
                pool.disconnect if pool is not None else None,
                *((s.connection_pool.disconnect for s in manager.sentinels)
                  if manager is not None else ())):
            if step is not None:
                try:
                    step()
                except Exception:  # pylint: disable=broad-except
                    pass

    # -- reading ---------------------------------------------------------------------

    def fill(self, deadline):
        sock = self._sock
        if sock is None:
            if self._stopped:
                return
            raise ConnectionError('not connected')
        self._fill(sock, deadline)

    def _fill(self, sock, deadline):
        """Read and parse what the socket has: at most ``max_read_bytes``;
        past the first half of the budget, stop once ``min_read_bytes`` are
        read (the other half is for applying)."""
        buf, view, feed = self._buf, self._view, self._feed
        parse, recv_into = self._parse, sock.recv_into
        read_deadline = deadline - self.budget / 2
        minimum, maximum = self.min_read_bytes, self.max_read_bytes
        total = 0
        self.unread = True   # until the socket says it has nothing more
        while total < maximum:
            try:
                count = recv_into(buf)
            except _WOULD_BLOCK:
                self.unread = False
                break
            if not count:
                raise ConnectionError('Redis closed the connection')
            total += count
            feed(view, 0, count)
            parse()
            if total >= minimum and time.monotonic() >= read_deadline:
                break
        now = time.monotonic()
        if total:
            self.bytes_read += total
            self._last_recv = now
            self._pinged = False
        elif self.health_check_interval:
            silent = now - self._last_recv
            if silent > 2 * self.health_check_interval:
                raise ConnectionError(f'no reply from Redis in {silent:.0f} s')
            if silent > self.health_check_interval and not self._pinged:
                self._pinged = True
                try:
                    sock.send(_PING)
                except _WOULD_BLOCK:
                    pass

    def _parse(self):
        """Take every complete reply the parser has: events are held in
        :attr:`pending`, other replies are seen to."""
        parser = self._parser
        if type(parser) is not hiredis.Reader:  # the compiled scanner
            parser.dedup = self._dedup is not None  # then all go to _envelope
            for reply in parser.scan(self.pending):
                self._reply(reply)
            return
        gets = parser.gets
        append = self.pending.append
        envelope = self._envelope
        while True:
            reply = gets()
            if reply is False:
                return
            kind = reply.__class__
            if (kind is _PUSH or kind is list) and len(reply) == 4 and reply[0] == b'pmessage':
                item = envelope(reply[3])
                if item is not None:
                    append(item)
            else:
                self._reply(reply)

    def _envelope(self, data):
        """What to hold for the pub/sub message *data*: ``on_raw``'s
        arguments, or *data* itself for kombu to decode when applied, or
        None (nothing: empty, or a duplicate)."""
        if not data:  # kombu ignores these too
            self._bad('bad_envelope', 'empty pub/sub message')
            return None
        parts, tag = envelope_parts(data)
        if tag is not None and self._dedup is not None and self._duplicate(tag):
            return None
        return parts

    def _reply(self, reply):
        """A reply that is not a pub/sub message."""
        if isinstance(reply, Exception):
            raise reply  # an error reply: the connection is not usable
        if isinstance(reply, list) and reply and reply[0] == b'psubscribe':
            self._subscribed += 1
        # pong, other confirmations: nothing to do

    def _duplicate(self, tag):
        """kombu's de-duplication of fanout messages received on both the
        current and the legacy topic (Sentinel's sentinel_fanout_compat)."""
        seen = self._dedup
        if tag in seen:
            self.duplicates += 1
            return True
        seen[tag] = None
        if len(seen) > 1000:
            del seen[next(iter(seen))]
        return False

    # -- applying ----------------------------------------------------------------------

    def apply_other(self, data):
        """What kombu's Redis channel and Consumer do with the envelope
        *data* (bytes) that only kombu may decode."""
        try:
            payload = kombu_loads(bytes_to_str(data))
        except (TypeError, ValueError) as exc:
            return self._bad('bad_envelope', f'not JSON ({exc}): {data[:200]!r}')
        if self._dedup is not None:
            try:
                tag = payload['properties']['delivery_tag']
            except (KeyError, TypeError):
                pass
            else:
                try:
                    if self._duplicate(tag):
                        return None
                except TypeError:  # unhashable tag: kombu would raise here
                    return self._bad('bad_envelope', f'bad delivery_tag {tag!r}')
        try:
            message = virtual.Message(payload, channel=self.channel)
        except Exception as exc:  # pylint: disable=broad-except
            return self._bad('bad_envelope', f'{exc!r}: {data[:200]!r}')
        message.accept = self.receiver.accept
        try:
            return self.gossip.on_message(self.receiver.fast_prepare, message)
        except Exception as exc:  # pylint: disable=broad-except
            return self._bad('reader_error', exc)

    # -- bad input ---------------------------------------------------------------------

    def _bad(self, reason, detail):
        self.bad_envelopes += 1
        self.bad_input(reason, detail)

    def stats(self):
        stats = super().stats()
        stats.update(bad_envelopes=self.bad_envelopes, duplicates=self.duplicates)
        return stats

