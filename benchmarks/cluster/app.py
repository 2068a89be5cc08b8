"""The Celery app of the cluster benchmark's workers.

Run as ``celery -A benchmarks.cluster.app worker --pool solo`` (the
controller, ``benchmarks/cluster/run.py``, does it).  Configured from the
environment:

``BENCH_BROKER_URL``
    the broker (``redis://...`` or ``amqp://...``).
``BENCH_GOSSIP``
    ``stock``: Celery's own Gossip step, untouched; ``fast``:
    ``gossip_fast.install(app)`` (the receive path is chosen by
    ``GOSSIP_FAST_RECEIVE``, ``auto`` by default, as for any project).
``BENCH_STATS_FILE``
    where the :class:`BenchStep` below writes its counters, once a second,
    as one JSON object (written to a temporary file, then renamed).
``BENCH_LOOP_TICK``
    ``1`` (default): the 1 s liveness timer below runs from the start;
    ``0``: not until the controller asks for it.

:class:`BenchStep` is a user bootstep as in Celery's "Extensions and
Bootsteps" guide: it requires the Gossip step by name and counts what
gossip tells it (``on.node_join`` / ``node_leave`` / ``node_lost``).  It
does not touch the per-message path: the number of events applied is read
from the state (stock ``State.event_count``) or from gossip_fast's own
counters (the receiver's and the reader's, as in ``inspect gossip_stats``).

The counters are written by a small thread, once a second, not by the
worker's timer: a stock worker that falls behind on Redis stays inside
kombu's pub/sub drain loop and does not run its timers for many seconds,
and the benchmark must still see how much it applied.  The file lists the
native ids of the benchmark's own threads (``bench_tids``), so that the
controller can leave their CPU out of the worker's.

The event loop's own liveness is reported too: a 1 s timer on the worker's
hub stamps ``loop_tick``; ``loop_age`` in the file is how long ago it ran
(for a healthy worker, about a second at most).  That timer is one more
turn of the event loop a second, which a real worker does not make: the
controller switches it off for small clusters, where the worker's own cost
is a few turns a second and nobody falls behind.

The controller steers the step through a control file
(``<BENCH_STATS_FILE>.control``, JSON, read by the same thread once a
second): ``loop_tick`` (bool) switches the liveness timer (on the event
loop, through ``hub.call_soon``); a new ``latency`` request
(``{"id", "seconds", "hosts", "period"}``) starts a
:class:`~benchmarks.cluster.latency.LatencySampler`, which writes its
samples to ``<BENCH_STATS_FILE>.latency-<id>.json``.  The full snapshot
(with ``Gossip.stats()``) is also served by the remote control command
``bench_stats``.
"""
import json
import os
import threading
import time

from celery import Celery, bootsteps
from celery.worker.control import inspect_command

from benchmarks.cluster.latency import LatencySampler

BROKER_URL = os.environ.get('BENCH_BROKER_URL', 'redis://127.0.0.1:6379/0')
GOSSIP = os.environ.get('BENCH_GOSSIP', 'stock')
STATS_FILE = os.environ.get('BENCH_STATS_FILE')
CONTROL_FILE = f'{STATS_FILE}.control' if STATS_FILE else None
LOOP_TICK = os.environ.get('BENCH_LOOP_TICK', '1') != '0'
STATS_INTERVAL = 1.0

app = Celery('cluster_bench', broker=BROKER_URL)
app.conf.update(
    accept_content=['json'],
    task_serializer='json',
    result_serializer='json',
    broker_connection_retry_on_startup=True,
)

if GOSSIP == 'fast':
    import gossip_fast
    gossip_fast.install(app)
elif GOSSIP != 'stock':
    raise RuntimeError(f'BENCH_GOSSIP must be "fast" or "stock", not {GOSSIP!r}')


def _queue_name(gossip):
    """Name of the queue the worker's gossip consumes (RabbitMQ: for its depth)."""
    reader = getattr(gossip, '_reader', None)
    if reader is not None and getattr(reader, 'queue', None) is not None:
        return reader.queue.name
    for consumer in getattr(gossip, 'consumers', None) or ():
        for queue in consumer.queues:
            return queue.name
    return None


class BenchStep(bootsteps.StartStopStep):
    """Counts membership callbacks; publishes counters once a second."""

    requires = {'celery.worker.consumer.gossip:Gossip'}

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.c = c
        self.joins = self.leaves = self.lost = 0
        self.started = time.time()
        self.loop_tick = None
        self.ticking = LOOP_TICK      # whether the liveness timer should run
        self._tref = None
        self._thread = None
        self._writer_tid = None
        self._sampler = None
        self._control_mtime = None
        self._latency_id = None
        self._stop = threading.Event()
        c.bench = self

    def start(self, c):
        self.c = c
        gossip = c.gossip
        gossip.on.node_join.add(self._on_join)
        gossip.on.node_leave.add(self._on_leave)
        gossip.on.node_lost.add(self._on_lost)
        self._set_ticking(self.ticking)
        if STATS_FILE and self._thread is None:
            self._thread = threading.Thread(target=self._writer, name='bench-stats',
                                            daemon=True)
            self._thread.start()

    def stop(self, c):
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None

    def shutdown(self, c):
        self._stop.set()

    def _tick(self):
        self.loop_tick = time.time()

    def _set_ticking(self, on):
        """Start or stop the liveness timer (on the event loop's thread)."""
        self.ticking = on
        if on and self._tref is None:
            self._tref = self.c.timer.call_repeatedly(STATS_INTERVAL, self._tick)
            self._tick()
        elif not on and self._tref is not None:
            self._tref.cancel()
            self._tref = None
            self.loop_tick = None  # no liveness known: not a stall

    def _on_join(self, worker):
        self.joins += 1

    def _on_leave(self, worker):
        self.leaves += 1

    def _on_lost(self, worker):
        self.lost += 1

    def counters(self):
        """Cheap counters, safe to read from another thread (no iteration)."""
        gossip = self.c.gossip
        state = getattr(gossip, 'state', None) if gossip.enabled else None
        now = time.time()
        snap = {
            'time': now,
            'pid': os.getpid(),
            'kind': GOSSIP,
            'hostname': self.c.hostname,
            'gossip_class': f'{type(gossip).__module__}.{type(gossip).__name__}',
            'enabled': gossip.enabled,
            'joins': self.joins,
            'leaves': self.leaves,
            'lost': self.lost,
            'loop_tick': self.loop_tick,
            'loop_age': now - self.loop_tick if self.loop_tick else None,
            'queue': _queue_name(gossip),
            'tracked_workers': len(state.workers) if state is not None else 0,
            'bench_tids': self.bench_tids(),
            'loop_ticking': self.ticking,
        }
        digest = getattr(gossip, '_digest', None)
        if digest is not None:  # gossip_fast's digest mode (benchmarks/digest_member.py)
            snap['digest_role'] = digest.role.role if digest.active else None
        receiver = getattr(gossip, '_receiver', None)
        if receiver is not None and hasattr(receiver, 'stats'):  # gossip_fast
            events = receiver.stats()
            reader = getattr(gossip, '_reader', None)
            receive = reader.stats() if reader is not None else {'path': 'kombu'}
            snap['applied'] = events['applied']
            snap['received'] = events['received']
            snap['receive_path'] = receive.get('path', 'kombu')
            snap['shed'] = receive.get('shed', 0)
            for key in ('pending', 'errors', 'reconnects', 'longest_drain_ms'):
                snap[f'receive_{key}'] = receive.get(key)
        else:  # stock: State.event() counts every event it applies
            snap['applied'] = getattr(state, 'event_count', 0)
            snap['received'] = snap['applied']
            snap['receive_path'] = 'kombu'
            snap['shed'] = 0
        return snap

    def snapshot(self):
        snap = self.counters()
        gossip = self.c.gossip
        if hasattr(gossip, 'stats'):  # gossip_fast: what `inspect gossip_stats` says
            snap['gossip_stats'] = gossip.stats()
        return snap

    def bench_tids(self):
        """Native ids of the benchmark's own threads (not the worker's cost)."""
        tids = [self._writer_tid]
        sampler = self._sampler
        if sampler is not None and sampler.is_alive():
            tids.append(sampler.tid)
        # on gevent and eventlet a thread is a greenlet of the main thread,
        # whose id is the process's: that one is the worker's own cost
        return [t for t in tids if t is not None and t != os.getpid()]

    def _writer(self):
        self._writer_tid = threading.get_native_id()
        while not self._stop.wait(STATS_INTERVAL):
            self._read_control()
            self.write()

    def _read_control(self):
        """Act on a changed control file (see the module's docstring)."""
        try:
            mtime = os.stat(CONTROL_FILE).st_mtime_ns
            if mtime == self._control_mtime:
                return
            with open(CONTROL_FILE) as f:
                control = json.load(f)
            self._control_mtime = mtime
        except (OSError, ValueError):
            return  # none yet, or being replaced: next second
        tick = control.get('loop_tick')
        if tick is not None and bool(tick) != self.ticking and self.c.hub is not None:
            self.ticking = bool(tick)  # the liveness check follows at once
            self.c.hub.call_soon(self._set_ticking, bool(tick))
        latency = control.get('latency')
        if latency and latency.get('id') != self._latency_id:
            self._latency_id = latency['id']
            self._sampler = LatencySampler(
                self._worker_table, latency, f'{STATS_FILE}.latency-{latency["id"]}.json')
            self._sampler.start()

    def _worker_table(self):
        """The gossip state's ``{hostname: Worker}``, read without side effects
        (stock's table is an LRU cache: a lookup through it would reorder it)."""
        state = getattr(self.c.gossip, 'state', None)
        if state is None:
            return None
        workers = state.workers
        return getattr(workers, 'data', workers)

    def write(self):
        try:
            snap = self.counters()
            tmp = f'{STATS_FILE}.tmp'
            with open(tmp, 'w') as f:
                json.dump(snap, f, default=repr)
            os.replace(tmp, STATS_FILE)
        except Exception as exc:  # never break the worker for a benchmark
            print(f'bench: cannot write stats: {exc!r}', flush=True)


app.steps['consumer'].add(BenchStep)


@inspect_command()
def bench_stats(state):
    """The benchmark's counters (``celery -A ... inspect bench_stats``)."""
    bench = getattr(state.consumer, 'bench', None)
    if bench is None:
        return {'error': 'no BenchStep in this worker'}
    return bench.snapshot()
