"""Broker-load benchmark: what gossip costs the broker, stock vs digest mode.

``python -m benchmarks.broker_load [--quick]`` (or ``scripts/broker-load-bench.sh``).

For each broker (Redis, RabbitMQ; started by ``tests/brokers.py`` on
loopback) and each number S of subscribing workers (1, 50, 200, 500):

* heartbeats are published byte for byte as Celery 5.7 workers send them
  (``benchmarks/cluster/publisher.py``'s raw publisher, checked against
  kombu's bytes and a real worker's capture first) at a fixed rate (1,000/s
  by default: a 2,000-worker cluster);
* S simulated workers subscribe, each on its own connection, spread over a
  few subscriber processes that read every socket with ``selectors`` every
  ``--read-interval`` and discard the bytes, counting deliveries (Redis:
  ``message``/``pmessage`` pushes; RabbitMQ: ``basic.deliver`` frames):

  ``stock``
      as Celery's Gossip does: Redis PSUBSCRIBE ``/0.celeryev/worker.*``;
      RabbitMQ one auto-delete queue per worker bound ``worker.#`` on
      ``celeryev`` (message TTL 2 s, expires 60 s), consumed ``no_ack``.
  ``digest``
      as docs/digest-mode.md designs it: one relay (``--relays``: the
      publishing relay and any warm standbys) with the stock subscription
      plus the digest exchange's ``digest``, ``pulse``, ``announce`` and its
      own ``snapshot.<id>`` keys; three successors and the other workers
      (members) only the election keys on ``celeryev`` (``worker.elect``,
      ``worker.elect.ack``) and ``digest`` + their own ``snapshot.<id>``
      (successors also ``pulse``; Redis: SUBSCRIBE of exact channels, no
      pattern).  The relay's and members' own traffic is simulated with
      the designed timers and sizes (:class:`DigestTraffic`): a pulse a
      second, the changes of ``--churn`` members a second in a digest every
      2 s (made by ``gossip_fast.digest.codec``), a snapshot of the whole
      cluster per joining member, an announce from every member every 300 s.
  ``exact`` (not in the default run)
      stock's deliveries through SUBSCRIBE of the exact heartbeat channel
      (RabbitMQ: a ``worker.heartbeat`` binding), to compare with the
      pattern.

Measured over ``--repeats`` windows after a warm-up (the table gives their
median): the broker's CPU time (its whole process tree: ``redis-server``;
RabbitMQ's ``beam.smp`` and helpers; from the scheduler's nanosecond
counters, ``/proc/<pid>/task/*/schedstat``), divided by the heartbeats
published in the window, in total and net of the broker's idle CPU with the
same subscribers connected (measured just before); the deliveries a second
the subscribers counted (and how many were expected); the machine's
load.  Stock on RabbitMQ costs more per delivery than this 2-core machine
has at 1,000/s x 500 subscribers, so the rate of a point is capped at
``--max-deliveries`` (per broker) divided by S; the table gives the rate
each point ran at.

Writes ``<out-dir>/broker-load.{json,md,png}`` (``docs/`` by default;
``--quick`` writes to a temporary folder unless ``--out-dir`` is given).

``python -m benchmarks.broker_load --subscriber-process`` is the subscriber
child (JSON lines on stdin/stdout), started by the controller.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from gossip_fast.digest import codec  # noqa: E402
from gossip_fast.digest.codec import Announce, Digest, Member, PeerFields, Pulse, Snapshot, ViewHash  # noqa: E402
from gossip_fast.digest.names import DigestNames  # noqa: E402

FREQ = 2.0               # heartbeat interval of the simulated workers (s)
# digest mode's design (docs/digest-mode.md)
RELAYS = 1               # workers with the full subscription (the publisher, warm standbys)
SUCCESSORS = 3           # next in line after the publisher: listed in digests, get pulses
TICK = 1.0               # the relay's tick: sweep, pulse to the successors
DIGEST_INTERVAL = 2.0    # D: at most one digest per D (changes are coalesced)
KEEPALIVE = 10.0         # K: an empty digest after K without changes
ANNOUNCE_PERIOD = 300.0  # A: every member re-announces itself
STOCK_TTL_MS = 2000      # Celery: x-message-ttl = heartbeat_interval
MEMBER_TTL_MS = 10000    # digest mode: members' queue TTL
EXPIRES_MS = 60000       # Celery: event_queue_expires
REDIS_MARKER = b'message\r\n'            # in "message" and "pmessage" pushes
AMQP_MARKER = b'\x00\x3c\x00\x3c'        # basic.deliver (class 60, method 60)
SUBSCRIBER_PREFIX = 'bench'


def log(*args):
    stamp = time.strftime('%H:%M:%S')
    print(f'[{stamp}]', *args, file=sys.stderr, flush=True)


# =====================================================================================
# Subscriber child process
# =====================================================================================

class _Sock:
    """One subscriber connection: its socket and delivery count."""

    __slots__ = ('sock', 'tail', 'count', 'bytes', 'keep')

    def __init__(self, sock, keep=None):
        self.sock = sock
        self.tail = b''
        self.count = 0
        self.bytes = 0
        self.keep = keep   # py-amqp connection object: keep it alive


def _redis_command(*args):
    out = [b'*%d\r\n' % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b'$%d\r\n%s\r\n' % (len(data), data))
    return b''.join(out)


def _open_redis(url, spec, timeout=10.0):
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or 6379), timeout)
    commands = []
    if spec.get('patterns'):
        commands.append(_redis_command('PSUBSCRIBE', *spec['patterns']))
    if spec.get('channels'):
        commands.append(_redis_command('SUBSCRIBE', *spec['channels']))
    sock.sendall(b''.join(commands))
    expected = len(spec.get('patterns', ())) + len(spec.get('channels', ()))
    seen = b''
    while seen.count(b'subscribe\r\n') < expected:  # subscribe / psubscribe confirmations
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError('Redis closed the connection while subscribing')
        seen += chunk
    sock.setblocking(False)
    return _Sock(sock)


_declared = set()


def _open_amqp(url, spec, timeout=20.0):
    from urllib.parse import unquote, urlsplit

    import amqp
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) or '/'
    conn = amqp.Connection(f'{parts.hostname}:{parts.port or 5672}',
                           userid=parts.username or 'guest',
                           password=parts.password or 'guest',
                           virtual_host=vhost, heartbeat=0, connect_timeout=timeout)
    conn.connect()
    ch = conn.channel()
    for exchange in {b[0] for b in spec['bindings']}:
        if exchange not in _declared:  # as kombu declares them (topic, durable)
            ch.exchange_declare(exchange, 'topic', durable=True, auto_delete=False)
            _declared.add(exchange)
    queue = f'celeryev.{uuid.uuid4()}'
    ch.queue_declare(queue, durable=False, auto_delete=True,
                     arguments={'x-message-ttl': spec['ttl_ms'], 'x-expires': EXPIRES_MS})
    for exchange, key in spec['bindings']:
        ch.queue_bind(queue, exchange, key)
    ch.basic_consume(queue, no_ack=True, callback=lambda message: None)
    sock = conn.transport.sock
    sock.setblocking(False)
    return _Sock(sock, keep=conn)


def _read(entry, buf, marker):
    """Read what *entry*'s socket has, count deliveries; False if closed."""
    sock = entry.sock
    size = len(marker) - 1
    while True:
        try:
            n = sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not n:
            return False
        entry.bytes += n
        entry.count += buf.count(marker, 0, n)
        # a marker split between two reads: count it in the seam
        head = bytes(buf[:min(n, size)])
        if entry.tail:
            entry.count += (entry.tail + head).count(marker)
        entry.tail = bytes(buf[max(0, n - size):n]) if n >= size else (entry.tail + head)[-size:]
        if n < len(buf):
            return True


def subscriber_main():
    """The child: ``open`` / ``report`` / ``close`` / ``quit`` as JSON lines."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    out = sys.stdout
    stdin = sys.stdin.fileno()
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, None)
    socks = []
    closed = 0
    marker = REDIS_MARKER
    read_interval = 0.02
    buf = bytearray(256 * 1024)
    pending = b''

    def reply(obj):
        out.write(json.dumps(obj) + '\n')
        out.flush()

    def close_all():
        nonlocal socks
        for entry in socks:
            try:
                sel.unregister(entry.sock)
            except (KeyError, ValueError):
                pass
            try:
                entry.sock.close()
            except OSError:
                pass
        socks = []

    reply({'ready': True, 'pid': os.getpid()})
    while True:
        events = sel.select(timeout=1.0 if not socks else 0)
        got_command = False
        for key, _ in events:
            if key.data is not None:
                if not _read(key.data, buf, marker):
                    closed += 1
                    sel.unregister(key.fileobj)
                continue
            got_command = True
            chunk = os.read(stdin, 65536)
            if not chunk:
                close_all()
                return 0
            pending += chunk
        while got_command and b'\n' in pending:
            line, pending = pending.split(b'\n', 1)
            if not line.strip():
                continue
            cmd = json.loads(line)
            try:
                if cmd['cmd'] == 'open':
                    kind = cmd['kind']
                    marker = REDIS_MARKER if kind == 'redis' else AMQP_MARKER
                    read_interval = cmd.get('read_interval', read_interval)
                    began = time.monotonic()
                    for spec in cmd['specs']:
                        entry = (_open_redis if kind == 'redis' else _open_amqp)(cmd['url'], spec)
                        socks.append(entry)
                        sel.register(entry.sock, selectors.EVENT_READ, entry)
                    reply({'ok': True, 'opened': len(socks),
                           'seconds': round(time.monotonic() - began, 2)})
                elif cmd['cmd'] == 'report':
                    times = os.times()
                    reply({'deliveries': sum(e.count for e in socks),
                           'bytes': sum(e.bytes for e in socks),
                           'cpu': times.user + times.system, 'time': time.time(),
                           'open': len(socks), 'closed': closed})
                elif cmd['cmd'] == 'close':
                    close_all()
                    closed = 0
                    reply({'ok': True})
                elif cmd['cmd'] == 'quit':
                    close_all()
                    reply({'ok': True})
                    return 0
            except Exception as exc:  # report it to the controller, keep serving
                reply({'ok': False, 'error': f'{type(exc).__name__}: {exc}'})
        if socks:
            # Reading every socket at most every read_interval makes each read
            # take many deliveries at once: the subscribers stay cheap and the
            # broker still never buffers more than read_interval of stream.
            time.sleep(read_interval)


class SubscriberPool:
    """A few subscriber child processes; S connections spread over them."""

    def __init__(self, processes):
        self.procs = []
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
        for _ in range(processes):
            proc = subprocess.Popen(
                [sys.executable, '-m', 'benchmarks.broker_load', '--subscriber-process'],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                start_new_session=True)
            self.procs.append(proc)
            hello = self._read(proc)
            if not hello.get('ready'):
                raise RuntimeError(f'subscriber process did not start: {hello!r}')
        import psutil
        self._ps = [psutil.Process(p.pid) for p in self.procs]

    @staticmethod
    def _read(proc):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f'subscriber process exited ({proc.poll()})')
        return json.loads(line)

    def _send(self, proc, **cmd):
        proc.stdin.write((json.dumps(cmd) + '\n').encode())
        proc.stdin.flush()

    def call_all(self, per_proc):
        """Send each process its command (in parallel), then collect replies."""
        for proc, cmd in zip(self.procs, per_proc, strict=True):
            if cmd is not None:
                self._send(proc, **cmd)
        replies = []
        for proc, cmd in zip(self.procs, per_proc, strict=True):
            replies.append(self._read(proc) if cmd is not None else None)
        return replies

    def open(self, kind, url, specs, read_interval):
        shares = [specs[i::len(self.procs)] for i in range(len(self.procs))]
        replies = self.call_all([
            {'cmd': 'open', 'kind': kind, 'url': url, 'specs': share,
             'read_interval': read_interval} if share else None
            for share in shares])
        problems = [r['error'] for r in replies if r is not None and not r.get('ok')]
        if problems:
            raise RuntimeError('subscribers failed to open: ' + '; '.join(problems))
        return max((r['seconds'] for r in replies if r), default=0.0)

    def report(self):
        replies = [r for r in self.call_all([{'cmd': 'report'}] * len(self.procs))]
        return {'deliveries': sum(r['deliveries'] for r in replies),
                'bytes': sum(r['bytes'] for r in replies),
                'cpu': sum(r['cpu'] for r in replies),
                'open': sum(r['open'] for r in replies),
                'closed': sum(r['closed'] for r in replies),
                'time': time.time()}

    def close(self):
        self.call_all([{'cmd': 'close'}] * len(self.procs))

    def stop(self):
        for proc in self.procs:
            try:
                self._send(proc, cmd='quit')
                proc.wait(10)
            except Exception:
                pass
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        self.procs = []


# =====================================================================================
# Who subscribes to what
# =====================================================================================

def subscriber_names(s):
    return [f'{SUBSCRIBER_PREFIX}{j}@sub{j % 64}' for j in range(s)]


def subscriber_specs(kind, mode, s, relays=RELAYS, names=None):
    """One spec per simulated worker (what it subscribes or binds)."""
    names = names or DigestNames()
    specs = []
    for j, hostname in enumerate(subscriber_names(s)):
        if mode in ('stock', 'exact'):
            role = mode
        elif j < min(relays, s):
            role = 'relay'
        else:
            role = 'successor' if j < relays + SUCCESSORS else 'member'
        if kind == 'redis':
            if role == 'stock':
                specs.append({'patterns': [names.redis_pattern(names.event_exchange, 'worker.#')],
                              'channels': [], 'role': role})
            elif role == 'exact':  # the same deliveries through SUBSCRIBE, for comparison
                specs.append({'patterns': [], 'role': role, 'channels': [
                    names.redis_channel(names.event_exchange, 'worker.heartbeat')]})
            else:
                patterns, channels = names.redis_subscriptions(role, hostname)
                specs.append({'patterns': patterns, 'channels': channels, 'role': role})
        else:
            if role in ('stock', 'exact'):
                bindings = [(names.event_exchange, 'worker.#' if role == 'stock'
                             else 'worker.heartbeat')]
            else:
                bindings = names.amqp_bindings(role, hostname)
            specs.append({'bindings': bindings, 'role': role,
                          'ttl_ms': STOCK_TTL_MS if role in ('stock', 'exact', 'relay')
                          else MEMBER_TTL_MS})
    return specs


# =====================================================================================
# The relays' traffic, simulated
# =====================================================================================

def cluster_hosts(prefix, size):
    """The simulated workers' hostnames and pids, as publisher.py names them."""
    return [(f'{prefix}{i}@node{i % 64}', 10_000 + i) for i in range(size)]


class DigestTraffic(threading.Thread):
    """What the publishing relay and the members send in digest mode, with
    the designed timers (docs/digest-mode.md): every TICK a pulse to the
    relay's successors; the changes (``churn`` members a second, one joining
    then one lost, so the view keeps its size) in one digest at most every
    DIGEST_INTERVAL, an empty one after KEEPALIVE without changes; for each
    join a snapshot of the whole cluster to the joiner; from every member an
    announce every ANNOUNCE_PERIOD (spread evenly), to the relay.  The
    bytes come from ``gossip_fast.digest.codec``; kombu publishes them as
    the relay's and members' Producers will."""

    KINDS = ('digest', 'pulse', 'announce', 'snapshot')

    def __init__(self, url, hosts, members, churn=1.0, relays=RELAYS, names=None):
        super().__init__(daemon=True, name='digest-traffic')
        self.url = url
        self.names = names or DigestNames()
        self.members = members           # subscriber hostnames that are members
        self.churn = churn
        self.view = {h: Member(h, pid, FREQ, codec.FLAG_DIGEST | codec.FLAG_ELIGIBLE)
                     for h, pid in hosts}
        self.vhash = ViewHash((h, m.pid) for h, m in self.view.items())
        # r: the publisher (and warm standbys), then its successors
        self.relay_names = tuple(subscriber_names(relays + SUCCESSORS))
        self.stop_event = threading.Event()
        self.sent = dict.fromkeys(self.KINDS, 0)
        self.bytes = dict.fromkeys(self.KINDS, 0)
        self.sizes = {}
        self.error = None
        self.seq = 0
        self.clock = 1
        self.joined = 0
        self.changes = 0
        self.rng = random.Random(13)
        self._fields = PeerFields(0, 1234, (0.17, 0.36, 0.46), 'py-celery', '5.7.0', 'Linux')

    def _publish(self, producer, exchange, key, body, what):
        producer.publish(body, exchange=exchange, routing_key=key, serializer=None,
                         content_type=codec.CONTENT_TYPE,
                         content_encoding=codec.CONTENT_ENCODING,
                         headers={'hostname': self.relay_names[0]},
                         delivery_mode=1, retry=False)
        self.sent[what] += 1
        self.bytes[what] += len(body)
        self.sizes.setdefault(what, len(body))

    def _churn(self, tick, pending):
        """This tick's changes into *pending* ({hostname: Member or None})."""
        due = int((tick + 1) * self.churn * TICK) - int(tick * self.churn * TICK)
        joined = []
        for _ in range(due):
            self.changes += 1
            if self.changes % 2:
                self.joined += 1
                hostname = f'joiner{self.joined}@node{self.joined % 64}'
                member = Member(hostname, 50_000 + self.joined, FREQ,
                                codec.FLAG_DIGEST | codec.FLAG_ELIGIBLE,
                                int(time.time() * 1000))
                self.view[hostname] = member
                self.vhash.add(hostname, member.pid)
                pending[hostname] = member
                joined.append(member)
            else:
                hostname = self.rng.choice(list(self.view))
                self.view.pop(hostname)
                self.vhash.discard(hostname)
                pending[hostname] = None
        return joined

    def _digest(self, pending):
        self.seq += 1
        joined = tuple(m for m in pending.values() if m is not None)
        lost = tuple(h for h, m in pending.items() if m is None)
        return Digest(self.relay_names[0], 4242, self.clock, time.time(), 1, self.seq, 1,
                      self.seq - 1, self.vhash.count, self.vhash.value, self.relay_names,
                      DIGEST_INTERVAL, joined, (), lost)

    def _pulse(self):
        return Pulse(self.relay_names[0], 4242, self.clock, time.time(), 1, max(1, self.seq),
                     self.vhash.count, self.vhash.value, self.relay_names, DIGEST_INTERVAL)

    def _snapshot(self, request):
        members = tuple(self.view.values())
        return Snapshot(self.relay_names[0], 4242, self.clock, time.time(), 1, max(1, self.seq),
                        self.vhash.count, self.vhash.value, self.relay_names, DIGEST_INTERVAL,
                        members, (self._fields,) * len(members), request)

    def run(self):
        from kombu import Connection, Producer
        try:
            with Connection(self.url) as conn:
                conn.connect()
                transport = conn.transport.driver_type
                exchange = self.names.kombu_exchange(transport)
                producer = Producer(conn.default_channel, exchange=exchange)
                producer.maybe_declare(exchange)
                announce_due = 0.0
                announce_rate = len(self.members) / ANNOUNCE_PERIOD
                pending = {}
                last_digest = -1e9
                tick = 0
                start = time.monotonic()
                while not self.stop_event.is_set():
                    now = start + tick * TICK
                    self.clock += 500
                    for _member in self._churn(tick, pending):  # the joiner asks for a snapshot
                        if self.members:
                            target = self.rng.choice(self.members)
                            self._publish(producer, exchange, self.names.snapshot_key(target),
                                          codec.encode(self._snapshot(uuid.uuid4().hex[:16])),
                                          'snapshot')
                    since = now - last_digest
                    if (pending and since >= DIGEST_INTERVAL - 1e-6) or since >= KEEPALIVE - 1e-6:
                        self._publish(producer, exchange, self.names.digest_key,
                                      codec.encode(self._digest(pending)), 'digest')
                        pending = {}
                        last_digest = now
                    self._publish(producer, exchange, self.names.pulse_key,
                                  codec.encode(self._pulse()), 'pulse')
                    announce_due += announce_rate * TICK
                    while announce_due >= 1.0:
                        announce_due -= 1.0
                        who = self.members[self.sent['announce'] % len(self.members)]
                        body = codec.encode(Announce(who, 777, self.clock, time.time(),
                                                     term=1, seq=max(1, self.seq),
                                                     count=self.vhash.count, hash=self.vhash.value))
                        self._publish(producer, exchange, self.names.announce_key, body, 'announce')
                    tick += 1
                    self.stop_event.wait(max(0.0, start + tick * TICK - time.monotonic()))
        except Exception as exc:  # reported in the results
            self.error = f'{type(exc).__name__}: {exc}'
            log(f'digest traffic failed: {self.error}')

    def stop(self):
        self.stop_event.set()
        self.join(10)

    def counters(self):
        return dict(self.sent), dict(self.bytes)


# =====================================================================================
# Controller
# =====================================================================================

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='broker-load', description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true',
                   help='smoke run (~2 min): 1 and 50 subscribers, short windows')
    p.add_argument('--brokers', default='redis,amqp', help='comma list of redis, amqp')
    p.add_argument('--subscribers', help='comma list of S (default 1,50,200,500; quick 1,50)')
    p.add_argument('--modes', default='stock,digest',
                   help='comma list of stock, digest, exact (exact: stock\'s deliveries through '
                        'SUBSCRIBE of the heartbeat channel / binding of its key, to compare '
                        'with PSUBSCRIBE / worker.#)')
    p.add_argument('--rate', type=float, default=1000.0,
                   help='heartbeats published per second (default 1000: a 2,000-worker cluster)')
    p.add_argument('--max-deliveries', default='redis=600000,amqp=40000',
                   help='cap on rate x S per broker (deliveries/s the machine can take); '
                        'a point over it runs at a lower rate (default %(default)s)')
    p.add_argument('--relays', type=int, default=RELAYS,
                   help='digest mode: workers with the full subscription (the publishing relay '
                        'and warm standbys; default %(default)s)')
    p.add_argument('--churn', type=float, default=1.0,
                   help='digest mode: members joining or lost per second (default 1)')
    p.add_argument('--no-digest-traffic', action='store_true',
                   help='digest mode without the relay\'s digests, pulses, announces and '
                        'snapshots (to tell their cost from the subscriptions\')')
    p.add_argument('--warmup', type=float, help='seconds before each window (default 3; quick 2)')
    p.add_argument('--window', type=float, help='seconds of each window (default 5; quick 4)')
    p.add_argument('--repeats', type=int, help='windows per point, back to back; the table '
                                               'gives their median (default 4; quick 1)')
    p.add_argument('--idle-window', type=float,
                   help='seconds of the idle window before each point (default 4; quick 2)')
    p.add_argument('--erl-args', default='',
                   help='extra Erlang VM arguments for RabbitMQ, e.g. "+sbwt none" (default: none)')
    p.add_argument('--processes', type=int, default=3, help='subscriber processes (default 3)')
    p.add_argument('--read-interval', type=float, default=0.02,
                   help='subscribers read each socket at most this often (s, default 0.02)')
    p.add_argument('--out-dir', help='where to write broker-load.{json,md,png} '
                                     '(default docs/; quick: a temporary folder)')
    p.add_argument('--subscriber-process', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick

    def default(value, full, short):
        return value if value is not None else (short if quick else full)

    args.brokers = [b.strip() for b in args.brokers.split(',') if b.strip()]
    args.modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    args.subscribers = [int(s) for s in default(args.subscribers, '1,50,200,500', '1,50').split(',')]
    args.warmup = default(args.warmup, 3.0, 2.0)
    args.window = default(args.window, 5.0, 4.0)
    args.repeats = default(args.repeats, 4, 1)
    args.idle_window = default(args.idle_window, 4.0, 2.0)
    caps = {}
    for item in args.max_deliveries.split(','):
        if item.strip():
            key, value = item.split('=')
            caps[key.strip()] = float(value)
    args.max_deliveries = caps
    if args.out_dir is None:
        args.out_dir = (os.path.join(tempfile.gettempdir(), 'gossip-fast-broker-load-quick')
                        if quick else os.path.join(ROOT, 'docs'))
    return args


def tree_cpu(pids):
    """CPU seconds of the processes *pids* and all their descendants, from
    the scheduler's nanosecond counters (``/proc/<pid>/task/*/schedstat``):
    ``cpu_times()`` counts 10 ms ticks, a whole microsecond per heartbeat
    in a 10 s window at 1,000/s, more than the differences measured here."""
    import psutil
    total_ns = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            continue
        for proc in procs:
            try:
                tasks = os.listdir(f'/proc/{proc.pid}/task')
            except OSError:
                continue
            for tid in tasks:
                try:
                    with open(f'/proc/{proc.pid}/task/{tid}/schedstat') as f:
                        total_ns += int(f.read().split()[0])
                except (OSError, ValueError, IndexError):
                    pass
    return total_ns / 1e9


def broker_cpu(broker):
    pids = [p.pid for p in broker.server._procs]
    if os.path.exists('/proc/self/schedstat'):
        return tree_cpu(pids)
    return broker.cpu()  # psutil's cpu_times (tick resolution)


def cpu_snapshot(broker, pool, publishers):
    import psutil
    return {'time': time.time(), 'machine': psutil.cpu_times(), 'broker_cpu': broker_cpu(broker),
            'subs': pool.report(),
            'pub': publishers.report() if publishers.procs else None}


def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _window(before, after, sent0, sent1, idle_pct):
    from benchmarks.cluster.run import machine_busy
    wall = after['time'] - before['time']
    pub_wall = after['pub']['time'] - before['pub']['time']
    published = (after['pub']['sent'] - before['pub']['sent']) / pub_wall
    heartbeats = published * wall
    cpu = after['broker_cpu'] - before['broker_cpu']
    idle_cpu = idle_pct / 100.0 * wall
    out = {
        'seconds': round(wall, 2),
        'rate_published': published,
        'broker_cpu_pct': 100.0 * cpu / wall,
        'us_per_heartbeat': 1e6 * cpu / heartbeats if heartbeats else None,
        'us_per_heartbeat_net': 1e6 * (cpu - idle_cpu) / heartbeats if heartbeats else None,
        'deliveries_per_s': (after['subs']['deliveries'] - before['subs']['deliveries']) / wall,
        'subscriber_mb_per_s': (after['subs']['bytes'] - before['subs']['bytes']) / wall / 1e6,
        'subscriber_cpu_pct': 100.0 * (after['subs']['cpu'] - before['subs']['cpu']) / wall,
        'subscribers_closed': after['subs']['closed'],
        'publisher_cpu_pct': 100.0 * (after['pub']['cpu'] - before['pub']['cpu']) / pub_wall,
        'publisher_behind': after['pub']['behind'],
        'machine_busy_pct': machine_busy(before['machine'], after['machine']),
        'loadavg': os.getloadavg()[0],
    }
    if sent0 is not None:
        (s0, b0), (s1, b1) = sent0, sent1
        out['digest_per_s'] = {k: (s1[k] - s0[k]) / wall for k in s1}
        out['digest_bytes_per_s'] = {k: (b1[k] - b0[k]) / wall for k in b1}
    return out


def run_point(args, broker, pool, publishers, mode, s, prefix):
    from benchmarks.cluster.run import machine_busy
    cap = args.max_deliveries.get(broker.kind)
    rate = args.rate
    if mode in ('stock', 'exact') and cap and rate * s > cap:
        rate = math.floor(cap / s)
    size = int(args.rate * FREQ)         # the simulated cluster (hostnames cycled)
    specs = subscriber_specs(broker.kind, mode, s, args.relays)
    roles = {r: sum(1 for sp in specs if sp['role'] == r)
             for r in ('stock', 'exact', 'relay', 'successor', 'member')}
    label = f'{broker.label} {mode} S={s}'
    open_s = pool.open(broker.kind, broker.url, specs, args.read_interval)
    log(f'{label}: {s} subscribers open in {open_s:.1f} s ({roles})')
    time.sleep(1.0)  # let connection set-up work settle before the idle window
    idle0 = cpu_snapshot(broker, pool, publishers)
    time.sleep(args.idle_window)
    idle1 = cpu_snapshot(broker, pool, publishers)
    idle_wall = idle1['time'] - idle0['time']
    idle_pct = 100.0 * (idle1['broker_cpu'] - idle0['broker_cpu']) / idle_wall

    traffic = None
    if mode == 'digest' and not args.no_digest_traffic:
        members = [h for h, sp in zip(subscriber_names(s), specs, strict=True)
                   if sp['role'] in ('member', 'successor')]
        traffic = DigestTraffic(broker.url, cluster_hosts(prefix, size), members, args.churn,
                                args.relays)
        traffic.start()
    publishers.set(rate, size)
    time.sleep(args.warmup)
    windows = []
    for _ in range(args.repeats):
        before = cpu_snapshot(broker, pool, publishers)
        sent0 = traffic.counters() if traffic else None
        time.sleep(args.window)
        after = cpu_snapshot(broker, pool, publishers)
        sent1 = traffic.counters() if traffic else None
        windows.append(_window(before, after, sent0, sent1, idle_pct))
    publishers.set(0, 0)
    if traffic:
        traffic.stop()
    time.sleep(0.5)
    pool.close()

    def pooled(key):
        return _median([w[key] for w in windows])

    published = pooled('rate_published')
    deliveries = pooled('deliveries_per_s')
    digest_per_s = None
    if traffic:
        digest_per_s = {k: _median([w['digest_per_s'][k] for w in windows])
                        for k in windows[0]['digest_per_s']}
    if mode in ('stock', 'exact'):
        expected = published * s
    elif digest_per_s is None:
        expected = published * roles['relay']
    else:
        expected = published * roles['relay'] + (
            digest_per_s['digest'] * s
            + digest_per_s['pulse'] * (roles['relay'] + roles['successor'])
            + digest_per_s['announce'] * roles['relay']
            + digest_per_s['snapshot'] * (1 if len(members) else 0))
    per_hb = [w['us_per_heartbeat'] for w in windows]
    per_hb_net = [w['us_per_heartbeat_net'] for w in windows]
    point = {
        'broker': broker.kind, 'mode': mode, 'subscribers': s, 'roles': roles,
        'rate_target': rate, 'rate_published': published,
        'windows': windows, 'window_s': args.window, 'repeats': args.repeats,
        'broker_cpu_pct': pooled('broker_cpu_pct'),
        'broker_idle_pct': idle_pct,
        'us_per_heartbeat': _median(per_hb),
        'us_per_heartbeat_net': _median(per_hb_net),
        'us_per_heartbeat_range': [min(per_hb), max(per_hb)],
        'us_per_heartbeat_net_range': [min(per_hb_net), max(per_hb_net)],
        'deliveries_per_s': deliveries,
        'deliveries_expected_per_s': expected,
        'delivered_pct': 100.0 * deliveries / expected if expected else None,
        'deliveries_per_heartbeat': deliveries / published if published else None,
        'subscriber_mb_per_s': pooled('subscriber_mb_per_s'),
        'subscriber_cpu_pct': pooled('subscriber_cpu_pct'),
        'subscribers_closed': windows[-1]['subscribers_closed'],
        'publisher_cpu_pct': pooled('publisher_cpu_pct'),
        'publisher_behind': windows[-1]['publisher_behind'],
        'machine_busy_pct': pooled('machine_busy_pct'),
        'machine_busy_idle_pct': machine_busy(idle0['machine'], idle1['machine']),
        'loadavg': os.getloadavg()[0],
        'open_seconds': open_s,
    }
    if traffic:
        point['digest_traffic'] = {
            'per_s': digest_per_s,
            'bytes_per_s': {k: _median([w['digest_bytes_per_s'][k] for w in windows])
                            for k in windows[0]['digest_bytes_per_s']},
            'first_size': traffic.sizes, 'error': traffic.error,
        }
    log(f'{label}: {published:,.0f} hb/s, broker {point["broker_cpu_pct"]:.1f}% '
        f'(idle {idle_pct:.2f}%), {point["us_per_heartbeat"]:.1f} us/hb '
        f'(net {point["us_per_heartbeat_net"]:.1f}; windows {", ".join(f"{v:.1f}" for v in per_hb_net)}), '
        f'{deliveries:,.0f} deliveries/s ({point["delivered_pct"]:.0f}% of expected), '
        f'machine {point["machine_busy_pct"]:.0f}% busy')
    return point


def _rabbitmq_class():
    from tests.brokers import RabbitMQServer

    class RabbitMQWithArgs(RabbitMQServer):
        """tests/brokers.py's server with extra Erlang VM arguments."""

        def __init__(self, erl_args):
            super().__init__(use_env=False)
            self.erl_args = erl_args

        def _environment(self):
            env = super()._environment()
            env['RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS'] = self.erl_args
            return env

    return RabbitMQWithArgs


def _RabbitMQ(erl_args):
    return _rabbitmq_class()(erl_args)


def main(argv=None):
    args = parse_args(argv)
    if args.subscriber_process:
        return subscriber_main()
    from benchmarks import broker_load_report as report
    from benchmarks.cluster.run import Broker, Publishers, check_wire, machine_info

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    began = time.monotonic()
    results = {
        'mode': 'quick' if args.quick else 'full',
        'machine': machine_info(),
        'settings': {k: v for k, v in vars(args).items()
                     if k not in ('out_dir', 'subscriber_process')},
        'design': {'relays': args.relays, 'successors': SUCCESSORS, 'tick': TICK,
                   'digest_interval': DIGEST_INTERVAL, 'keepalive': KEEPALIVE,
                   'announce_period': ANNOUNCE_PERIOD, 'freq': FREQ,
                   'member_ttl_ms': MEMBER_TTL_MS, 'stock_ttl_ms': STOCK_TTL_MS},
        'points': [], 'brokers': {},
    }
    log(f'broker-load benchmark ({results["mode"]})')
    try:
        for kind in args.brokers:
            broker = Broker(kind)
            if kind == 'amqp' and args.erl_args:
                broker.server = _RabbitMQ(args.erl_args)
            broker.start()
            publishers = pool = None
            try:
                info = results['brokers'][kind] = {'label': broker.label}
                info['wire'] = check_wire(broker, 'raw')
                log(f'{broker.label}: wire check: {"OK" if info["wire"]["ok"] else "DIFFERS"} '
                    f'({info["wire"]["detail"]})')
                prefix = f'sim{uuid.uuid4().hex[:4]}-'
                publishers = Publishers(broker.url, prefix, 1, 'raw')
                pool = SubscriberPool(args.processes)
                for s in args.subscribers:
                    for mode in args.modes:
                        try:
                            results['points'].append(
                                run_point(args, broker, pool, publishers, mode, s, prefix))
                        except Exception as exc:
                            import traceback
                            log(f'{broker.label} {mode} S={s}: FAILED {exc!r}\n{traceback.format_exc()}')
                            results['points'].append({'broker': kind, 'mode': mode,
                                                      'subscribers': s, 'error': repr(exc)})
                            try:
                                publishers.set(0, 0)
                                pool.close()
                            except Exception:
                                pass
            finally:
                if pool is not None:
                    pool.stop()
                if publishers is not None:
                    publishers.stop()
                broker.stop()
    except KeyboardInterrupt:
        log('interrupted: writing what was measured')
        results['interrupted'] = True
    finally:
        results['elapsed_seconds'] = round(time.monotonic() - began, 1)
        os.makedirs(args.out_dir, exist_ok=True)
        paths = report.write_all(results, args.out_dir)
    with open(paths['md']) as f:
        print(f.read())
    log(f'done in {results["elapsed_seconds"]:.0f} s: ' + ', '.join(paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
