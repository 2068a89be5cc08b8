"""In-process cluster simulation behind ``gossip-fast bench``.

N simulated workers each send a ``worker-heartbeat`` every :data:`FREQ`
seconds; S seconds of that cluster's traffic (``N * S / FREQ`` real kombu
messages, Redis envelope or py-amqp delivery) are pushed through
``Gossip.on_message`` of stock Celery, of the pure-Python fallback and of
the Cython core, interleaved chunk by chunk so that a burst of load on a
shared machine hits all of them.  Every :data:`INTERVAL` seconds of cluster
time the sweep (``periodic()``) runs, as the worker's timer would.  No
broker, no threads: everything is timed in this process with
``time.perf_counter``; for each chunk of messages the best (minimum) of the
repeats is kept, so a burst of load from elsewhere costs one chunk of one
repeat, not the whole result.

The helpers here (:func:`make_gossip`, :func:`heartbeat_messages`,
:func:`populate`, :func:`memory_per_worker`) are shared with
``benchmarks/``.
"""
import gc
import os
import platform
import textwrap
import time
import tracemalloc
from functools import partial
from importlib import import_module, metadata
from time import perf_counter

from .simulate import SimulatedConsumer, heartbeat_body, make_message

__all__ = ('IMPLEMENTATIONS', 'Unavailable', 'load_core', 'make_gossip',
           'heartbeat_messages', 'populate', 'feed', 'time_sweep',
           'memory_per_worker', 'machine_info', 'simulate', 'format_report')

IMPLEMENTATIONS = ('stock', 'python', 'cython')
CORES = {'python': 'gossip_fast._core_py', 'cython': 'gossip_fast._core'}
BUILD_HINT = ('the compiled core gossip_fast._core is not built: build it with '
              '`pip install -e . --no-build-isolation` (needs Cython and a C '
              'compiler) and check `python -c "import gossip_fast._core"`')
#: Heartbeat period of every simulated worker (Celery's default).
FREQ = 2.0
#: Period of Gossip's sweep (Celery's default ``interval``).
INTERVAL = 5.0
#: The ``freq`` the simulated heartbeats announce.  Expiry is judged in wall
#: time, and the simulation runs faster or slower than real time (a round of
#: 100k heartbeats takes longer than 2 s here), so workers say they beat
#: hourly: none expires by accident and every sweep sees N live workers.
STAY_ALIVE = 3600.0
#: Stock ``celery.events.state.State`` keeps at most this many workers (LRU).
STOCK_MAX_WORKERS = 5000
#: Messages built (untimed) and then fed to every implementation at a time.
CHUNK = 5000


class Unavailable(Exception):
    """The requested implementation cannot be loaded here."""


def load_core(implementation):
    """The core module of ``python`` or ``cython``, imported explicitly."""
    try:
        return import_module(CORES[implementation])
    except ImportError as exc:
        raise Unavailable(f'{BUILD_HINT} ({exc})') from exc


def make_gossip(implementation, hostname='bench@local'):
    """A Gossip bootstep outside a worker, and the ``prepare`` it consumes
    with: ``(gossip, prepare)``, ready for ``gossip.on_message(prepare, m)``."""
    from celery import Celery
    app = Celery('gossip-fast-bench', broker='redis://localhost:1/0',
                 set_as_current=False)  # a redis URL enables gossip; nothing connects
    consumer = SimulatedConsumer(app, hostname=hostname)
    if implementation == 'stock':
        from celery.worker.consumer.gossip import Gossip as StockGossip
        gossip = StockGossip(consumer)
        receiver = app.events.Receiver(None, app=app)
        return gossip, partial(receiver.event_from_message, localize=False)
    from .bootstep import Gossip
    cls = type('Gossip', (Gossip,), {'core': load_core(implementation)})
    gossip = cls(consumer)
    return gossip, gossip._receiver.fast_prepare


def hostname(index):
    return f'sim{index}@node{index % 64}'


def heartbeat_messages(transport, indices, clock=1, freq=FREQ):
    """Heartbeat messages of the workers *indices*, stamped now (no drift)."""
    now = time.time()
    return [make_message(transport, 'worker.heartbeat',
                         heartbeat_body(hostname(i), clock + n, now,
                                        pid=10_000 + i, freq=freq),
                         hostname(i))
            for n, i in enumerate(indices)]


def populate(gossip, prepare, indices, freq=FREQ):
    """Apply one heartbeat of each worker of *indices* without a transport
    (body dict -> prepare -> ``update_state``): a fast way to fill a table."""
    now = time.time()
    update_state = gossip.update_state
    for i in indices:
        body = {'hostname': hostname(i), 'utcoffset': 0.0, 'pid': 10_000 + i,
                'clock': i + 1, 'freq': freq, 'active': 0, 'processed': 0,
                'loadavg': [0.17, 0.36, 0.46], 'sw_ident': 'py-celery',
                'sw_ver': '5.7.0', 'sw_sys': 'Linux', 'timestamp': now,
                'type': 'worker-heartbeat'}  # heartbeat_body()'s, decoded
        update_state(prepare(body)[1])


def feed(gossip, prepare, messages):
    """Push *messages* through ``on_message``; return the seconds it took."""
    for message in messages:
        message._decoded_cache = None  # stock caches (and edits) the payload
    on_message = gossip.on_message
    start = perf_counter()
    for message in messages:
        on_message(prepare, message)
    return perf_counter() - start


def time_sweep(gossip, repeat=3):
    """Best of *repeat* ``periodic()`` calls, in seconds."""
    best = float('inf')
    for _ in range(repeat):
        start = perf_counter()
        gossip.periodic()
        best = min(best, perf_counter() - start)
    return best


def memory_per_worker(implementation, messages):
    """``(bytes per tracked worker, tracked workers)`` once *messages* (one
    heartbeat per worker) went through ``on_message`` of a fresh Gossip,
    measured with tracemalloc."""
    gossip, prepare = make_gossip(implementation)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        feed(gossip, prepare, messages)
        for message in messages:  # stock keeps the decoded payload there
            message._decoded_cache = None
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    tracked = len(gossip.state.workers)
    return (after - before) / max(tracked, 1), tracked


def _cpu_model():
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith(('model name', 'Hardware', 'cpu model')):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None
    return {
        'platform': platform.platform(),
        'cpu': _cpu_model(),
        'cpus': os.cpu_count(),
        'python': f'{platform.python_implementation()} {platform.python_version()}',
        'celery': version('celery'),
        'kombu': version('kombu'),
        'msgspec': version('msgspec'),
        'gossip_fast': version('gossip-fast'),
    }


def simulate(implementations=IMPLEMENTATIONS, workers=2000, seconds=20.0,
             transport='redis', repeat=5, progress=lambda text, done=True: None):
    """Run the simulation; return ``{'machine':…, 'config':…, 'results':…}``."""
    sims = {impl: make_gossip(impl) for impl in implementations}
    progress(f'warm-up: {workers} workers join each implementation')
    warm = heartbeat_messages(transport, range(workers), freq=STAY_ALIVE)
    for gossip, prepare in sims.values():
        feed(gossip, prepare, warm)
    del warm
    joins = dict.fromkeys(implementations, 0)  # from now on there should be none
    for impl, (gossip, _) in sims.items():
        gossip.on.node_join.add(partial(_bump, joins, impl))

    total = max(1, round(workers * seconds / FREQ))
    per_sweep = max(1, round(workers * INTERVAL / FREQ))
    best = {impl: {} for impl in implementations}  # chunk -> best seconds
    sweeps = dict.fromkeys(implementations, float('inf'))
    clock, order = workers + 1, list(implementations)
    for r in range(repeat):
        sent = 0
        while sent < total:
            n = min(CHUNK, total - sent)
            messages = heartbeat_messages(
                transport, ((sent + k) % workers for k in range(n)), clock, STAY_ALIVE)
            clock += n
            gc.collect()  # nobody pays for collecting the messages just built
            sweep = (sent + n) // per_sweep > sent // per_sweep or sent + n == total
            order.append(order.pop(0))  # nobody always goes first
            for impl in order:
                gossip, prepare = sims[impl]
                took = feed(gossip, prepare, messages)
                best[impl][sent] = min(best[impl].get(sent, took), took)
                if sweep:  # the worker's timer fires every INTERVAL seconds
                    sweeps[impl] = min(sweeps[impl], time_sweep(gossip))
            sent += n
            progress(f'repeat {r + 1}/{repeat}: {100 * sent // total:3d}% '
                     f'of {total:,} heartbeats', done=sent == total)

    results = {}
    messages = heartbeat_messages(transport, range(workers))
    for impl in implementations:
        progress(f'memory: {workers} workers, {impl} (tracemalloc)')
        per_worker, _ = memory_per_worker(impl, messages)
        gossip = sims[impl][0]
        elapsed = sum(best[impl].values())  # each chunk's best over the repeats
        us = elapsed / total * 1e6
        results[impl] = {
            'events_per_second': total / elapsed,
            'us_per_event': us,
            'cpu_share': workers / FREQ * us / 1e6,
            'sweep_us': sweeps[impl] * 1e6,
            'bytes_per_worker': per_worker,
            'tracked_workers': len(gossip.state.workers),
            'joins_in_steady_state': joins[impl],
        }
    if 'stock' in results:
        base = results['stock']
        for res in results.values():
            res['speedup_vs_stock'] = {
                'on_message': base['us_per_event'] / res['us_per_event'],
                'sweep': base['sweep_us'] / res['sweep_us'],
                'memory': base['bytes_per_worker'] / res['bytes_per_worker'],
            }
    return {
        'machine': machine_info(),
        'config': {'workers': workers, 'seconds': seconds, 'transport': transport,
                   'repeat': repeat, 'heartbeats_per_repeat': total,
                   'freq': FREQ, 'sweep_interval': INTERVAL,
                   'implementations': list(implementations)},
        'results': results,
    }


def _bump(joins, impl, _worker):
    joins[impl] += 1


def format_report(report):
    """The human-readable side-by-side table of :func:`simulate`'s report."""
    m, c, res = report['machine'], report['config'], report['results']
    impls = list(res)
    rows = [
        ('events/s', lambda r: f"{r['events_per_second']:,.0f}"),
        ('us per event', lambda r: f"{r['us_per_event']:.2f}"),
        ('core used by gossip', lambda r: f"{100 * r['cpu_share']:.2f}%"),
        ('sweep (us)', lambda r: f"{r['sweep_us']:,.1f}"),
        ('memory/worker (B)', lambda r: f"{r['bytes_per_worker']:,.0f}"),
        ('tracked workers', lambda r: f"{r['tracked_workers']:,}"),
        ('steady-state joins', lambda r: f"{r['joins_in_steady_state']:,}"),
    ]
    if 'stock' in res:
        rows += [(f'speedup {key}', lambda r, key=key: f"{r['speedup_vs_stock'][key]:,.1f}x")
                 for key in ('on_message', 'sweep', 'memory')]
    lines = [
        f"gossip-fast bench: {c['workers']:,} workers x {c['seconds']:g} s of "
        f"cluster time = {c['heartbeats_per_repeat']:,} heartbeats, "
        f"{c['transport']} messages, best of {c['repeat']} repeats",
        f"machine: {m['cpu']} ({m['cpus']} CPUs), {m['platform']}, {m['python']}, "
        f"celery {m['celery']}, kombu {m['kombu']}, msgspec {m['msgspec']}",
        '',
        f"{'':22}" + ''.join(f'{impl:>14}' for impl in impls),
    ]
    lines += [f'{label:22}' + ''.join(f'{fmt(res[i]):>14}' for i in impls)
              for label, fmt in rows]
    lines += [''] + textwrap.wrap(
        'events/s: heartbeats through on_message per wall second, one thread. '
        'core used: the share of one core that on_message takes at this cluster '
        f"size ({c['workers'] / c['freq']:,.0f} heartbeats/s). sweep: one "
        'periodic() with every worker alive. memory: tracemalloc, per tracked '
        f'worker. Timings: for each chunk of {CHUNK:,} heartbeats, the best of the '
        'repeats; on a shared machine compare the ratios.', 79)
    for impl, r in res.items():
        lost, joins = c['workers'] - r['tracked_workers'], r['joins_in_steady_state']
        if impl == 'stock' and lost:
            note = (f'note: stock State keeps at most {STOCK_MAX_WORKERS:,} workers '
                    f'(LRU); the other {lost:,} are evicted and re-join on every '
                    f'heartbeat ({joins:,} node_join calls in the timed runs), so its '
                    'numbers are not comparable.')
        elif lost or joins:
            note = (f'WARNING: {impl} tracks {r["tracked_workers"]:,} of '
                    f"{c['workers']:,} live workers and fired node_join {joins:,} "
                    'times in steady state: expected all of them and none.')
        else:
            continue
        lines += textwrap.wrap(note, 79)
    return '\n'.join(lines)
