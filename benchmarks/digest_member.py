"""A digest-mode member's CPU against a normal gossip_fast worker's (issue 13).

``python -m benchmarks.digest_member [--brokers redis,amqp] [--size 2000]
[--rate 1000] [--warmup 10] [--window 20] [--repeats 3]``

Per broker (started by ``tests/brokers.py`` on loopback), with the cluster
benchmark's parts (``benchmarks/cluster``: its worker app, its publisher of
byte-realistic heartbeats, its CPU probe):

1. the publisher sends the heartbeats of ``--size`` simulated workers, one
   every 2 s each (``--rate`` heartbeats/s in all);
2. five real workers (``celery worker --pool solo``) follow that cluster:
   ``fast`` (gossip_fast, normal mode), ``relay`` (gossip_fast in digest
   mode, started first so that it relays), ``successor`` (digest mode, next
   in line: it also gets the relay's pulse every second), ``member`` (digest
   mode, ``gossip_fast_digest_relay = False`` so that it is a plain member,
   as most workers of a large cluster are: it gets the relay's digests and
   no heartbeat) and ``baseline`` (``--without-gossip``: the worker's own
   cost without gossip, Celery's heartbeats and event loop included);
3. after ``--warmup`` seconds, ``--repeats`` back-to-back windows of
   ``--window`` seconds measure each worker's main-process CPU (per-thread
   schedstat, the benchmark's own stats thread left out); then the
   publisher stops and one window measures the same workers idle.

The benchmark's 1 s liveness timer is off in every worker
(``BENCH_LOOP_TICK=0``), so a worker's event loop turns only for its own
work.  The table gives ms of CPU per second of each worker, the member's
share of the normal worker's (the issue asks for <= 10%), and the same
share net of the baseline (what gossip itself costs each of them).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.cluster.cpu import ProcessCPU  # noqa: E402
from benchmarks.cluster.run import (  # noqa: E402
    Broker,
    Publishers,
    Worker,
    log,
    machine_info,
    snapshot,
    worker_cpu,
)


class BenchWorker(Worker):
    """run.Worker (the bench app, gossip_fast installed), with a role of
    ours: ``fast`` (normal mode), ``relay`` / ``member`` (digest mode), or
    ``baseline`` (``--without-gossip``: what the worker costs without gossip,
    its heartbeats and its event loop included)."""

    def __init__(self, label, broker_url, folder, tag):
        super().__init__('fast', broker_url, folder, f'{label}-{tag}')
        self.label = label

    def start(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(('BENCH_', 'GOSSIP_FAST_'))}
        env.update(
            PYTHONPATH=os.pathsep.join([ROOT] + [p for p in env.get('PYTHONPATH', '')
                                                 .split(os.pathsep) if p]),
            PYTHONUNBUFFERED='1', BENCH_BROKER_URL=self.broker_url, BENCH_GOSSIP='fast',
            BENCH_STATS_FILE=self.stats_path, BENCH_LOOP_TICK='0')
        if self.label in ('relay', 'successor', 'member'):
            env['GOSSIP_FAST_DIGEST'] = '1'
        if self.label == 'member':
            # never listed as a successor: the plain member, as most workers
            # of a large cluster are (a successor also gets a pulse a second)
            env['GOSSIP_FAST_DIGEST_RELAY'] = '0'
        argv = [sys.executable, '-m', 'celery', '-A', 'benchmarks.cluster.app', 'worker',
                '--pool', 'solo', '-n', f'{self.name}@%h', '--loglevel', 'INFO']
        if self.label == 'baseline':
            argv.append('--without-gossip')
        with open(self.log_path, 'ab') as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)
        self.cpu_reader = ProcessCPU(self.proc.pid)
        return self


def wait_for(what, condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise RuntimeError(f'{what}: not true after {timeout:.0f} s')


def window(workers, broker, publishers, seconds):
    snaps = []
    before = snapshot(workers, broker, publishers)
    time.sleep(seconds)
    after = snapshot(workers, broker, publishers)
    wall = after['time'] - before['time']
    out = {'seconds': round(wall, 2)}
    if before['pub'] and after['pub']:
        out['published_per_s'] = round((after['pub']['sent'] - before['pub']['sent']) / wall, 1)
    for w in workers:
        cpu, _, _ = worker_cpu(before['workers'][w.kind], after['workers'][w.kind])
        stats = after['workers'][w.kind]['stats']
        out[w.label] = {'cpu_ms_per_s': round(1000 * cpu / wall, 3),
                        'applied': stats.get('applied'),
                        'tracked': stats.get('tracked_workers'),
                        'digest_role': stats.get('digest_role')}
        snaps.append(stats)
    return out


def run_broker(args, kind, folder):
    broker = Broker(kind).start()
    publishers = None
    workers = []
    try:
        publishers = Publishers(broker.url, f'sim{uuid.uuid4().hex[:4]}-', 0, 'raw')
        publishers.set(args.rate, args.size)
        relay = BenchWorker('relay', broker.url, folder, kind).start()
        workers.append(relay)
        relay.wait_ready()
        wait_for('the relay relays', lambda: (relay.stats() or {}).get('digest_role') == 'relay')
        others = [BenchWorker(label, broker.url, folder, kind).start()
                  for label in ('fast', 'successor', 'member', 'baseline')]
        workers += others
        for w in others:
            w.wait_ready()
        member = others[2]
        # run.snapshot() keys workers by .kind: make them distinct
        for w in workers:
            w.kind = w.label
        wait_for('the member has the view',
                 lambda: ((member.stats() or {}).get('tracked_workers') or 0) >= args.size)
        log(f'{broker.label}: warm-up {args.warmup:.0f} s')
        time.sleep(args.warmup)
        windows = []
        for i in range(args.repeats):
            windows.append(window(workers, broker, publishers, args.window))
            log(f'{broker.label}: window {i + 1}: ' + json.dumps(windows[-1]))
        publishers.set(0, 0)
        # the simulated workers are lost 2F after their last heartbeat: wait
        # until every worker has seen it, then measure the idle cluster
        time.sleep(10.0)
        idle = window(workers, broker, publishers, args.window)
        log(f'{broker.label}: idle: ' + json.dumps(idle))
        return {'label': broker.label, 'windows': windows, 'idle': idle}
    finally:
        for w in workers:
            w.stop()
        if publishers is not None:
            publishers.stop()
        broker.stop()


def summarize(result):
    windows = result['windows']
    def mean(label):
        return sum(w[label]['cpu_ms_per_s'] for w in windows) / len(windows)
    fast, member, relay = mean('fast'), mean('member'), mean('relay')
    base, successor = mean('baseline'), mean('successor')
    idle = result['idle']
    return {
        'fast_ms_per_s': round(fast, 3), 'member_ms_per_s': round(member, 3),
        'relay_ms_per_s': round(relay, 3), 'baseline_ms_per_s': round(base, 3),
        'successor_ms_per_s': round(successor, 3),
        'member_over_fast': round(member / fast, 4) if fast else None,
        'net_member_over_fast': (round((member - base) / (fast - base), 4)
                                 if fast > base else None),
        'idle_fast_ms_per_s': idle['fast']['cpu_ms_per_s'],
        'idle_member_ms_per_s': idle['member']['cpu_ms_per_s'],
        'published_per_s': [w.get('published_per_s') for w in windows],
    }


def main(argv=None):
    p = argparse.ArgumentParser(prog='digest-member', description=__doc__.split('\n\n')[0])
    p.add_argument('--brokers', default='redis,amqp')
    p.add_argument('--size', type=int, default=2000)
    p.add_argument('--rate', type=float, default=1000.0)
    p.add_argument('--warmup', type=float, default=10.0)
    p.add_argument('--window', type=float, default=20.0)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--out', help='write the results as JSON here')
    args = p.parse_args(argv)
    folder = tempfile.mkdtemp(prefix='gossip-fast-digest-member-')
    results = {'machine': machine_info(), 'settings': vars(args), 'brokers': {}}
    for kind in [b.strip() for b in args.brokers.split(',') if b.strip()]:
        result = run_broker(args, kind, folder)
        result['summary'] = summarize(result)
        results['brokers'][kind] = result
    print(f"machine: {results['machine']['cpu_model']}, {results['machine']['cores']} cores, "
          f"Python {results['machine']['python']}, gossip_fast "
          f"{results['machine']['gossip_fast_implementation']}")
    print(f'{args.size} simulated workers, {args.rate:.0f} heartbeats/s, '
          f'{args.repeats} x {args.window:.0f} s windows; CPU of each main process, ms/s')
    print('| broker | fast (normal) | relay | successor | member | baseline (no gossip) '
          '| member / fast | net of baseline | idle: fast | idle: member |')
    print('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    for result in results['brokers'].values():
        s = result['summary']
        net = s['net_member_over_fast']
        print(f"| {result['label']} | {s['fast_ms_per_s']:.2f} | {s['relay_ms_per_s']:.2f} | "
              f"{s['successor_ms_per_s']:.2f} | "
              f"{s['member_ms_per_s']:.2f} | {s['baseline_ms_per_s']:.2f} | "
              f"{100 * s['member_over_fast']:.1f}% | "
              f"{'-' if net is None else f'{100 * net:.1f}%'} | "
              f"{s['idle_fast_ms_per_s']:.2f} | {s['idle_member_ms_per_s']:.2f} |")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1, default=repr)
    print(f'(worker logs in {folder})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
