"""Command line of gossip_fast: ``gossip-fast bench`` and ``gossip-fast
stats`` (also ``python -m gossip_fast ...``)."""
import argparse
import json
import os
import sys

from . import bench

__all__ = ('main',)


def _positive(kind, name):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float('inf'):  # NaN fails too
            raise argparse.ArgumentTypeError(
                f'must be a positive {name}, got {text!r}')
        return value
    return parse


def _implementations(text):
    names = [name.strip() for name in text.split(',') if name.strip()]
    unknown = [name for name in names if name not in bench.IMPLEMENTATIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown implementation {', '.join(map(repr, unknown)) or repr(text)}; "
            f"choose from {','.join(bench.IMPLEMENTATIONS)}")
    return list(dict.fromkeys(names))  # in order, without duplicates


def build_parser():
    parser = argparse.ArgumentParser(
        prog='gossip-fast',
        description="Tools for gossip_fast, the drop-in for Celery's Gossip bootstep.")
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    run = commands.add_parser(
        'bench', help='compare stock Celery, the Python fallback and the Cython core',
        description=(
            'Simulate a cluster of N workers in this process (no broker): each '
            f'sends a heartbeat every {bench.FREQ:g} s; S seconds of that traffic '
            '(real kombu messages) go through Gossip.on_message of each '
            f'implementation, with a sweep every {bench.INTERVAL:g} s of cluster '
            'time.  Prints events/s, us per event, sweep time, memory per worker '
            'and speedups vs stock.  Timings are the best of the repeats; progress '
            'goes to stderr.'))
    run.add_argument('--workers', '-n', type=_positive(int, 'integer'), default=2000,
                     metavar='N', help='simulated workers (default: %(default)s)')
    run.add_argument('--seconds', '-s', type=_positive(float, 'number'), default=20.0,
                     metavar='S', help='seconds of cluster time per repeat '
                     '(default: %(default)g)')
    run.add_argument('--transport', choices=('redis', 'amqp'), default='redis',
                     help='message format: Redis envelope or py-amqp delivery '
                     '(default: %(default)s)')
    run.add_argument('--implementations', '-i', type=_implementations,
                     default=list(bench.IMPLEMENTATIONS), metavar='LIST',
                     help='comma-separated, from stock,python,cython (default: all)')
    run.add_argument('--repeat', '-r', type=_positive(int, 'integer'), default=5,
                     metavar='R', help='repeats; the best is kept (default: %(default)s)')
    run.add_argument('--json', action='store_true',
                     help='print the results as JSON instead of a table')
    run.add_argument('--plot', metavar='FILE.png',
                     help='also draw the results side by side into FILE.png '
                     "(needs matplotlib: pip install 'gossip-fast[bench]')")
    run.add_argument('--quiet', '-q', action='store_true', help='no progress on stderr')
    run.set_defaults(func=_bench, parser=run)

    ask = commands.add_parser(
        'stats', help="ask running workers for their gossip_stats",
        description=(
            'Broadcast the remote-control command gossip_stats (what `celery '
            'inspect gossip_stats` sends) and print one line per worker that '
            'answered: gossip_fast version, core, receive path, peers, events. '
            'Works whichever way the workers switched gossip_fast on, and '
            'this process does not need to import gossip_fast in the app.'))
    where = ask.add_mutually_exclusive_group(required=True)
    where.add_argument('-A', '--app', metavar='APP',
                       help='your Celery app, as for `celery -A` (e.g. proj or proj.celery:app)')
    where.add_argument('-b', '--broker', metavar='URL',
                       help='the broker URL instead of an app (e.g. redis://localhost:6379/0)')
    ask.add_argument('-d', '--destination', metavar='NODES',
                     help='comma-separated worker names (default: every worker)')
    ask.add_argument('-t', '--timeout', type=_positive(float, 'number'), default=1.0,
                     metavar='S', help='seconds to wait for replies (default: %(default)g)')
    ask.add_argument('--json', action='store_true',
                     help='print {worker: gossip_stats} as JSON')
    ask.set_defaults(func=_stats, parser=ask)
    return parser


def _load_app(args):
    if args.broker:
        from celery import Celery
        return Celery('gossip-fast-stats', broker=args.broker, set_as_current=False)
    from celery.app.utils import find_app  # as `celery -A` finds it (cwd first)
    try:
        return find_app(args.app)
    except Exception as exc:  # ImportError, AttributeError, anything the module raises
        args.parser.error(f'cannot load the Celery app {args.app!r}: {exc!r}')


def _summary(stats):
    """One line of a worker's gossip_stats."""
    if not isinstance(stats, dict):
        return f'unexpected reply {stats!r}'
    if 'error' in stats and 'enabled' not in stats:
        error = stats['error']
        if 'gossip_stats' in str(error):  # KeyError: the command is unknown there
            return (f'does not know gossip_stats ({error}): stock Gossip, or a worker '
                    'that does not import gossip_fast')
        return f'error: {error}'
    head = (f"gossip_fast {stats.get('version', '?')}, core "
            f"{stats.get('implementation', '?')}")
    if not stats.get('enabled'):
        return f"{head}; gossip OFF: {stats.get('why', 'disabled')}"
    receive = stats.get('receive') or {}
    path = receive.get('path', '?')
    if receive.get('why'):
        path += f" ({receive['why']})"
    elif receive.get('max_delay'):
        path += f" (max delay {receive['max_delay']:g} s)"
    digest = stats.get('digest') or {}
    if digest.get('active'):
        path += f" ({digest.get('role')}, term {digest.get('term')})"
    elif digest:
        path += f" (digest mode off: {digest.get('why')})"
    events = stats.get('events') or {}
    dropped = sum((stats.get('dropped') or {}).values())
    return (f"{head}, receive {path}; {stats.get('alive_workers')} of "
            f"{stats.get('tracked_workers')} peers alive; "
            f"{events.get('applied', 0):,} events applied, {dropped:,} dropped; "
            f"joins {stats.get('joins')}, leaves {stats.get('leaves')}, "
            f"losses {stats.get('losses')}; clock {stats.get('clock')}")


def _stats(args):
    app = _load_app(args)
    destination = ([name.strip() for name in args.destination.split(',') if name.strip()]
                   if args.destination else None)
    try:
        replies = app.control.broadcast(
            'gossip_stats', reply=True, timeout=args.timeout, destination=destination,
            limit=len(destination) if destination else None)
    except Exception as exc:  # no broker, refused connection, ...
        print(f'gossip-fast stats: cannot reach the broker: {exc!r}', file=sys.stderr)
        return 1
    merged = {}
    for reply in replies or ():
        merged.update(reply)
    if args.json:
        print(json.dumps(merged, indent=2, sort_keys=True))
    else:
        for hostname in sorted(merged):
            print(f'{hostname}: {_summary(merged[hostname])}')
    if not merged:
        print(f'gossip-fast stats: no worker replied within {args.timeout:g} s',
              file=sys.stderr)
        return 1
    return 0


def _bench(args):
    if args.plot:  # fail now, not after minutes of benchmark
        from . import plot
        try:
            plot.require()
        except plot.Unavailable as exc:
            args.parser.error(f'--plot: {exc}')
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            args.parser.error(f'--plot: no such folder {folder!r}')
    if 'cython' in args.implementations:
        try:
            bench.load_core('cython')
        except bench.Unavailable as exc:
            args.parser.error(f'cannot benchmark cython: {exc}')

    tty = sys.stderr.isatty()

    def progress(text, done=True):  # a percent counter on a terminal, else lines
        if not args.quiet and (done or tty):
            print('\r' + text if tty else text, end='\n' if done else '',
                  file=sys.stderr, flush=True)

    report = bench.simulate(args.implementations, workers=args.workers,
                            seconds=args.seconds, transport=args.transport,
                            repeat=args.repeat, progress=progress)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(bench.format_report(report))
    if args.plot:
        plot.plot_report(report, args.plot)
        progress(f'chart written to {args.plot}')
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
