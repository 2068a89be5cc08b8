"""Fast receive path for RabbitMQ (AMQP 0-9-1 through py-amqp).

The connection is opened the way kombu opens the consumer's own (a clone of
its kombu ``Connection``: same hosts, credentials, vhost, SSL, timeouts,
login method, heartbeat and transport options), the gossip queue is declared
exactly as kombu's consumer declares it (the stock Receiver's ``Queue``,
bound to our channel: no argument added) and consumed with ``no_ack``, as
stock does.  Then py-amqp steps aside: the socket is switched to
non-blocking mode (with whatever py-amqp had buffered) and every ``drain()``
reads what has arrived and parses the frames itself -- ``basic.deliver``,
the content header and the body frames of each delivery -- instead of
building a py-amqp ``Message`` and a kombu ``Message`` per event.

Per delivery the parse is a few ``struct.unpack_from`` calls and slices
(:meth:`AMQPReader._split`); with the compiled core, its ``DeliveryScanner``
(``src/amqpframes.pyx``) does the same for every plain delivery in C and
leaves the rest (any other frame, an incomplete or malformed delivery, a
body of several frames or to decode) to ``_split``, one frame or delivery at
a time, so errors, logs and results are the same (tests/test_amqpframes.py).
The exchange/routing key pair and the content properties are the same bytes
for every heartbeat of one sender, so they are decoded once (py-amqp's own
``decode_properties_basic``) and looked up by their raw bytes after that;
the headers dict is therefore shared by the deliveries of one sender
(``on_raw`` only reads it).  Each event goes to ``Receiver.on_raw``, in
arrival order.  A body with a content encoding other than UTF-8 is first
decoded with it, as py-amqp's channel does before kombu sees the message
(``auto_decode``), so that both receive paths apply the same events.

Anything but deliveries on our channel and ``connection.blocked`` /
``unblocked`` (``channel.close``, ``connection.close``, ``basic.cancel``,
any other frame) and any framing error raises out of
:meth:`AMQPReader.read`; the base class then closes the connection and
reconnects with backoff.  AMQP heartbeats are kept if the consumer
connection asks for them (a worker's does: ``broker_heartbeat``): sent from
``drain()``, and two silent intervals count as a lost connection.
``stop()`` closes with a ``connection.close`` handshake (at most
``close_timeout``), so RabbitMQ logs a normal close and drops the queue.

Overload: each ``drain()`` reads at most :attr:`AMQPReader.max_read` bytes
(all there is, normally) and applies events until its deadline (``budget``).
What it read but could not apply is kept for the next call, which then
comes after ``catchup_delay`` instead of ``max_delay``; of the heartbeats
kept, those that a newer heartbeat of the same sender supersedes are shed
(then, above ``max_pending``, the oldest) and counted in ``shed``; other
events are always kept, in order.  A drain over budget may overrun it by
the time to split ``max_read`` bytes into deliveries.
What it did not read waits in the kernel, then in RabbitMQ: TCP
backpressure stops the deliveries and the queue's message TTL (the
heartbeat interval, as stock) expires them there, so the broker's memory
stays bounded too; a socket that stays full for RabbitMQ's send timeout
makes it close the connection, and we reconnect.
"""
import errno
import ssl
import time
from struct import Struct, pack, unpack_from

from amqp.serialization import decode_properties_basic
from celery.utils.log import get_logger

from .base import Reader

__all__ = ('AMQPReader', 'AMQPFrameError', 'AMQPClosed')

logger = get_logger(__name__)

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
#: class 60 (basic), method 60 (deliver), as one big-endian 32-bit word.
BASIC_DELIVER = (60 << 16) | 60
#: Methods that may arrive on channel 0 and need nothing from us.
IGNORED_ON_CHANNEL_0 = frozenset((
    (10 << 16) | 60,   # connection.blocked (a memory/disk alarm)
    (10 << 16) | 61,   # connection.unblocked
))
#: The broker closing the connection or the channel, or cancelling us.
CLOSING = frozenset(((10 << 16) | 50, (20 << 16) | 40, (60 << 16) | 30))
METHOD_NAMES = {
    (10 << 16) | 50: 'connection.close',
    (20 << 16) | 40: 'channel.close',
    (20 << 16) | 20: 'channel.flow',
    (60 << 16) | 30: 'basic.cancel',
    (60 << 16) | 50: 'basic.return',
    (60 << 16) | 60: 'basic.deliver',
}
CONNECTION_CLOSE_OK = (10 << 16) | 51
HEARTBEAT = bytes((FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END))

_frame_head = Struct('>BHI')          # type, channel, payload size
_method_head = Struct('>BHII')        # + class and method id
_content_head = Struct('>BHIHHQ')     # + class, weight, body size

#: socket errors that only mean "nothing to read now".
_WOULD_BLOCK = (BlockingIOError, InterruptedError,
                ssl.SSLWantReadError, ssl.SSLWantWriteError)


class AMQPFrameError(ConnectionError):
    """The byte stream is not what a consumer of one queue may receive."""


class AMQPClosed(ConnectionError):
    """The broker closed the connection or channel, or cancelled us."""


def _shortstr(buf, offset):
    size = buf[offset]
    offset += 1
    return buf[offset:offset + size].decode('utf-8', 'surrogatepass'), offset + size


def _describe_method(method, payload):
    """A readable reason for an unexpected method frame."""
    name = METHOD_NAMES.get(method, f'method {method >> 16}.{method & 0xFFFF}')
    try:
        if name in ('connection.close', 'channel.close'):
            code, = unpack_from('>H', payload, 4)
            text, _ = _shortstr(payload, 6)
            return f'{name} {code} {text}'
        if name == 'basic.cancel':
            return f'{name} {_shortstr(payload, 4)[0]}'
    except Exception:  # pylint: disable=broad-except
        pass
    return name


#: Content encodings whose bodies reach on_raw as bytes: the receiver
#: decodes them itself, exactly as kombu decodes the str py-amqp makes.
_UTF8 = frozenset(('utf-8', 'utf8'))


def _auto_decode(body, encoding):
    """The body as py-amqp's channel hands it to kombu (``auto_decode``):
    decoded with its content encoding if that works, else the bytes."""
    try:
        return body.decode(encoding)
    except Exception:  # pylint: disable=broad-except
        return body


def _close_frame(text=b'gossip_fast reader closing'):
    payload = pack('>HHHB', 10, 50, 200, len(text)) + text + pack('>HH', 0, 0)
    return _frame_head.pack(FRAME_METHOD, 0, len(payload)) + payload + bytes((FRAME_END,))


CLOSE_FRAME = _close_frame()


class AMQPReader(Reader):
    """Reads ``basic.deliver`` frames of the gossip queue straight off the
    socket of its own py-amqp connection."""

    name = 'amqp'
    #: Most bytes read from the socket by one drain() (about 2,300
    #: heartbeats).  More waits in the kernel and then in RabbitMQ.
    max_read = 1 << 20
    #: Longest wait for the broker's close-ok when stopping (seconds).
    close_timeout = 1.0
    #: Bytes asked for by one recv().
    recv_size = 1 << 18
    #: Decoded properties / routing keys remembered (by their raw bytes).
    cache_size = 16384
    #: Property templates kept (``_templated``): senders' kinds of properties.
    templates = 4

    def __init__(self, gossip, channel, queue, max_delay=0.25):
        super().__init__(gossip, channel, queue, max_delay=max_delay)
        self.conn = None            # our kombu Connection
        self.amqp_channel = None    # its py-amqp channel
        self.consumer_tag = None
        self.queue_name = None
        self.heartbeat = 0
        self._recv = None
        self._send = None
        self._buf = b''
        self._channel_id = None
        self._frame_max = 131072
        self._keys = {}             # raw exchange+routing key -> (rk, exchange)
        self._props = {}            # raw properties -> (headers, type, encoding)
        self._templates = []        # see _templated(), newest first
        # the compiled core's splitter of plain deliveries (see _parse)
        self._scanner_class = getattr(getattr(gossip, 'core', None), 'DeliveryScanner', None)
        self._scanner = None
        self._last_recv = 0.0
        self._last_sent = 0.0
        self._broken = False        # fill() failed: no close handshake

    # -- connection ------------------------------------------------------------

    def connect(self):
        self.close()
        conn = self.connection.clone()
        self.conn = conn
        try:
            conn.connect()
            channel = conn.channel()
            queue = self.queue.bind(channel)
            queue.declare()
            early = []   # deliveries py-amqp read before we took over (none)
            tag = channel.basic_consume(
                queue=queue.name, no_ack=True, callback=early.append,
                arguments=queue.consumer_arguments)
            amqp_connection = conn.connection
            transport = amqp_connection.transport
            sock = transport.sock
            # What py-amqp has buffered but not parsed belongs to the stream.
            buffered = getattr(transport, '_read_buffer', b'') or b''
            transport._read_buffer = b''
            sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        self.amqp_channel = channel
        self.consumer_tag = tag
        self.queue_name = queue.name
        self._attach(sock, channel.channel_id, amqp_connection.heartbeat or 0,
                     amqp_connection.frame_max, buffered,
                     [self._parts(message) for message in early])

    def _attach(self, sock, channel_id, heartbeat=0, frame_max=131072, buffered=b'',
                pending=()):
        """Read deliveries of channel *channel_id* from the non-blocking
        *sock* from now on (*buffered*: bytes already read from it)."""
        self._channel_id = channel_id
        if self._scanner_class is not None:
            self._scanner = self._scanner_class(channel_id, self._keys, self._props,
                                                self._decode_key, self._props_of)
        self.heartbeat = heartbeat
        self._frame_max = frame_max
        self._recv = sock.recv
        self._send = sock.send
        self._buf = bytes(buffered)
        self.pending.extend(pending)  # after those held from before a reconnect
        self._broken = False
        self._last_recv = self._last_sent = time.monotonic()
        self.sock = sock  # tells the watcher

    @staticmethod
    def _parts(message):
        """on_raw's arguments for a py-amqp Message."""
        props = message.properties
        info = message.delivery_info
        return (info['routing_key'], props.get('application_headers') or {},
                message.body, props.get('content_type'),
                props.get('content_encoding'), info['exchange'])

    def disconnect(self):
        conn, self.conn = self.conn, None
        sock = self._sock
        buf, self._buf = self._buf, b''
        polite = sock is not None and not self._broken
        self._recv = self._send = None
        self._scanner = None
        self._broken = False
        self.amqp_channel = None
        if conn is None:
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
            return
        if polite:
            try:
                self._goodbye(sock, buf)
            except Exception:  # pylint: disable=broad-except
                pass
        try:
            amqp_connection = conn._connection
            if amqp_connection is not None:
                amqp_connection.collect()   # closes the socket
        except Exception:  # pylint: disable=broad-except
            pass
        try:
            conn.release()
        except Exception:  # pylint: disable=broad-except
            pass

    def _goodbye(self, sock, buf):
        """connection.close, then wait (at most ``close_timeout``) for
        close-ok, skipping what still arrives: the broker then logs a
        normal close, and deletes the queue (exclusive, auto-delete)."""
        deadline = time.monotonic() + self.close_timeout
        sock.settimeout(self.close_timeout)
        sock.sendall(CLOSE_FRAME)
        pos = 0
        while True:
            while len(buf) - pos >= 11:
                ftype, channel, size, method = _method_head.unpack_from(buf, pos)
                if ftype == FRAME_METHOD and channel == 0 and method == CONNECTION_CLOSE_OK:
                    return True
                if pos + 8 + size > len(buf):
                    break   # the rest of this frame is still to come
                pos += 8 + size
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            sock.settimeout(remaining)
            data = sock.recv(self.recv_size)
            if not data:
                return False
            buf = buf[pos:] + data
            pos = 0

    # -- reading -----------------------------------------------------------------

    def fill(self, deadline):
        """Read what the socket has and hold every complete delivery."""
        try:
            self._receive(time.monotonic())
            if self._buf:
                self._parse()
        except BaseException:
            self._broken = True  # no close handshake on this connection
            raise

    def _receive(self, now):
        """Read what the socket has (at most max_read bytes) into the buffer."""
        recv = self._recv
        if recv is None:
            raise ConnectionError('not connected')
        chunks = []
        total = 0
        size = self.recv_size
        limit = self.max_read
        self.unread = True   # until the socket says it has nothing more
        while total < limit:
            try:
                data = recv(size)
            except _WOULD_BLOCK:
                self.unread = False
                break
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    self.unread = False
                    break
                raise
            if not data:
                raise AMQPClosed('the broker closed the connection')
            chunks.append(data)
            total += len(data)
            # no early stop on a short read: TLS hands out one record a time
        heartbeat = self.heartbeat
        if total:
            self.bytes_read += total
            self._last_recv = now
            buf = self._buf
            if buf:
                chunks.insert(0, buf)
            self._buf = chunks[0] if len(chunks) == 1 else b''.join(chunks)
        elif heartbeat and now - self._last_recv > 2 * heartbeat:
            raise ConnectionError(f'no heartbeat from the broker in {2 * heartbeat} s')
        if heartbeat and now - self._last_sent >= heartbeat / 2.0:
            self._send(HEARTBEAT)   # 8 bytes: never blocks in practice
            self._last_sent = now
        return total

    def _parse(self):
        """Hold (in :attr:`pending`) the on_raw arguments of every complete
        delivery in the buffer; keep the incomplete tail in the buffer.

        With the compiled core, its ``DeliveryScanner`` takes the plain
        deliveries, and :meth:`_split` one frame or delivery wherever the
        scanner stops (anything else: it raises, skips or finds it
        incomplete, as it would alone); else :meth:`_split` takes all."""
        buf = self._buf
        scanner = self._scanner
        if scanner is None:
            pos = self._split(buf, 0)
        else:
            scan = scanner.scan
            pending = self.pending
            pos = 0
            while True:
                pos = scan(buf, pos, pending)
                step = self._split(buf, pos, True)
                if step == pos:
                    break
                pos = step
        if len(buf) - pos == 8 and buf[pos:] == HEARTBEAT:
            pos = len(buf)   # too short for the loop: a lone heartbeat frame
        self._buf = buf[pos:] if pos else buf

    def _split(self, buf, pos, once=False):
        """Hold the deliveries of *buf* from *pos* on (only the first frame
        or delivery if *once*); return the position of the first byte not
        taken (an incomplete frame or delivery, or the end)."""
        end = len(buf)
        channel_id = self._channel_id
        keys = self._keys
        props_cache = self._props
        frame_head = _frame_head.unpack_from
        method_head = _method_head.unpack_from
        content_head = _content_head.unpack_from
        append = self.pending.append
        held = self.held
        while end - pos >= 11:
            ftype, channel, size, method = method_head(buf, pos)
            mend = pos + 7 + size
            if mend >= end:   # incomplete frame
                if size > self._frame_max:
                    raise AMQPFrameError(f'frame of {size} bytes announced')
                break
            if buf[mend] != FRAME_END:
                raise AMQPFrameError(f'bad frame end {buf[mend]:#04x}')
            if ftype != FRAME_METHOD or channel != channel_id or method != BASIC_DELIVER:
                pos = self._other_frame(buf, pos, ftype, channel, size, method)
                if once:
                    break
                continue
            # basic.deliver: consumer-tag, delivery-tag, redelivered,
            # exchange, routing-key: the last two are looked up raw.
            p = pos + 12 + buf[pos + 11] + 9
            raw_key = buf[p:mend]
            key = keys.get(raw_key)
            if key is None:
                key = self._decode_key(raw_key)
            # the content header frame
            h = mend + 1
            if end - h < 21:
                break
            ftype, channel, size, class_id, _, body_size = content_head(buf, h)
            hend = h + 7 + size
            if hend >= end:
                if size > self._frame_max:
                    raise AMQPFrameError(f'frame of {size} bytes announced')
                break
            if (ftype != FRAME_HEADER or channel != channel_id or class_id != 60
                    or buf[hend] != FRAME_END):
                raise AMQPFrameError(
                    f'expected a content header, got frame type {ftype} '
                    f'on channel {channel}')
            raw_props = buf[h + 19:hend]
            props = props_cache.get(raw_props)
            if props is None:
                props = self._props_of(raw_props)
            # the body frame(s)
            b = hend + 1
            if body_size == 0:
                body = ''   # what py-amqp's Message has then (a str)
            else:
                if end - b < 7:
                    break
                ftype, channel, size = frame_head(buf, b)
                bend = b + 7 + size
                if bend >= end:
                    if size > self._frame_max:
                        raise AMQPFrameError(f'frame of {size} bytes announced')
                    break
                if ftype != FRAME_BODY or channel != channel_id or buf[bend] != FRAME_END:
                    raise AMQPFrameError(
                        f'expected a content body, got frame type {ftype} '
                        f'on channel {channel}')
                if size == body_size:
                    body = buf[b + 7:bend]
                    b = bend + 1
                else:
                    body, b = self._long_body(buf, b, end, body_size)
                    if body is None:
                        break
            pos = b
            if props[3] and body:
                body = _auto_decode(body, props[2])
            append(held((key[0], props[0], body, props[1], props[2], key[1])))
            if once:
                break
        return pos

    def _long_body(self, buf, b, end, body_size):
        """A body of several frames: (body, next position), or (None, b) if
        it has not all arrived yet."""
        chunks = []
        got = 0
        channel_id = self._channel_id
        while got < body_size:
            if end - b < 7:
                return None, b
            ftype, channel, size = _frame_head.unpack_from(buf, b)
            bend = b + 7 + size
            if bend >= end:
                if size > self._frame_max:
                    raise AMQPFrameError(f'frame of {size} bytes announced')
                return None, b
            if ftype != FRAME_BODY or channel != channel_id or buf[bend] != FRAME_END:
                raise AMQPFrameError(
                    f'expected a content body, got frame type {ftype} on channel {channel}')
            chunks.append(buf[b + 7:bend])
            got += size
            b = bend + 1
        if got != body_size:
            raise AMQPFrameError(f'body of {got} bytes, announced {body_size}')
        return b''.join(chunks), b

    def _other_frame(self, buf, pos, ftype, channel, size, method):
        """A frame that is not a basic.deliver: skip it if harmless (its end
        position), else raise."""
        if ftype == FRAME_HEARTBEAT and channel == 0:
            return pos + 8 + size
        if ftype == FRAME_METHOD:
            payload = buf[pos + 7:pos + 7 + size]
            if channel == 0 and method in IGNORED_ON_CHANNEL_0:
                logger.info('gossip_fast: broker sent %s',
                            'connection.blocked' if method & 0xFFFF == 60
                            else 'connection.unblocked')
                return pos + 8 + size
            error = AMQPClosed if method in CLOSING else AMQPFrameError
            raise error(f'{_describe_method(method, payload)} (channel {channel})')
        raise AMQPFrameError(f'unexpected frame type {ftype} on channel {channel}')

    def _decode_key(self, raw_key):
        exchange, offset = _shortstr(raw_key, 0)
        routing_key, offset = _shortstr(raw_key, offset)
        if offset != len(raw_key):
            raise AMQPFrameError('basic.deliver arguments of the wrong size')
        key = (routing_key, exchange)
        keys = self._keys
        if len(keys) >= self.cache_size:
            keys.clear()
        keys[raw_key] = key
        return key

    def _props_of(self, raw_props):
        """Properties not in the cache: by the template when they fit it
        (remembered while the cache has room, so more senders than
        ``cache_size`` never make it churn), else decoded by py-amqp."""
        props = self._templated(raw_props)
        if props is None:
            return self._decode_props(raw_props)
        if len(self._props) < self.cache_size:
            self._props[raw_props] = props
        return props

    def _templated(self, raw):
        """The properties of *raw* if they differ from the template's only
        by the ``hostname`` header, else None.

        Every event a Celery worker sends has the same properties but for
        that header (kombu's producer: content type, encoding, a headers
        table of one ``hostname`` long string, delivery mode, priority), so
        in a cluster of more senders than the cache holds, py-amqp's decode
        (several microseconds) would run for nearly every event.  A template is
        learnt from each such decode (``_learn``; the newest ``templates``
        are kept): the bytes before the
        headers table (flags, content type, encoding) and after it (the
        other properties) must be the same, the table one entry; the value is
        decoded as py-amqp decodes a long string."""
        for head, tail, rest in self._templates:
            n = len(head)
            if raw[:n] != head or raw[n + 4:n + 14] != b'\x08hostnameS':
                continue
            size, = unpack_from('>I', raw, n)
            length, = unpack_from('>I', raw, n + 14)
            end = n + 18 + length
            if size != 14 + length or raw[end:] != tail:
                continue
            value = raw[n + 18:end]
            try:
                value = value.decode('utf-8', 'surrogatepass')
            except UnicodeDecodeError:
                pass  # py-amqp keeps such a value as bytes
            return ({'hostname': value},) + rest
        return None

    def _learn(self, raw, props):
        """Make *raw* (decoded into *props*) the template, if it is a
        standard event's properties."""
        headers = props[0]
        if type(headers) is not dict or list(headers) != ['hostname']:
            return
        # where the headers table starts: after the flags (one word, with
        # content type, encoding and headers set) and the two short strings
        if len(raw) < 4:
            return
        flags, = unpack_from('>H', raw, 0)
        if flags & 0xE001 != 0xE000:
            return
        at = 3 + raw[2]
        if len(raw) <= at:
            return
        at += 1 + raw[at]
        if len(raw) < at + 18 or raw[at + 4:at + 14] != b'\x08hostnameS':
            return
        length, = unpack_from('>I', raw, at + 14)
        previous = self._templates
        self._templates = [(raw[:at], raw[at + 18 + length:], props[1:])]
        if self._templated(raw) != props:  # not where we thought: no template
            self._templates = previous
        else:
            self._templates += previous[:self.templates - 1]

    def _decode_props(self, raw_props):
        try:
            properties, offset = decode_properties_basic(raw_props, 0)
        except Exception as exc:
            raise AMQPFrameError(f'bad content properties: {exc!r}') from exc
        if offset != len(raw_props):
            raise AMQPFrameError('content properties of the wrong size')
        headers = properties.get('application_headers') or {}
        encoding = properties.get('content_encoding')
        props = (headers, properties.get('content_type'), encoding,
                 # py-amqp would decode the body (UTF-8 we decode ourselves)
                 encoding is not None and encoding not in _UTF8)
        cache = self._props
        if len(cache) >= self.cache_size:
            cache.clear()
        cache[raw_props] = props
        self._learn(raw_props, props)  # (decoded: it fits no template)
        return props

    def housekeeping_interval(self):
        # our heartbeat is sent, and the broker's checked, by drains
        if self.heartbeat:
            return self.heartbeat / 4.0
        return super().housekeeping_interval()

    def stats(self):
        stats = super().stats()
        stats['heartbeat'] = self.heartbeat
        return stats
