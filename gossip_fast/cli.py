"""Command line of gossip_fast: ``gossip-fast bench`` (also
``python -m gossip_fast bench``)."""
import argparse
import json
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
    run.add_argument('--quiet', '-q', action='store_true', help='no progress on stderr')
    run.set_defaults(func=_bench, parser=run)
    return parser


def _bench(args):
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
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
