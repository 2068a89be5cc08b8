"""Instructions a whole worker executes, stock vs gossip_fast, on one stream.

``python -m benchmarks.cluster.instructions`` (``scripts/callgrind-worker.sh``).

The cluster benchmark (:mod:`.run`) measures CPU time: what a user pays, but
on a shared 2-core machine its windows move by 10-20% from run to run at the
small sizes, where a worker spends a few milliseconds a second.  This one
counts instructions instead: real ``celery worker --pool solo`` processes of
the bench app (stock Gossip, gossip_fast, gossip_fast with the classic kombu
receive path) run side by side under valgrind's callgrind on a real broker,
follow the same simulated cluster (byte-realistic heartbeats from
:mod:`.publisher`), and for each cluster size every worker's counters are
zeroed, the window runs, and the counts are dumped.  The count is the whole
main thread of the worker: the event loop, kombu, Celery's own timers and
heartbeats, gossip (the benchmark's stats thread is a thread of its own and
left out).  It does not see the kernel, caches or the scheduler, which the
CPU-time benchmark does.

Valgrind runs a worker tens of times slower, so only small clusters fit (up
to 100 simulated workers, 50 heartbeats/s, by default): the sizes where the
CPU-time windows are noisiest.  Writes ``docs/worker-instructions.md`` and
prints it.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.cluster.run import ROOT, Broker, PublisherProcess, Worker, log

LABELS = {
    'stock': 'stock Celery',
    'fast': 'gossip_fast',
    'classic': 'gossip_fast, classic (kombu) receive',
}
START_TIMEOUT = 600.0  # a worker's start under valgrind (imports, bootsteps)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='callgrind-worker', description=__doc__.split('\n\n')[0])
    p.add_argument('--brokers', default='redis,amqp', help='comma list of redis, amqp (default: both)')
    p.add_argument('--sizes', default='0,10,50,100',
                   help='simulated cluster sizes, 0 for idle (default 0,10,50,100)')
    p.add_argument('--kinds', default='stock,fast,classic', help='workers (default stock,fast,classic)')
    p.add_argument('--warmup', type=float, default=10.0, help='seconds before each window (default 10)')
    p.add_argument('--window', type=float, default=30.0, help='seconds of each window (default 30)')
    p.add_argument('--out', default=os.path.join(ROOT, 'docs', 'worker-instructions.md'),
                   help='the report (default docs/worker-instructions.md)')
    p.add_argument('--keep', metavar='DIR',
                   help='keep the callgrind files (one per dump and thread) in DIR, for callgrind_annotate')
    args = p.parse_args(argv)
    args.brokers = [b.strip() for b in args.brokers.split(',') if b.strip()]
    args.sizes = [int(s) for s in args.sizes.split(',') if s.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(',') if k.strip()]
    for kind in args.kinds:
        if kind not in LABELS:
            p.error(f'unknown kind {kind!r}: one of {", ".join(LABELS)}')
    if not shutil.which('valgrind') or not shutil.which('callgrind_control'):
        p.error('needs valgrind (apt-get install valgrind)')
    return args


def callgrind_control(option, pid):
    subprocess.run(['callgrind_control', option, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main_thread_total(prefix, pid, dumps_before):
    """Instructions of thread 1 in the newest dump of *pid* (``--separate-threads``)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = sorted(glob.glob(f'{prefix}.{pid}.*-01'), key=lambda p: int(p.rsplit('.', 1)[1].split('-')[0]))
        if len(parts) > dumps_before:
            with open(parts[-1]) as f:
                for line in f:
                    if line.startswith(('summary:', 'totals:')):
                        return int(line.split()[1]), len(parts)
        time.sleep(0.5)
    raise RuntimeError(f'no new callgrind dump of pid {pid}')


def run_broker(args, kind_of_broker, folder):
    broker = Broker(kind_of_broker).start()
    workers, publisher, rows = [], None, []
    try:
        for kind in args.kinds:
            prefix = os.path.join(folder, f'{kind_of_broker}-{kind}')
            wrapper = ['valgrind', '--tool=callgrind', '--separate-threads=yes',
                       f'--callgrind-out-file={prefix}.%p']
            workers.append((Worker(kind, broker.url, folder, f'{kind_of_broker}-cg', wrapper=wrapper).start(),
                            prefix))
        log(f'{broker.label}: waiting for {len(workers)} workers under valgrind')
        for worker, _ in workers:
            worker.wait_ready(START_TIMEOUT)
            worker.control(loop_tick=False)  # the benchmark's liveness timer: off, as for small sizes
        publisher = PublisherProcess(broker.url, 'sim', 'raw')
        dumps = {w.proc.pid: 0 for w, _ in workers}
        for size in args.sizes:
            publisher.call(cmd='rate', rate=size / 2.0, size=max(size, 1))
            time.sleep(args.warmup)
            before = {}
            for worker, _ in workers:
                callgrind_control('-z', worker.proc.pid)
                before[worker.kind] = (worker.stats() or {}).get('applied', 0)
            began = time.monotonic()
            time.sleep(args.window)
            for worker, _ in workers:
                callgrind_control('-d', worker.proc.pid)
            seconds = time.monotonic() - began
            for worker, prefix in workers:
                worker.check()
                total, dumps[worker.proc.pid] = main_thread_total(prefix, worker.proc.pid, dumps[worker.proc.pid])
                applied = (worker.stats() or {}).get('applied', 0) - before[worker.kind]
                rows.append({'broker': broker.label, 'size': size, 'kind': worker.kind,
                             'instructions': total, 'seconds': seconds, 'applied': applied,
                             'path': (worker.stats() or {}).get('receive_path')})
                log(f'{broker.label} {size:>4} {worker.kind:<8} {total / seconds / 1e6:8.2f} M instr/s, '
                    f'applied {applied}')
    finally:
        if publisher is not None:
            publisher.stop()
        for worker, _ in workers:
            worker.stop()
        broker.stop()
    return rows


def software():
    import platform
    from importlib.metadata import version

    import gossip_fast
    names = ', '.join(f'{name} {version(name)}' for name in ('celery', 'kombu', 'amqp', 'redis'))
    valgrind = subprocess.run(['valgrind', '--version'], capture_output=True, text=True).stdout.strip()
    return (f'Python {platform.python_version()}; {names}; gossip_fast {gossip_fast.__version__} '
            f'({gossip_fast.IMPLEMENTATION} core); {valgrind}')


def report(args, rows, started):
    lines = [
        '# Instructions of the whole worker: stock Celery vs gossip_fast',
        '',
        f'Generated by `scripts/callgrind-worker.sh` on {started} '
        f'({", ".join(args.brokers)}; sizes {", ".join(map(str, args.sizes))}; '
        f'windows of {args.window:.0f} s after {args.warmup:.0f} s of warm-up).',
        '',
        f'Software: {software()}.',
        '',
        'Each worker is a real `celery -A benchmarks.cluster.app worker --pool solo` under valgrind\'s '
        'callgrind, all following the same simulated cluster on a real broker (N workers: N/2 heartbeats/s, '
        'byte for byte as Celery 5.7 sends them). "instructions / s": what the worker\'s main thread executed '
        'in the window (event loop, kombu, Celery\'s timers and its own heartbeats, gossip), zeroed at its '
        'start and dumped at its end. Instruction counts do not depend on the machine\'s load, unlike the '
        'CPU time of the cluster benchmark ([cluster-benchmark.md](cluster-benchmark.md)); they do not see '
        'the kernel (system calls, the network stack), caches or the scheduler, which the CPU time does: a '
        'ratio of instructions is not a ratio of CPU. Under valgrind a worker runs tens of times slower '
        '(hence small clusters only); the stream, the timers and the fast path\'s batching still follow '
        'the wall clock.',
        '',
        '| broker | simulated workers (heartbeats/s) | worker | receive path | applied | '
        'M instructions / s | stock ÷ this |',
        '| --- | ---: | --- | --- | ---: | ---: | ---: |',
    ]
    stock = {(r['broker'], r['size']): r['instructions'] / r['seconds'] for r in rows if r['kind'] == 'stock'}
    for r in rows:
        rate = r['instructions'] / r['seconds']
        base = stock.get((r['broker'], r['size']))
        ratio = '-' if r['kind'] == 'stock' or not base else f'{base / rate:.2f}x'
        size = 'idle' if r['size'] == 0 else f'{r["size"]:,} ({r["size"] / 2:g}/s)'
        lines.append(f'| {r["broker"]} | {size} | {LABELS[r["kind"]]} | {r["path"] or "-"} | '
                     f'{r["applied"]:,} | {rate / 1e6:.2f} | {ratio} |')
    lines.append('')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    folder = args.keep or tempfile.mkdtemp(prefix='gossip-fast-callgrind-')
    os.makedirs(folder, exist_ok=True)
    rows = []
    try:
        for kind_of_broker in args.brokers:
            rows += run_broker(args, kind_of_broker, folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    text = report(args, rows, started)
    with open(args.out, 'w') as f:
        f.write(text)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
