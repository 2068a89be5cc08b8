"""Cluster benchmark controller: ``python -m benchmarks.cluster.run [--quick]``.

For each broker (Redis, RabbitMQ, each started by ``tests/brokers.py`` on
loopback):

0. *Wire check*: one heartbeat from ``publisher.py`` is read back from the
   broker and compared with a real Celery 5.7 worker's capture
   (``/work/shared/wire`` or ``tests/data/wire``).
1. *Cluster sizes*: one worker of each kind (``stock``: Celery's Gossip;
   ``fast``: ``gossip_fast.install(app)``, receive path ``auto``;
   ``classic``: the same with ``GOSSIP_FAST_RECEIVE=classic``, run only when
   a fast reader exists for the broker, since ``auto`` is ``classic``
   otherwise) run side by side, ``celery worker --pool solo`` (``--pool``: another pool), following
   the same stream, for N = 0 (idle), 10, 50, 100, 500, 2,000 and 10,000
   simulated workers, in that order (one heartbeat each every 2 s: N/2
   heartbeats/s).  For each: the total CPU of the worker's main process
   (:mod:`.cpu`: per-thread nanoseconds from /proc on Linux, leaving out
   the benchmark's own threads) over back-to-back windows after a warm-up
   (longer windows for N <= 100, where a worker spends a few ms a second),
   heartbeats applied (the worker's own counters, see ``app.py``), backlog
   at the broker (RabbitMQ queue depth, Redis client output buffer), then a
   ``bench_stats`` / ``gossip_stats`` remote-control cross-check and, for
   some sizes, the publish-to-applied latency of the heartbeats
   (:mod:`.latency`) in a window of its own.
2. *Highest sustainable rate*: each kind alone, the rate doubled from
   ``--ramp-start`` until the worker falls behind, then bisected.  A step is
   followed when the worker applies >= 95% of what was published, its
   backlog stays small, nothing is shed and its CPU stays under 95% of a
   core.

Everything is written to ``<out-dir>/cluster-benchmark.{json,md,png}``
(``docs/`` by default; ``--quick`` writes to a temporary folder unless
``--out-dir`` is given) and the table is printed.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.cluster import report  # noqa: E402
from benchmarks.cluster.cpu import ProcessCPU, delta as cpu_delta  # noqa: E402
from benchmarks.cluster.latency import PERIOD as LATENCY_PERIOD, summarize  # noqa: E402
from benchmarks.cluster.publisher import sim_hostname  # noqa: E402
from tests.brokers import RabbitMQServer, RedisServer, stop_process_group  # noqa: E402

FREQ = 2.0                      # heartbeat interval of every simulated worker (s)
FOLLOW_RATIO = 0.95             # applied / published, to count as following
CPU_LIMIT = 95.0                # % of one core, above which a worker is saturated
BACKLOG_SECONDS = 0.25          # backlog allowed at the end of a window (s of stream)
LOOP_STALL = 3.0                # s without the worker's 1 s timer running: stalled
SMALL_SIZE = 100                # sizes up to this (idle included) get the long windows;
                                # the workers' 1 s liveness timer is off for them
LATENCY_TRACK = 200             # simulated peers whose heartbeats the latency window samples
LATENCY_SAMPLES = 200           # a latency window lasts long enough for about this many,
LATENCY_SECONDS = (10.0, 40.0)  # within these bounds (s)
LATENCY_SLACK_MS = 10.0         # gossip_fast's p99 must stay within max_delay + this
PUBLISH_RATIO = 0.97            # achieved / asked, below which the publisher is the limit
REDIS_ENVELOPE_BYTES = 620      # a heartbeat's PUBLISH as Redis buffers it (approx.)
WORKER_START_TIMEOUT = 60.0
KINDS = ('stock', 'fast', 'classic')
WIRE_DIRS = ('/work/shared/wire', os.path.join(ROOT, 'tests', 'data', 'wire'))


def log(*args):
    stamp = time.strftime('%H:%M:%S')
    print(f'[{stamp}]', *args, file=sys.stderr, flush=True)


# -- settings ---------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog='cluster-bench', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true',
                   help='short smoke run (~3 min): idle, 10 and 2,000 workers, short windows, '
                        'latency at 10 and 2,000, a two-step rate ramp')
    p.add_argument('--brokers', default='redis,amqp',
                   help='comma list of redis, amqp (default: both)')
    p.add_argument('--sizes', help='comma list of simulated cluster sizes, 0 for idle '
                                   '(default 0,10,50,100,500,2000,10000; quick 0,10,2000)')
    p.add_argument('--kinds', help='comma list of stock, fast, classic (default: stock, '
                                   'fast, and classic where a fast reader exists)')
    p.add_argument('--warmup', type=float, help='seconds before each size\'s windows (default 8; quick 3)')
    p.add_argument('--window', type=float, help=f'seconds of each window for sizes above {SMALL_SIZE} '
                                                '(default 8; quick 5)')
    p.add_argument('--small-window', type=float,
                   help=f'seconds of each window for sizes up to {SMALL_SIZE}, idle included '
                        '(default 20, so 60 s with 3 repeats; quick 10)')
    p.add_argument('--repeats', type=int, help='windows per cluster size, back to back; the table '
                                               'pools them and shows their spread (default 3; quick 1)')
    p.add_argument('--latency-sizes', help='comma list of the sizes whose publish-to-applied '
                                           'latency is measured (default 10,100,2000; those '
                                           'that are in --sizes); "none" for none')
    p.add_argument('--latency-window', type=float,
                   help=f'seconds of each latency window (default: long enough for about '
                        f'{LATENCY_SAMPLES} heartbeats of the {LATENCY_TRACK} tracked peers, '
                        f'{LATENCY_SECONDS[0]:.0f}-{LATENCY_SECONDS[1]:.0f} s; quick 8)')
    p.add_argument('--max-delay', type=float,
                   help='GOSSIP_FAST_MAX_DELAY for the gossip_fast workers (default: gossip_fast\'s '
                        'own default, or the environment\'s)')
    p.add_argument('--no-max-rate', action='store_true', help='skip the highest-rate search')
    p.add_argument('--pool', default='solo', choices=('solo', 'prefork', 'threads', 'gevent', 'eventlet'),
                   help="the workers' --pool (default solo; the others with --concurrency 1: "
                        'gevent and eventlet have no event loop hub, so gossip_fast\'s reader runs '
                        'in a greenlet there)')
    p.add_argument('--ramp-kinds', help='comma list of the kinds whose highest rate is searched '
                                        '(default stock,fast: classic\'s ramp would add ~4 min)')
    p.add_argument('--ramp-start', type=float,
                   help='first rate of the ramp, heartbeats/s (default 1000; quick 2500)')
    p.add_argument('--ramp-steps', type=int, help='at most this many steps per worker (default 9; quick 2)')
    p.add_argument('--ramp-window', type=float, help='seconds of each ramp window (default 8; quick 4)')
    p.add_argument('--ramp-warmup', type=float, help='seconds before each ramp window (default 4; quick 3)')
    p.add_argument('--bisect', type=int, help='bisection steps after the first failure (default 2; quick 0)')
    p.add_argument('--publishers', type=int, default=0,
                   help='publisher processes (default 0: automatic, one per 20,000 '
                        'heartbeats/s in raw mode, per 2,500 in kombu mode, at most 3)')
    p.add_argument('--publisher', choices=('raw', 'kombu'), default='raw',
                   help='raw (default): the same bytes as kombu, written straight to the '
                        'socket (checked byte for byte against kombu before each run); '
                        'kombu: every message through kombu\'s Producer (costs the machine '
                        '80-180 us of CPU per message)')
    p.add_argument('--ramp-mode', choices=('alone', 'together'),
                   help='alone (default): each worker kind gets the stream to itself; '
                        'together (quick default): the size phase\'s workers side by side')
    p.add_argument('--out-dir', help='where to write cluster-benchmark.{json,md,png} '
                                     '(default: docs/; quick: a temporary folder)')
    p.add_argument('--keep-logs', action='store_true', help='keep the workers\' log folder')
    args = p.parse_args(argv)
    quick = args.quick

    def default(value, full, short):
        return value if value is not None else (short if quick else full)

    args.brokers = [b.strip() for b in args.brokers.split(',') if b.strip()]
    for broker in args.brokers:
        if broker not in ('redis', 'amqp'):
            p.error(f'unknown broker {broker!r}')
    # ascending: a cluster only grows, so no peer of a bigger one is lost
    args.sizes = sorted({int(s) for s in args.sizes.split(',')} if args.sizes
                        else ([0, 10, 2000] if quick else [0, 10, 50, 100, 500, 2000, 10000]))
    args.kinds = _kinds(p, args.kinds)
    args.ramp_kinds = _kinds(p, args.ramp_kinds) or ['stock', 'fast']
    if args.latency_sizes == 'none':
        args.latency_sizes = []
    else:
        wanted = ({int(s) for s in args.latency_sizes.split(',')} if args.latency_sizes
                  else {10, 100, 2000})
        args.latency_sizes = sorted(wanted & set(args.sizes) - {0})
    args.warmup = default(args.warmup, 8.0, 3.0)
    args.window = default(args.window, 8.0, 5.0)
    args.small_window = default(args.small_window, 20.0, 10.0)
    args.latency_window = default(args.latency_window, None, 8.0)
    args.repeats = max(1, default(args.repeats, 3, 1))
    args.ramp_start = default(args.ramp_start, 1000.0, 2500.0)
    args.ramp_steps = default(args.ramp_steps, 9, 2)
    args.ramp_window = default(args.ramp_window, 8.0, 4.0)
    args.ramp_warmup = default(args.ramp_warmup, 4.0, 3.0)
    args.bisect = default(args.bisect, 2, 0)
    args.ramp_mode = default(args.ramp_mode, 'alone', 'together')
    args.retry = not quick
    if args.out_dir is None:
        args.out_dir = (os.path.join(tempfile.gettempdir(), 'gossip-fast-cluster-bench-quick')
                        if quick else os.path.join(ROOT, 'docs'))
    return args


def _kinds(parser, text):
    if not text:
        return None
    kinds = [k.strip() for k in text.split(',') if k.strip()]
    for kind in kinds:
        if kind not in KINDS:
            parser.error(f'unknown kind {kind!r}')
    return kinds


def fast_reader_available(broker):
    """Whether gossip_fast has a fast receive path for *broker* here."""
    module = 'redis' if broker == 'redis' else 'amqp'
    try:
        __import__(f'gossip_fast.fastpath.{module}')
    except ImportError:
        return False
    return True


# -- processes ----------------------------------------------------------------------

class Worker:
    """One ``celery worker --pool POOL`` (solo unless told) of the bench app."""

    def __init__(self, kind, broker_url, folder, tag, max_delay=None, wrapper=(), pool='solo'):
        self.kind = kind
        self.pool = pool
        self.wrapper = list(wrapper)  # a command the worker runs under (e.g. valgrind)
        self.broker_url = broker_url
        self.folder = folder
        self.max_delay = max_delay
        self.name = f'bench-{kind}-{tag}'
        self.hostname = f'{self.name}@{socket.gethostname()}'
        self.stats_path = os.path.join(folder, f'{self.name}.stats.json')
        self.control_path = f'{self.stats_path}.control'  # read by app.py's BenchStep
        self.log_path = os.path.join(folder, f'{self.name}.log')
        self.proc = None
        self.ps = None
        self.cpu_reader = None
        self._control = {}

    def start(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(('BENCH_', 'GOSSIP_FAST_RECEIVE', 'GOSSIP_FAST_NO_EXT'))}
        env.update(
            PYTHONPATH=os.pathsep.join([ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]),
            PYTHONUNBUFFERED='1',
            BENCH_BROKER_URL=self.broker_url,
            BENCH_GOSSIP='stock' if self.kind == 'stock' else 'fast',
            BENCH_STATS_FILE=self.stats_path,
        )
        if self.kind == 'classic':
            env['GOSSIP_FAST_RECEIVE'] = 'classic'
        elif self.kind == 'fast':
            env['GOSSIP_FAST_RECEIVE'] = 'auto'
        if self.kind != 'stock' and self.max_delay is not None:
            env['GOSSIP_FAST_MAX_DELAY'] = repr(self.max_delay)
        argv = self.wrapper + [sys.executable, '-m', 'celery', '-A', 'benchmarks.cluster.app', 'worker',
                '--pool', self.pool, '-n', f'{self.name}@%h', '--loglevel', 'WARNING']
        if self.pool in ('prefork', 'threads', 'gevent', 'eventlet'):
            argv[-2:-2] = ['--concurrency', '1']
        with open(self.log_path, 'ab') as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        self.cpu_reader = ProcessCPU(self.proc.pid)
        return self

    def control(self, **changes):
        """Tell the worker's BenchStep (``loop_tick``, ``latency``): it reads
        the file within a second."""
        self._control.update(changes)
        tmp = f'{self.control_path}.tmp'
        with open(tmp, 'w') as f:
            json.dump(self._control, f)
        os.replace(tmp, self.control_path)

    def latency_result(self, request_id):
        try:
            with open(f'{self.stats_path}.latency-{request_id}.json') as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def stats(self):
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def check(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f'worker {self.name} exited ({self.proc.returncode}); log:\n'
                               + tail(self.log_path))

    def wait_ready(self, timeout=WORKER_START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            stats = self.stats()
            if stats and stats.get('pid') == self.proc.pid:
                return stats
            time.sleep(0.2)
        raise RuntimeError(f'worker {self.name} not ready after {timeout:.0f} s; log:\n'
                           + tail(self.log_path))

    def cpu(self):
        """``{thread id: ns on CPU}`` of the main process (:mod:`.cpu`)."""
        return self.cpu_reader.read()

    def connections(self):
        try:
            return self.ps.net_connections('tcp')
        except psutil.Error:
            return []

    def stop(self):
        if self.proc is None:
            return
        stop_process_group(self.proc, 15)


def tail(path, lines=40):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


class PublisherProcess:
    def __init__(self, url, prefix, mode):
        env = dict(os.environ)
        env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'benchmarks.cluster.publisher', url, prefix, mode],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        hello = self._read()
        if not hello.get('ready'):
            raise RuntimeError(f'publisher did not start: {hello!r}')

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f'publisher exited ({self.proc.poll()})')
        return json.loads(line)

    def call(self, **cmd):
        self.proc.stdin.write((json.dumps(cmd) + '\n').encode())
        self.proc.stdin.flush()
        return self._read()

    def stop(self):
        try:
            self.proc.stdin.write(b'{"cmd": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)


class Publishers:
    """K publisher processes sharing the simulated cluster (worker i goes to i % K)."""

    PER_PROCESS = {'raw': 20000.0, 'kombu': 2500.0}  # heartbeats/s for one process
    MAX_AUTO = 3

    def __init__(self, url, prefix, fixed=0, mode='raw'):
        self.url = url
        self.prefix = prefix
        self.fixed = fixed
        self.mode = mode
        self.active = 0
        self.procs: list[PublisherProcess] = []
        self.rate = 0.0
        self.size = 0

    def count_for(self, rate):
        if self.fixed:
            return self.fixed
        return max(1, min(self.MAX_AUTO, math.ceil(rate / self.PER_PROCESS[self.mode])))

    def set(self, rate, size):
        """Send *rate* heartbeats/s in total for *size* simulated workers."""
        if not rate and not self.procs:
            return
        k = self.count_for(rate) if rate else len(self.procs)
        while len(self.procs) < k:
            self.procs.append(PublisherProcess(self.url, self.prefix, self.mode))
        for index, proc in enumerate(self.procs):
            if index < k and rate:
                proc.call(cmd='rate', rate=rate / k, size=size, offset=index, stride=k)
            else:
                proc.call(cmd='rate', rate=0, size=0)
        self.rate, self.size = rate, size
        self.active = k if rate else 0

    def report(self):
        reports = [p.call(cmd='report') for p in self.procs]
        return {'sent': sum(r['sent'] for r in reports),
                'cpu': sum(r['cpu'] for r in reports),
                'behind': sum(r['behind'] for r in reports),
                'time': time.time(), 'processes': len(self.procs)}

    def stop(self):
        for proc in self.procs:
            proc.stop()
        self.procs = []


def process_tree_cpu(pids):
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root] + root.children(recursive=True):
                try:
                    t = proc.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return total


# -- broker probes ------------------------------------------------------------------

class Broker:
    """A started broker, with a backlog probe for a worker's gossip queue."""

    def __init__(self, kind):
        self.kind = kind
        self.server = RedisServer(use_env=False) if kind == 'redis' else RabbitMQServer(use_env=False)
        self._client = None
        self._amqp = None
        self._channel = None

    @property
    def label(self):
        return 'Redis' if self.kind == 'redis' else 'RabbitMQ'

    def start(self):
        began = time.monotonic()
        self.server.start()
        log(f'{self.label} started at {self.server.url} in {time.monotonic() - began:.1f} s')
        return self

    @property
    def url(self):
        return self.server.url

    def cpu(self):
        return process_tree_cpu([p.pid for p in self.server._procs])

    def backlog(self, worker, stats):
        """Messages (RabbitMQ) or bytes (Redis) waiting for *worker*."""
        try:
            if self.kind == 'redis':
                return self._redis_backlog(worker)
            return self._amqp_backlog(stats.get('queue') if stats else None)
        except Exception as exc:  # a probe must never stop the benchmark
            return {'error': repr(exc)}

    def _redis_backlog(self, worker):
        import redis
        if self._client is None:
            self._client = redis.Redis.from_url(self.url)
        port = self.server.port
        mine = {c.laddr.port for c in worker.connections()
                if c.raddr and c.raddr.port == port}
        omem = 0
        subscribers = 0
        for client in self._client.client_list():
            addr = client.get('addr', '')
            if int(addr.rsplit(':', 1)[-1] or 0) in mine:
                if int(client.get('sub', 0)) or int(client.get('psub', 0)):
                    subscribers += 1
                omem += int(client.get('omem', 0))
        return {'omem': omem, 'subscribers': subscribers}

    def _amqp_backlog(self, queue):
        if not queue:
            return {'depth': None}
        import amqp
        for attempt in range(2):
            try:
                if self._amqp is None:
                    from urllib.parse import urlsplit
                    parts = urlsplit(self.url)
                    self._amqp = amqp.Connection(f'{parts.hostname}:{parts.port}',
                                                 userid='guest', password='guest')
                    self._amqp.connect()
                if self._channel is None or not self._channel.is_open:
                    self._channel = self._amqp.channel()
                _, depth, consumers = self._channel.queue_declare(queue, passive=True)
                return {'depth': depth, 'consumers': consumers}
            except amqp.exceptions.NotFound:
                self._channel = None
                return {'depth': None, 'missing': True}
            except Exception:
                self._close_amqp()
                if attempt:
                    raise

    def _close_amqp(self):
        try:
            if self._amqp is not None:
                self._amqp.close()
        except Exception:
            pass
        self._amqp = self._channel = None

    def stop(self):
        self._close_amqp()
        if self._client is not None:
            self._client.close()
        self.server.stop()


def backlog_seconds(backlog, rate):
    """The backlog in seconds of stream (None if unknown)."""
    if not rate or not isinstance(backlog, dict):
        return None
    if backlog.get('depth') is not None:
        return backlog['depth'] / rate
    if backlog.get('omem') is not None:
        return backlog['omem'] / (rate * REDIS_ENVELOPE_BYTES)
    return None


# -- wire check ----------------------------------------------------------------------

def _wire_sample(broker_kind, routing_key='worker.heartbeat'):
    name = 'redis-events.jsonl' if broker_kind == 'redis' else 'amqp-events.jsonl'
    for folder in WIRE_DIRS:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    record = json.loads(line)
                    key = (record['channel'].rsplit('/', 1)[-1] if broker_kind == 'redis'
                           else record['routing_key'])
                    if key == routing_key:
                        return path, record
    return None, None


def check_wire(broker, mode):
    """Publish one heartbeat with publisher.py and compare it with the capture
    (and, for the raw publisher, its bytes with kombu's)."""
    from benchmarks.cluster.publisher import make_publisher
    path, reference = _wire_sample(broker.kind)
    if reference is None:
        return {'ok': None, 'detail': 'no capture found in ' + ', '.join(WIRE_DIRS)}
    pub = make_publisher(broker.url, 'wirecheck', mode)
    problems = list(pub.check()) if mode == 'raw' else []
    pub.set_rate(1, 1)
    try:
        if broker.kind == 'redis':
            import redis
            client = redis.Redis.from_url(broker.url)
            pubsub = client.pubsub()
            pubsub.psubscribe('*celeryev*')
            deadline = time.monotonic() + 5
            while pubsub.get_message(timeout=0.5) is None and time.monotonic() < deadline:
                pass  # the psubscribe confirmation
            pub.send(1)
            pub.flush()
            message = None
            while message is None and time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.5)
            pubsub.close()
            client.close()
            if message is None:
                return {'ok': False, 'detail': 'nothing received on Redis pub/sub'}
            channel = message['channel'].decode()
            ref_channel = reference['channel']
            db = broker.url.rsplit('/', 1)[-1] or '0'
            if channel != ref_channel.replace(ref_channel.split('.', 1)[0], f'/{db}', 1):
                problems.append(f'channel {channel!r} vs captured {ref_channel!r}')
            got, ref = json.loads(message['data']), json.loads(reference['data'])
            compare_envelope(got, ref, problems)
            got_body = json.loads(base64.b64decode(got['body']))
            ref_body = json.loads(base64.b64decode(ref['body']))
        else:
            from urllib.parse import urlsplit

            import amqp
            parts = urlsplit(broker.url)
            conn = amqp.Connection(f'{parts.hostname}:{parts.port}', userid='guest', password='guest')
            conn.connect()
            ch = conn.channel()
            queue, _, _ = ch.queue_declare('', exclusive=True, auto_delete=True)
            ch.queue_bind(queue, 'celeryev', 'worker.#')
            pub.send(1)
            pub.flush()
            message = None
            deadline = time.monotonic() + 5
            while message is None and time.monotonic() < deadline:
                message = ch.basic_get(queue, no_ack=True)
                if message is None:
                    time.sleep(0.05)
            if message is None:
                conn.close()
                return {'ok': False, 'detail': 'nothing received on RabbitMQ'}
            props = {k: v for k, v in message.properties.items()}
            info = message.delivery_info
            conn.close()
            for key in ('routing_key', 'exchange'):
                if info.get(key) != reference[key]:
                    problems.append(f'{key} {info.get(key)!r} vs captured {reference[key]!r}')
            ref_props = reference['properties']
            if sorted(props) != sorted(ref_props):
                problems.append(f'properties {sorted(props)} vs captured {sorted(ref_props)}')
            for key, value in ref_props.items():
                if key == 'application_headers':
                    if sorted(props.get(key, {})) != sorted(value):
                        problems.append(f'headers {props.get(key)!r} vs captured {value!r}')
                elif props.get(key) != value:
                    problems.append(f'{key} {props.get(key)!r} vs captured {value!r}')
            got_body = json.loads(message.body)
            ref_body = json.loads(reference['body'])
        if list(got_body) != list(ref_body):
            problems.append(f'body fields {list(got_body)} vs captured {list(ref_body)}')
        for key, value in ref_body.items():
            if type(got_body.get(key)) is not type(value):
                problems.append(f'body field {key}: {type(got_body.get(key)).__name__} '
                                f'vs captured {type(value).__name__}')
    finally:
        pub.close()
    detail = f'matches {path}'
    if mode == 'raw':
        detail += '; raw publisher bytes identical to kombu\'s'
    return {'ok': not problems, 'detail': '; '.join(problems) or detail}


def compare_envelope(got, ref, problems, where='envelope'):
    if list(got) != list(ref):
        problems.append(f'{where} keys {list(got)} vs captured {list(ref)}')
    for key, value in ref.items():
        if key in ('body', 'delivery_tag'):
            continue
        if isinstance(value, dict):
            if key == 'headers':
                if sorted(got.get(key, {})) != sorted(value):
                    problems.append(f'headers {got.get(key)!r} vs captured {value!r}')
            else:
                compare_envelope(got.get(key, {}), value, problems, f'{where}.{key}')
        elif got.get(key) != value:
            problems.append(f'{where}.{key} {got.get(key)!r} vs captured {value!r}')


# -- measurement -------------------------------------------------------------------------

def snapshot(workers, broker, publishers):
    snap = {'time': time.time(), 'machine': psutil.cpu_times(), 'broker_cpu': broker.cpu(),
            'pub': publishers.report() if publishers.procs else None, 'workers': {}}
    for w in workers:
        w.check()
        stats = w.stats() or {}
        snap['workers'][w.kind] = {'cpu': w.cpu(), 'stats': stats}
    return snap


def machine_busy(t0, t1):
    def busy(t):
        return t.user + t.nice + t.system + getattr(t, 'irq', 0) + getattr(t, 'softirq', 0) + getattr(t, 'steal', 0)

    total = sum(t1) - sum(t0)  # all cores together: % of the whole machine
    return 100.0 * (busy(t1) - busy(t0)) / total if total > 0 else None


def worker_cpu(before, after):
    """CPU seconds of the worker's own threads between two snapshots, of
    the benchmark's threads in it (``bench_tids``: its stats writer, a
    latency sampler), and how many threads ended in between."""
    bench = {str(t) for snap in (before, after) for t in snap['stats'].get('bench_tids') or ()}

    def split(threads):
        own = {t: v for t, v in threads.items() if t not in bench}
        return own, {t: v for t, v in threads.items() if t in bench}

    own0, bench0 = split(before['cpu'])
    own1, bench1 = split(after['cpu'])
    cpu, ended = cpu_delta(own0, own1)
    bench_cpu, bench_ended = cpu_delta(bench0, bench1)
    return cpu, bench_cpu, ended + bench_ended


def measure(workers, broker, publishers, seconds, target_rate):
    """CPU and progress of *workers* over *seconds*; returns per-kind results."""
    before = snapshot(workers, broker, publishers)
    backlog0 = {w.kind: broker.backlog(w, before['workers'][w.kind]['stats']) for w in workers}
    time.sleep(seconds)
    after = snapshot(workers, broker, publishers)
    backlog1 = {w.kind: broker.backlog(w, after['workers'][w.kind]['stats']) for w in workers}
    wall = after['time'] - before['time']
    published = None
    pub_cpu = None
    if before['pub'] and after['pub']:
        published = (after['pub']['sent'] - before['pub']['sent']) / (after['pub']['time'] - before['pub']['time'])
        pub_cpu = 100.0 * (after['pub']['cpu'] - before['pub']['cpu']) / wall
    window = {
        'seconds': round(wall, 2),
        'target_rate': target_rate,
        'published_rate': published,
        'publisher_cpu_pct': pub_cpu,
        'publisher_processes': after['pub']['processes'] if after['pub'] else 0,
        'publisher_behind': after['pub']['behind'] if after['pub'] else 0,
        'broker_cpu_pct': 100.0 * (after['broker_cpu'] - before['broker_cpu']) / wall,
        'machine_busy_pct': machine_busy(before['machine'], after['machine']),
        'loadavg': os.getloadavg()[0],
        'workers': {},
    }
    for w in workers:
        b, a = before['workers'][w.kind], after['workers'][w.kind]
        sb, sa = b['stats'], a['stats']
        cpu, bench_cpu, threads_ended = worker_cpu(b, a)
        stats_dt = sa.get('time', 0) - sb.get('time', 0)
        applied = (sa.get('applied', 0) - sb.get('applied', 0))
        # the counters are written by the worker's timer, once a second: if
        # they were not in this window, its event loop did not get there
        applied_rate = applied / stats_dt if stats_dt > 0.5 * wall else None
        heartbeats = (applied_rate or 0) * wall
        result = {
            'cpu_seconds': cpu,
            'cpu_pct': 100.0 * cpu / wall,
            'bench_cpu_seconds': bench_cpu,   # not in cpu_seconds (psutil: cannot tell)
            'threads_ended': threads_ended,
            'applied_rate': applied_rate,
            'us_per_heartbeat': (1e6 * cpu / heartbeats) if target_rate and heartbeats > 1 else None,
            'follow_ratio': (applied_rate / published) if published and applied_rate is not None else None,
            'stats_age_end': after['time'] - sa.get('time', 0),
            'loop_age_end': sa.get('loop_age'),
            'joins_per_s': (sa.get('joins', 0) - sb.get('joins', 0)) / stats_dt if stats_dt > 0 else 0,
            'lost': sa.get('lost', 0) - sb.get('lost', 0),
            'shed': (sa.get('shed') or 0) - (sb.get('shed') or 0),
            'tracked_workers': sa.get('tracked_workers'),
            'receive_path': sa.get('receive_path'),
            'gossip_class': sa.get('gossip_class'),
            'backlog_start': backlog0[w.kind],
            'backlog_end': backlog1[w.kind],
            'backlog_end_s': backlog_seconds(backlog1[w.kind], published or target_rate),
            'backlog_start_s': backlog_seconds(backlog0[w.kind], published or target_rate),
            # gossip_fast's reader: held events at the end, connection errors
            # and reconnects in the window, longest drain so far
            'receive_pending': sa.get('receive_pending'),
            'receive_errors': (sa.get('receive_errors') or 0) - (sb.get('receive_errors') or 0),
            'receive_reconnects': ((sa.get('receive_reconnects') or 0)
                                   - (sb.get('receive_reconnects') or 0)),
            'longest_drain_ms': sa.get('receive_longest_drain_ms'),
        }
        result['keeps_up'], result['reason'] = judge(result, published)
        window['workers'][w.kind] = result
    return window


def judge(r, published):
    """Whether the worker followed the stream in this window, and if not why."""
    if not published:
        return None, ''
    reasons = []
    if r['applied_rate'] is None:
        reasons.append(f'its counters were not updated in the window '
                       f'(event loop stalled {r["stats_age_end"]:.0f} s)')
    if r['follow_ratio'] is not None and r['follow_ratio'] < FOLLOW_RATIO:
        reasons.append(f'applied {100 * r["follow_ratio"]:.0f}% of published')
    if r['backlog_end_s'] is not None and r['backlog_end_s'] > BACKLOG_SECONDS and (
            r['backlog_start_s'] is None or r['backlog_end_s'] >= r['backlog_start_s']):
        reasons.append(f'backlog {r["backlog_end_s"]:.1f} s of stream')
    if r['shed']:
        reasons.append(f'shed {r["shed"]}')
    if r['lost']:  # every simulated peer beats on time: a loss is a false one
        reasons.append(f'declared {r["lost"]} live peers lost')
    if r.get('loop_age_end') is not None and r['loop_age_end'] > LOOP_STALL:
        reasons.append(f'event loop stalled {r["loop_age_end"]:.0f} s (no timers ran: '
                       f'not even its own heartbeat)')
    if r['cpu_pct'] >= CPU_LIMIT:
        reasons.append(f'CPU {r["cpu_pct"]:.0f}% of a core')
    return not reasons, '; '.join(reasons)


def control_check(broker_url, workers, timeout=3.0):
    """``inspect bench_stats`` (all) and ``gossip_stats`` (gossip_fast) over the broker."""
    from celery import Celery
    client = Celery('cluster-bench-client', broker=broker_url, set_as_current=False)
    client.conf.update(accept_content=['json'], broker_connection_timeout=3,
                       broker_connection_retry_on_startup=True)
    out = {}
    try:
        names = [w.hostname for w in workers]
        for command in ('bench_stats', 'gossip_stats'):
            dest = names if command == 'bench_stats' else [w.hostname for w in workers if w.kind != 'stock']
            if not dest:
                continue
            replies = client.control.broadcast(command, reply=True, destination=dest,
                                               timeout=timeout, limit=len(dest)) or []
            for reply in replies:
                for host, value in reply.items():
                    out.setdefault(host, {})[command] = value
    except Exception as exc:
        out['error'] = repr(exc)
    finally:
        client.close()
    summary = {}
    for w in workers:
        got = out.get(w.hostname, {})
        bench = got.get('bench_stats') or {}
        gossip = got.get('gossip_stats') or {}
        summary[w.kind] = {
            'answered': bool(got),
            'applied': bench.get('applied'),
            'tracked_workers': bench.get('tracked_workers'),
            'joins': bench.get('joins'),
            'gossip_stats_events_received': (gossip.get('events') or {}).get('received'),
            'gossip_stats_tracked_workers': gossip.get('tracked_workers'),
            'gossip_stats_receive_path': (gossip.get('receive') or {}).get('path'),
            'max_delay': (gossip.get('receive') or {}).get('max_delay'),
            'implementation': gossip.get('implementation'),
        }
    return summary


# -- phases ----------------------------------------------------------------------------------

def start_workers(kinds, broker, folder, tag, max_delay=None, pool='solo'):
    workers = [Worker(kind, broker.url, folder, tag, max_delay, pool=pool).start() for kind in kinds]
    try:
        for w in workers:
            w.wait_ready()
    except BaseException:
        for w in workers:
            w.stop()
        raise
    return workers


def wait_applied(workers, seconds=10.0):
    """Until every worker's applied counter moved (it follows the stream)."""
    first = {w.kind: (w.stats() or {}).get('applied', 0) for w in workers}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all((w.stats() or {}).get('applied', 0) > first[w.kind] for w in workers):
            return True
        for w in workers:
            w.check()
        time.sleep(0.25)
    return False


def run_sizes(args, broker, workers, publishers, out):
    """Each cluster size in turn (idle first), all *workers* side by side."""
    out['sizes'] = []
    for size in args.sizes:
        out['sizes'].append(run_size(args, broker, workers, publishers, size))


def run_size(args, broker, workers, publishers, size):
    """CPU windows for *size* simulated workers, then the remote-control
    check and, for the latency sizes, a latency window of its own (its
    sampling thread must not weigh on the CPU windows)."""
    rate = size / FREQ
    small = size <= SMALL_SIZE
    seconds = args.small_window if small else args.window
    what = f'{size} simulated workers ({rate:.0f} heartbeats/s)' if size else 'idle'
    for w in workers:  # no liveness timer where nobody falls behind (app.py)
        w.control(loop_tick=not small)
    publishers.set(rate, size)
    log(f'{broker.label}: {what}: warm-up {args.warmup:.0f} s, '
        f'{args.repeats} x {seconds:.0f} s windows')
    if size:
        wait_applied(workers)
    time.sleep(args.warmup)
    runs = []
    for _ in range(args.repeats):
        runs.append(measure(workers, broker, publishers, seconds, rate))
        if args.repeats > 1:
            log_window(broker.label, f'N={size} run {len(runs)}', runs[-1])
    window = combine(runs)
    window.update(size=size, loop_tick=not small)
    window['control'] = control_check(broker.url, workers)
    log_window(broker.label, f'N={size}', window)
    if size in args.latency_sizes:
        window['latency'] = measure_latency(args, broker, workers, publishers.prefix, size,
                                            window['control'])
    return window


def latency_seconds(args, size):
    """A latency window: long enough for ~LATENCY_SAMPLES heartbeats of
    the tracked peers, within LATENCY_SECONDS (or --latency-window)."""
    if args.latency_window:
        return args.latency_window
    per_second = min(size, LATENCY_TRACK) / FREQ
    low, high = LATENCY_SECONDS
    return min(high, max(low, LATENCY_SAMPLES / per_second))


def measure_latency(args, broker, workers, prefix, size, control):
    """Publish-to-applied latency in every worker, sampled over the same
    seconds (``latency.py``); gossip_fast's p99 is checked against its
    ``max_delay`` (from its ``gossip_stats``) + LATENCY_SLACK_MS."""
    seconds = latency_seconds(args, size)
    step = max(1, size // LATENCY_TRACK)
    hosts = [sim_hostname(prefix, i) for i in range(0, size, step)][:LATENCY_TRACK]
    request = {'id': uuid.uuid4().hex[:8], 'seconds': seconds, 'hosts': hosts,
               'period': LATENCY_PERIOD}
    log(f'{broker.label}: N={size}: latency window {seconds:.0f} s ({len(hosts)} peers tracked)')
    for w in workers:
        w.control(latency=request)
    found = wait_latency_results(workers, request['id'], seconds)
    out = {'seconds': seconds, 'tracked': len(hosts), 'period': LATENCY_PERIOD,
           'workers': {w.kind: latency_summary(found.get(w.kind), control.get(w.kind) or {})
                       for w in workers}}
    log(f'{broker.label}: N={size} latency: ' + '; '.join(
        f'{k}: p50 {r["p50_ms"]:.1f} ms, p99 {r["p99_ms"]:.1f} ms ({r["samples"]} samples)'
        if r.get('p50_ms') is not None else f'{k}: {r.get("error", "no samples")}'
        for k, r in out['workers'].items()))
    return out


def wait_latency_results(workers, request_id, seconds):
    """``{kind: the sampler's result}`` once every worker wrote it (their
    BenchStep sees a request within a second of it)."""
    deadline = time.monotonic() + seconds + 15.0
    found = {}
    while len(found) < len(workers) and time.monotonic() < deadline:
        time.sleep(0.5)
        for w in workers:
            w.check()
            if w.kind not in found:
                got = w.latency_result(request_id)
                if got is not None:
                    found[w.kind] = got
    return found


def latency_summary(result, control):
    """Percentiles of one worker's samples; for a batched receive path
    (``control``: its remote-control check) the bound and whether p99 is
    within it."""
    if result is None:
        return {'error': 'no result in time'}
    r = summarize(result['samples_ms'])
    r['hosts_seen'] = result['hosts_seen']
    max_delay = control.get('max_delay')
    if max_delay is not None and control.get('gossip_stats_receive_path') not in (None, 'kombu'):
        r['max_delay'] = max_delay
        r['bound_ms'] = 1e3 * max_delay + LATENCY_SLACK_MS
        r['within_bound'] = r['p99_ms'] is not None and r['p99_ms'] <= r['bound_ms']
    return r


def combine(runs):
    """One window from consecutive ones: pooled CPU and heartbeats, the
    per-run values kept (``runs``) to show the spread."""
    if len(runs) == 1:
        return runs[0]
    wall = sum(r['seconds'] for r in runs)

    def mean(key):
        # weighted by each window's length, over the windows that have a value
        known = [r for r in runs if r[key] is not None]
        seconds = sum(r['seconds'] for r in known)
        return sum(r[key] * r['seconds'] for r in known) / seconds if known else None

    window = {k: runs[-1][k] for k in ('target_rate', 'publisher_processes', 'publisher_behind')}
    window.update(seconds=round(wall, 2), repeats=len(runs), loadavg=runs[-1]['loadavg'],
                  published_rate=mean('published_rate'), publisher_cpu_pct=mean('publisher_cpu_pct'),
                  broker_cpu_pct=mean('broker_cpu_pct'), machine_busy_pct=mean('machine_busy_pct'),
                  workers={})
    for kind in runs[0]['workers']:
        rs = [r['workers'][kind] for r in runs]
        cpu = sum(x['cpu_seconds'] for x in rs)
        rates = [x['applied_rate'] for x in rs]
        applied = (sum(rate * r['seconds'] for rate, r in zip(rates, runs, strict=True)) / wall
                   if None not in rates else None)
        heartbeats = (applied or 0) * wall
        w = dict(rs[-1])  # backlog at the end, receive path, tracked workers, ...
        w.update(
            cpu_seconds=cpu,
            cpu_pct=100.0 * cpu / wall,
            bench_cpu_seconds=sum(x['bench_cpu_seconds'] for x in rs),
            threads_ended=sum(x['threads_ended'] for x in rs),
            applied_rate=applied,
            us_per_heartbeat=(1e6 * cpu / heartbeats) if window['target_rate'] and heartbeats > 1 else None,
            follow_ratio=(applied / window['published_rate']
                          if applied is not None and window['published_rate'] else None),
            joins_per_s=sum(x['joins_per_s'] * r['seconds'] for x, r in zip(rs, runs, strict=True)) / wall,
            lost=sum(x['lost'] for x in rs),
            shed=sum(x['shed'] for x in rs),
            backlog_start=rs[0]['backlog_start'],
            backlog_start_s=rs[0]['backlog_start_s'],
            runs=[{'us_per_heartbeat': x['us_per_heartbeat'], 'cpu_pct': x['cpu_pct'],
                   'applied_rate': x['applied_rate'], 'keeps_up': x['keeps_up']} for x in rs],
        )
        if any(x['keeps_up'] is None for x in rs):
            w['keeps_up'], w['reason'] = None, ''
        else:
            # the pooled numbers judged as one window; behind if any window was
            pooled_ok, reason = judge(w, window['published_rate'])
            w['keeps_up'] = pooled_ok and all(x['keeps_up'] for x in rs)
            if not w['keeps_up'] and not reason:
                reason = next(x['reason'] for x in rs if not x['keeps_up'])
            w['reason'] = reason
        window['workers'][kind] = w
    return window


def log_window(label, what, window):
    parts = []
    for kind, r in window['workers'].items():
        us = f'{r["us_per_heartbeat"]:.0f} us/hb' if r['us_per_heartbeat'] else '-'
        ok = '' if r['keeps_up'] is None else (' ok' if r['keeps_up'] else f' BEHIND ({r["reason"]})')
        applied = '?' if r['applied_rate'] is None else f'{r["applied_rate"]:.0f}'
        parts.append(f'{kind}: {r["cpu_pct"]:.1f}% {us} applied {applied}/s{ok}')
    pub = window['published_rate']
    pub = f'published {pub:.0f}/s' if pub else 'idle'
    busy = window['machine_busy_pct']
    load = f' | broker {window["broker_cpu_pct"]:.0f}%'
    if window['publisher_cpu_pct'] is not None:
        load += f', publisher {window["publisher_cpu_pct"]:.0f}%'
    if busy is not None:
        load += f', machine {busy:.0f}% busy ({psutil.cpu_count()} cores)'
    log(f'{label} {what}: {pub}; ' + '; '.join(parts) + load)


def ramp_step(args, broker, workers, publishers, rate):
    size = int(rate * FREQ)
    publishers.set(rate, size)
    wait_applied(workers)
    time.sleep(args.ramp_warmup)
    window = measure(workers, broker, publishers, args.ramp_window, rate)
    window['size'] = size
    published = window['published_rate'] or 0
    window['publisher_limited'] = published < PUBLISH_RATIO * rate
    log_window(broker.label, f'ramp {rate:.0f}/s', window)
    return window


def ramp_alone(args, broker, kind, folder, publishers, record):
    """Highest rate that a worker of *kind*, alone on the stream, follows
    (filled into *record* as it goes)."""
    log(f'{broker.label}: highest sustainable rate of {kind} (alone)')
    steps = []
    record.update(kind=kind, mode='alone', max_rate=None, failed_at=None, bound=None,
                  steps=steps)
    good, bad, bound = None, None, None
    worker = None
    tag = 0
    previous_rate = None

    def step(rate):
        nonlocal worker, tag, previous_rate
        if worker is None or rate < previous_rate:
            # a fresh worker: no backlog, no lost peers of a bigger cluster
            publishers.set(0, 0)
            if worker is not None:
                worker.stop()
            tag += 1
            worker = start_workers([kind], broker, folder, f'{broker.kind}-ramp{tag}',
                                   args.max_delay, args.pool)[0]
        previous_rate = rate
        window = ramp_step(args, broker, [worker], publishers, rate)
        steps.append(window)
        ok = window['workers'][kind]['keeps_up']
        if ok and (record['max_rate'] is None or window['published_rate'] > record['max_rate']):
            record['max_rate'] = window['published_rate']
        return ok, window

    try:
        rate = args.ramp_start
        for _ in range(args.ramp_steps):
            ok, window = step(rate)
            if not ok and args.retry:
                log(f'{broker.label}: {kind} fell behind at {rate:.0f}/s; once more to be sure')
                ok, window = step(rate)
            if ok and window['publisher_limited']:
                good, bound = window['published_rate'], 'publisher'
                break
            if ok:
                good = window['published_rate']
                rate *= 2
            else:
                bad = window['published_rate']
                break
        else:
            bound = 'steps'
        if bad is not None and good is not None:
            for _ in range(args.bisect):
                ok, window = step((good + bad) / 2)
                if ok:
                    good = max(good, window['published_rate'])
                else:
                    bad = min(bad, window['published_rate'])
    finally:
        publishers.set(0, 0)
        if worker is not None:
            worker.stop()
    record.update(max_rate=good, failed_at=bad, bound=bound)
    return record


def ramp_together(args, broker, workers, publishers, records):
    """The rate ladder with all *workers* side by side (quick mode)."""
    log(f'{broker.label}: highest sustainable rate, all workers side by side')
    for w in workers:
        w.control(loop_tick=True)  # a stalled event loop is one way to fall behind
    state = {w.kind: {'kind': w.kind, 'mode': 'together', 'max_rate': None,
                      'failed_at': None, 'bound': None, 'steps': []} for w in workers}
    records.extend(state.values())
    rate = args.ramp_start
    for _ in range(args.ramp_steps):
        window = ramp_step(args, broker, workers, publishers, rate)
        running = False
        for kind, entry in state.items():
            if entry['failed_at'] is not None or entry['bound'] == 'publisher':
                continue
            entry['steps'].append(window)
            if window['workers'][kind]['keeps_up']:
                entry['max_rate'] = window['published_rate']
                if window['publisher_limited']:
                    entry['bound'] = 'publisher'
                else:
                    running = True
            else:
                entry['failed_at'] = window['published_rate']
        if not running:
            break
        rate *= 2
    for entry in state.values():
        if entry['failed_at'] is None and entry['bound'] is None:
            entry['bound'] = 'steps'
    publishers.set(0, 0)
    return list(state.values())


def run_broker(args, broker, kinds, folder, publishers, out):
    """All phases on one broker; results go into *out* as they come."""
    log(f'{broker.label}: starting workers {", ".join(kinds)} side by side')
    workers = start_workers(kinds, broker, folder, f'{broker.kind}-sizes', args.max_delay, args.pool)
    try:
        run_sizes(args, broker, workers, publishers, out)
        publishers.set(0, 0)
        if not args.no_max_rate and args.ramp_mode == 'together':
            ramp_together(args, broker, workers, publishers, out.setdefault('max_rate', []))
    finally:
        for w in workers:
            w.stop()
    if not args.no_max_rate and args.ramp_mode == 'alone':
        records = out.setdefault('max_rate', [])
        for kind in [k for k in args.ramp_kinds if k in kinds]:
            record = {}
            records.append(record)
            ramp_alone(args, broker, kind, folder, publishers, record)


def machine_info():
    model = platform.processor()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in ('celery', 'kombu', 'amqp', 'redis', 'hiredis', 'gossip-fast', 'psutil'):
        try:
            from importlib.metadata import version
            versions[dist] = version(dist)
        except Exception:
            versions[dist] = None
    try:
        import gossip_fast
        implementation = gossip_fast.IMPLEMENTATION
    except Exception:
        implementation = None
    brokers = {}
    for pkg in ('redis-server', 'rabbitmq-server', 'erlang-base'):
        try:
            brokers[pkg] = subprocess.run(['dpkg-query', '-W', '-f=${Version}', pkg],
                                          capture_output=True, text=True, timeout=10).stdout.strip() or None
        except Exception:
            brokers[pkg] = None
    return {
        'cpu_model': model,
        'cores': psutil.cpu_count(),
        'memory_gb': round(psutil.virtual_memory().total / 2 ** 30, 1),
        'python': platform.python_version(),
        'platform': platform.platform(),
        'versions': versions,
        'gossip_fast_implementation': implementation,
        'broker_packages': brokers,
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'loadavg_start': os.getloadavg(),
    }


def main(argv=None):
    args = parse_args(argv)
    began = time.monotonic()

    def terminate(signum, frame):
        raise KeyboardInterrupt  # stop brokers and workers on the way out

    signal.signal(signal.SIGTERM, terminate)
    folder = tempfile.mkdtemp(prefix='gossip-fast-cluster-bench-')
    results = {
        'mode': 'quick' if args.quick else 'full',
        'machine': machine_info(),
        'settings': {k: v for k, v in vars(args).items() if k not in ('out_dir',)},
        'brokers': {},
        'criteria': {'follow_ratio': FOLLOW_RATIO, 'cpu_limit_pct': CPU_LIMIT,
                     'backlog_seconds': BACKLOG_SECONDS, 'freq': FREQ,
                     'small_size': SMALL_SIZE, 'latency_slack_ms': LATENCY_SLACK_MS},
        'cpu_method': ProcessCPU(os.getpid()).method,
    }
    log(f'cluster benchmark ({results["mode"]}), logs in {folder}')
    try:
        for kind in args.brokers:
            broker = Broker(kind).start()
            publishers = None
            try:
                entry = results['brokers'][kind] = {'label': broker.label}
                entry['fast_reader'] = fast_reader_available(kind)
                kinds = args.kinds or (['stock', 'fast', 'classic'] if entry['fast_reader']
                                       else ['stock', 'fast'])
                entry['kinds'] = kinds
                entry['wire'] = check_wire(broker, args.publisher)
                log(f'{broker.label}: wire check: {"OK" if entry["wire"]["ok"] else "DIFFERS"} '
                    f'({entry["wire"]["detail"]})')
                publishers = Publishers(broker.url, f'sim{uuid.uuid4().hex[:4]}-',
                                        args.publishers, args.publisher)
                try:
                    run_broker(args, broker, kinds, folder, publishers, entry)
                except Exception as exc:  # record it, go on with the next broker
                    import traceback
                    entry['error'] = f'{exc!r}'
                    log(f'{broker.label}: FAILED: {exc!r}\n{traceback.format_exc()}')
            finally:
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
        if args.keep_logs:
            log(f'worker logs kept in {folder}')
        else:
            shutil.rmtree(folder, ignore_errors=True)
    with open(paths['md']) as f:
        print(f.read())
    log(f'done in {results["elapsed_seconds"]:.0f} s: ' + ', '.join(paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
