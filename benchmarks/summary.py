"""Ratios vs stock Celery from a pytest-benchmark JSON file, as Markdown.

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python benchmarks/summary.py bench.json [-o summary.md]

One row per benchmark group: the median of each implementation and its
speedup (stock median / implementation median); ``--stat min`` uses the
minimum instead, steadier on a shared, noisy machine.  Groups that carry
``bytes_per_worker`` in ``extra_info`` compare memory instead (stock bytes /
implementation bytes).
"""
import argparse
import json
import sys

IMPLEMENTATIONS = ('stock', 'python', 'cython')


def human_time(seconds):
    for unit, scale in (('s', 1), ('ms', 1e-3), ('us', 1e-6)):
        if seconds >= scale:
            return f'{seconds / scale:.3g} {unit}'
    return f'{seconds / 1e-9:.3g} ns'


def rows(data, stat='median'):
    """``{group: {implementation: (value, shown, notes)}}`` in file order."""
    groups = {}
    for item in data['benchmarks']:
        extra = item.get('extra_info', {})
        impl = item.get('params', {}).get('implementation') or extra.get('implementation')
        if 'bytes_per_worker' in extra:
            value = extra['bytes_per_worker']
            shown = f'{value:,.0f} B'
        else:  # per operation when a call does a batch of them
            value = item['stats'][stat] / extra.get('operations_per_call', 1)
            shown = human_time(value)
        groups.setdefault(item['group'] or item['name'], {})[impl] = (
            value, shown, extra.get('note'))
    return groups


def markdown(data, stat='median'):
    groups = rows(data, stat)
    impls = [i for i in IMPLEMENTATIONS if any(i in g for g in groups.values())]
    others = [i for i in impls if i != 'stock']
    machine = data.get('machine_info', {})
    cpu = machine.get('cpu', {})
    lines = [
        f"Measured {data.get('datetime', '?')} on {cpu.get('brand_raw', machine.get('machine', '?'))} "
        f"({cpu.get('count', '?')} CPUs), {machine.get('python_implementation', '')} "
        f"{machine.get('python_version', '')}. {stat.capitalize()} times; speedup = stock / implementation "
        '(time, or bytes per worker for memory). Compare ratios, not absolute numbers, '
        'across machines.',
        '',
        '| benchmark | ' + ' | '.join(impls)
        + ''.join(f' | {i} vs stock' for i in others if 'stock' in impls) + ' |',
        '|---' * (1 + len(impls) + (len(others) if 'stock' in impls else 0)) + '|',
    ]
    notes = []
    for group, results in groups.items():
        cells = [results[i][1] if i in results else '-' for i in impls]
        if 'stock' in impls:
            base = results.get('stock', (None,))[0]
            for impl in others:
                value = results.get(impl, (None,))[0]
                cells.append(f'{base / value:,.1f}x' if base and value else '-')
        lines.append(f'| {group} | ' + ' | '.join(cells) + ' |')
        notes += [f'- {group}: {note}' for _, _, note in results.values() if note]
    if notes:
        lines += ['', 'Notes:'] + notes
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('json_file', help='output of --benchmark-json')
    parser.add_argument('-o', '--output', help='also write the Markdown here')
    parser.add_argument('--stat', choices=('median', 'min', 'mean'), default='median',
                        help='which statistic to compare (default: median)')
    args = parser.parse_args(argv)
    with open(args.json_file) as f:
        text = markdown(json.load(f), args.stat)
    sys.stdout.write(text)
    if args.output:
        with open(args.output, 'w') as f:
            f.write(text)


if __name__ == '__main__':
    main()
