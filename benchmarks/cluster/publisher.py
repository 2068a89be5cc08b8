"""Publisher of simulated worker heartbeats, as Celery's EventDispatcher sends them.

One process: ``python -m benchmarks.cluster.publisher BROKER_URL``.  It is
driven by the controller (``run.py``) through JSON lines on stdin and
answers on stdout:

``{"cmd": "rate", "rate": R, "size": N, "offset": k, "stride": K}``
    send ``R`` heartbeats per second (this process's share), cycling over
    the simulated workers ``i`` of ``range(N)`` with ``i % K == k``
    (hostname ``<prefix><i>@node<i % 64>``, pid ``10000 + i``).  ``R = 0``
    pauses.  Replies ``{"ok": true}``.
``{"cmd": "report"}``
    replies ``{"sent", "time", "cpu", "behind", "rate"}``: heartbeats sent
    since start, ``time.time()``, this process's CPU seconds, and how many
    heartbeats the pacing is behind its schedule right now.
``{"cmd": "quit"}``
    exits.

What goes on the wire is exactly what a Celery 5.7 worker's
``EventDispatcher`` sends for ``worker-heartbeat``: kombu's ``Producer``
publishing to the exchange of ``celery.events.event.get_exchange(conn)``
(``celeryev``: topic on RabbitMQ, fanout on Redis, where kombu publishes to
the pub/sub channel ``/{db}.celeryev/worker.heartbeat``), routing key
``worker.heartbeat``, header ``hostname``, ``delivery_mode=1``, JSON body
from :func:`gossip_fast.simulate.heartbeat_body` (Celery's field order and
separators).  ``run.py --check-wire`` compares it with a real worker's
capture.

Pacing: every ``TICK`` seconds the process sends what its schedule says is
due (``rate * elapsed - sent``), so the stream is smooth at 10 ms
granularity and the long-run rate is exact.  Two modes (third argument), the same bytes on the wire:

``kombu``
    every heartbeat through ``Producer.publish`` (on Redis each tick's
    messages in one ``Producer.batch()``, kombu's own pipelined publish).
    The reference, but 80-150 us of Python per message: on a 2-core machine
    the publisher alone then takes a good part of a core at 5,000/s.
``raw`` (default)
    each message rendered from templates that kombu and py-amqp produce
    (:class:`RawPublisher`), a tick's messages written with one ``sendall``:
    a few us per message.  ``RawPublisher.check()`` compares its bytes with
    kombu's for the same heartbeat (byte-identical AMQP frames; the same
    Redis PUBLISH but for the random ``delivery_tag``); ``run.py`` runs it
    before every benchmark.
"""
import json
import os
import select
import socket
import sys
import time
from base64 import b64encode
from struct import pack

from celery.events.event import get_exchange
from kombu import Connection, Producer

from gossip_fast.simulate import heartbeat_body

TICK = 0.01          # seconds between pacing rounds
MAX_BATCH = 500      # messages sent in one round at most (then re-check stdin)
ROUTING_KEY = 'worker.heartbeat'


def sim_hostname(prefix, i):
    """The hostname of simulated worker *i* (the controller tracks some)."""
    return f'{prefix}{i}@node{i % 64}'


class Publisher:
    """Paced heartbeats through kombu's ``Producer`` (the reference path)."""

    mode = 'kombu'

    def __init__(self, url, prefix='sim'):
        self.conn = Connection(url)
        self.conn.connect()
        self.exchange = get_exchange(self.conn)
        self.producer = Producer(self.conn.default_channel, exchange=self.exchange)
        self.producer.maybe_declare(self.exchange)  # the dispatcher's declare=[exchange]
        self.driver = self.conn.transport.driver_type
        self.batched = self.driver == 'redis'
        if self.driver == 'amqp':
            # py-amqp sets TCP_USER_TIMEOUT to 1 s: when RabbitMQ applies flow
            # control (stops reading) for longer, the kernel drops the
            # connection.  Here a blocked publisher must just wait (and be
            # reported as not reaching its rate).
            sock = self.conn.connection.transport.sock
            if hasattr(socket, 'TCP_USER_TIMEOUT'):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 0)
        self.prefix = prefix
        self.sent = 0
        self.rate = 0.0
        self.hosts = []
        self.next_host = 0
        self.phase_start = time.monotonic()
        self.phase_sent = 0
        self.clock = 0

    def host(self, i):
        return sim_hostname(self.prefix, i), 10_000 + i

    def set_rate(self, rate, size, offset=0, stride=1):
        self.rate = float(rate)
        self.hosts = [self.host(i) for i in range(offset, int(size), max(1, int(stride)))]
        self.next_host = 0
        self.phase_start = time.monotonic()
        self.phase_sent = 0

    def behind(self, now=None):
        if not self.rate or not self.hosts:
            return 0
        now = time.monotonic() if now is None else now
        return max(0, int((now - self.phase_start) * self.rate) - self.phase_sent)

    def publish_one(self, hostname, body):
        self.producer.publish(
            body, routing_key=ROUTING_KEY, exchange=self.exchange.name,
            headers={'hostname': hostname},
            content_type='application/json', content_encoding='utf-8',
            delivery_mode=1, retry=False)

    def send(self, count):
        hosts = self.hosts
        n_hosts = len(hosts)
        index = self.next_host
        publish = self.publish_one
        for _ in range(count):
            hostname, pid = hosts[index]
            index += 1
            if index == n_hosts:
                index = 0
            self.clock += 1
            publish(hostname, heartbeat_body(hostname, self.clock, time.time(), pid=pid))
        self.next_host = index
        self.sent += count
        self.phase_sent += count

    def tick(self):
        """Send what is due; return True if more is due right away."""
        due = self.behind()
        if due <= 0:
            return False
        count = min(due, MAX_BATCH)
        if self.batched:
            with self.producer.batch(max_size=count):
                self.send(count)
        else:
            self.send(count)
        return due > count

    def report(self):
        times = os.times()
        return {'sent': self.sent, 'time': time.time(),
                'cpu': times.user + times.system,
                'behind': self.behind(), 'rate': self.rate, 'mode': self.mode}

    def flush(self):
        """Send what send() buffered (kombu mode: sent already)."""

    def close(self):
        self.conn.release()


def delivery_tags(batch=4096):
    """Endless ``str(uuid.uuid4())`` look-alikes, as bytes: the delivery tag
    kombu's Redis channel puts in every envelope.  ``uuid.uuid4()`` costs
    several us per message (a syscall and a UUID object each); this takes
    the random bytes in bulk and sets the version and variant bits as
    uuid4 does, for about a quarter of that (measured: 1.5 us vs 6 us)."""
    while True:
        raw = bytearray(os.urandom(16 * batch))
        for i in range(0, len(raw), 16):
            raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40   # version 4
            raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80   # RFC 4122 variant
        text = raw.hex().encode()
        for i in range(0, len(text), 32):
            yield b'-'.join((text[i:i + 8], text[i + 8:i + 12], text[i + 12:i + 16],
                             text[i + 16:i + 20], text[i + 20:i + 32]))


class RawPublisher(Publisher):
    """The same bytes as :class:`Publisher`, written straight to the socket.

    kombu's publish path costs 80-150 us of Python per message, which on a
    small machine takes the CPU the workers under test need.  This one
    renders each message from templates made by kombu and py-amqp
    themselves (the Redis pub/sub topic from kombu's channel, the AMQP
    method frame and per-hostname property bytes from py-amqp), and
    writes a whole tick's messages with one ``sendall``.  ``check()``
    proves the output byte-identical to kombu's for the same heartbeat
    (Redis: the envelope, but for the random ``delivery_tag``).
    """

    mode = 'raw'

    def __init__(self, url, prefix='sim'):
        super().__init__(url, prefix)
        self.batched = False
        self._templates = {}
        if self.driver == 'redis':
            channel = self.conn.default_channel
            self.topic = channel._get_publish_topics(self.exchange.name, ROUTING_KEY)
            self.client = channel.client
            pool_conn = self.client.connection_pool.get_connection()
            pool_conn.connect()
            self._redis_conn = pool_conn
            self.sock = pool_conn._sock
        elif self.driver == 'amqp':
            amqp_conn = self.conn.connection
            self.channel_id = self.conn.default_channel.channel_id
            self.sock = amqp_conn.transport.sock
            captured = self._capture_amqp(b'{}', 'x@y')
            self._method_frame = captured[:captured.index(b'\xce') + 1]
        else:
            raise ValueError(f'no raw publisher for {self.driver}')
        self.sock.setblocking(True)
        self._out = []
        self._tags = delivery_tags()

    # -- templates ------------------------------------------------------------

    def _capture_amqp(self, body, hostname):
        """What py-amqp writes for kombu's publish of *body* (not sent)."""
        transport = self.conn.connection.transport
        real = transport._write
        chunks = []

        def capture(data):
            chunks.append(bytes(data))

        transport._write = capture
        try:
            Publisher.publish_one(self, hostname, body)
        finally:
            transport._write = real
        return b''.join(chunks)

    def _amqp_props(self, hostname):
        props = self._templates.get(hostname)
        if props is None:
            from amqp.basic_message import Message
            message = Message(b'', content_type='application/json',
                              content_encoding='utf-8',
                              application_headers={'hostname': hostname},
                              delivery_mode=1, priority=0)
            props = self._templates[hostname] = message._serialize_properties()
        return props

    def _redis_parts(self, hostname):
        parts = self._templates.get(hostname)
        if parts is None:
            head = '{"body": "'
            tail = ('", "content-encoding": "utf-8", "content-type": "application/json", '
                    '"headers": {"hostname": ' + json.dumps(hostname) + '}, '
                    '"properties": {"delivery_mode": 1, "delivery_info": {"exchange": '
                    + json.dumps(self.exchange.name) + ', "routing_key": '
                    + json.dumps(ROUTING_KEY) + '}, "priority": 0, '
                    '"body_encoding": "base64", "delivery_tag": "')
            parts = self._templates[hostname] = (head.encode(), tail.encode())
        return parts

    def _body_parts(self, hostname, pid):
        """heartbeat_body() split around its clock and timestamp (made by it)."""
        key = (hostname, pid)
        parts = self._templates.get(key)
        if parts is None:
            clock, stamp = 987654321987654, 1234567.0625
            text = heartbeat_body(hostname, clock, stamp, pid=pid)
            head, rest = text.split(b'%d' % clock, 1)
            middle, tail = rest.split(repr(stamp).encode(), 1)
            parts = self._templates[key] = (head, middle, tail)
        return parts

    def body(self, hostname, pid, clock, timestamp):
        head, middle, tail = self._body_parts(hostname, pid)
        return b'%s%d%s%s%s' % (head, clock, middle, repr(timestamp).encode(), tail)

    def send(self, count):
        hosts = self.hosts
        n_hosts = len(hosts)
        index = self.next_host
        out = self._out
        render, body = self.render, self.body
        for _ in range(count):
            hostname, pid = hosts[index]
            index += 1
            if index == n_hosts:
                index = 0
            self.clock += 1
            out.append(render(hostname, body(hostname, pid, self.clock, time.time())))
        self.next_host = index
        self.sent += count
        self.phase_sent += count

    def render(self, hostname, body, tag=None):
        """The bytes sent on the socket for one heartbeat."""
        if self.driver == 'redis':
            head, tail = self._redis_parts(hostname)
            tag = next(self._tags) if tag is None else tag.encode()
            payload = b''.join((head, b64encode(body), tail, tag, b'"}}'))
            out = []
            for topic in self.topic:
                topic = topic.encode()
                out.append(b'*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n'
                           % (len(topic), topic, len(payload), payload))
            return b''.join(out)
        props = self._amqp_props(hostname)
        size = len(body)
        ch = self.channel_id
        return b''.join((
            self._method_frame,
            pack('>BHIHHQ', 2, ch, 12 + len(props), 60, 0, size), props, b'\xce',
            pack('>BHI', 3, ch, size), body, b'\xce'))

    def check(self):
        """Differences between our bytes and kombu's for the same heartbeat."""
        hostname, pid = self.host(123)
        problems = []
        for clock, stamp in ((1, 1e9), (77, 1_700_000_000.25), (2 ** 40 + 3, time.time())):
            if self.body(hostname, pid, clock, stamp) != heartbeat_body(hostname, clock, stamp, pid=pid):
                problems.append(f'body differs from heartbeat_body() for clock {clock}')
        if problems:
            return problems
        body = heartbeat_body(hostname, 77, 1_700_000_000.25, pid=pid)
        if self.driver == 'amqp':
            theirs = self._capture_amqp(body, hostname)
            ours = self.render(hostname, body)
            return [] if ours == theirs else [f'AMQP frames differ: {ours!r} vs kombu {theirs!r}']
        from kombu.utils.json import dumps
        channel = self.conn.default_channel
        message = channel.prepare_message(
            body, 0, 'application/json', 'utf-8', {'hostname': hostname},
            {'delivery_mode': 1})
        channel._inplace_augment_message(message, self.exchange.name, ROUTING_KEY)
        theirs = dumps(message).encode()
        tag = message['properties']['delivery_tag']
        ours = self.render(hostname, body, tag=tag)
        expected = b''.join(
            b'*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n'
            % (len(t.encode()), t.encode(), len(theirs), theirs) for t in self.topic)
        return [] if ours == expected else [f'Redis PUBLISH differs: {ours!r} vs kombu {expected!r}']

    # -- sending -----------------------------------------------------------------

    def publish_one(self, hostname, body):
        self._out.append(self.render(hostname, body))

    def tick(self):
        due = self.behind()
        if due <= 0:
            self._discard_replies()
            return False
        count = min(due, MAX_BATCH)
        self.send(count)
        self.flush()
        return due > count

    def flush(self):
        if self._out:
            self.sock.sendall(b''.join(self._out))
            self._out.clear()
        self._discard_replies()

    def _discard_replies(self):
        """Redis answers each PUBLISH (the subscriber count): read and drop."""
        while True:
            ready, _, _ = select.select([self.sock], [], [], 0)
            if not ready:
                return
            if not self.sock.recv(262144):
                raise ConnectionError('broker closed the connection')

    def close(self):
        try:
            if self.driver == 'redis':
                self._redis_conn.disconnect()
        finally:
            self.conn.release()


def make_publisher(url, prefix='sim', mode='raw'):
    return (RawPublisher if mode == 'raw' else Publisher)(url, prefix)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    url = argv[0]
    prefix = argv[1] if len(argv) > 1 else 'sim'
    mode = argv[2] if len(argv) > 2 else 'raw'
    pub = make_publisher(url, prefix, mode)
    out = sys.stdout
    fd = sys.stdin.fileno()
    pending = b''

    def reply(obj):
        out.write(json.dumps(obj) + '\n')
        out.flush()

    reply({'ready': True, 'pid': os.getpid(), 'mode': pub.mode})
    next_tick = time.monotonic()
    while True:
        more = pub.tick()
        now = time.monotonic()
        next_tick += TICK
        if next_tick < now - 1.0:  # far behind: do not try to catch up in a burst
            next_tick = now
        timeout = 0 if more else max(0.0, next_tick - now)
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return 0  # the controller went away
        pending += chunk
        while b'\n' in pending:
            line, pending = pending.split(b'\n', 1)
            if not line.strip():
                continue
            cmd = json.loads(line)
            if cmd['cmd'] == 'rate':
                pub.set_rate(cmd['rate'], cmd['size'], cmd.get('offset', 0),
                             cmd.get('stride', 1))
                reply({'ok': True})
            elif cmd['cmd'] == 'report':
                reply(pub.report())
            elif cmd['cmd'] == 'quit':
                pub.close()
                return 0


if __name__ == '__main__':
    sys.exit(main())
