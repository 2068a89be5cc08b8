"""The chart of ``gossip-fast bench --plot FILE.png``.

matplotlib is optional (the ``bench`` extra): :func:`require` says so
before a benchmark runs, and it is imported only here.
"""
import textwrap

__all__ = ('Unavailable', 'require', 'plot_report', 'INSTALL_HINT')

INSTALL_HINT = "pip install 'gossip-fast[bench]'"
LABELS = {'stock': 'stock Celery', 'python': 'gossip_fast\nfallback (python)',
          'cython': 'gossip_fast\ncompiled (cython)'}
COLORS = {'stock': '#8c8c8c', 'python': '#f28e2b', 'cython': '#4e79a7'}


class Unavailable(Exception):
    """matplotlib cannot be imported."""


def require():
    """Import matplotlib with a non-interactive backend (no display needed)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f'needs matplotlib, which is not installed ({exc}): '
                          f'{INSTALL_HINT}') from exc


def _label(value, unit, speedup):
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    text = f'{value:,.{digits}f} {unit}'
    if speedup is None:
        return text
    return f'{text}\n{speedup:,.0f}x' if speedup >= 100 else f'{text}\n{speedup:.1f}x'


def plot_report(report, path):
    """Draw :func:`gossip_fast.bench.simulate`'s *report* into *path* (PNG,
    or any format matplotlib knows from the file name)."""
    require()
    import matplotlib.pyplot as plt

    c, m, res = report['config'], report['machine'], report['results']
    impls = list(res)
    panels = [
        # key, title, unit, log scale: the sweep and per-event times span
        # three orders of magnitude between stock and the compiled core
        ('us_per_event', 'on_message: time per heartbeat', '\u00b5s', True, 'on_message'),
        ('sweep_us', f"sweep of {c['workers']:,} live workers", '\u00b5s', True, 'sweep'),
        ('bytes_per_worker', 'memory per tracked worker', 'B', False, 'memory'),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(12.5, 4.8))
    for ax, (key, title, unit, log, speed_key) in zip(axes, panels, strict=True):
        values = [res[i][key] for i in impls]
        bars = ax.bar(range(len(impls)), values, color=[COLORS.get(i, '#59a14f') for i in impls],
                      width=0.65)
        if log:
            ax.set_yscale('log')
            ax.set_ylim(min(values) / 3, max(values) * 12)
        else:
            ax.set_ylim(0, max(values) * 1.35)
        for bar, impl, value in zip(bars, impls, values, strict=True):
            speedup = res[impl].get('speedup_vs_stock', {}).get(speed_key)
            speedup = None if impl == 'stock' else speedup
            ax.annotate(_label(value, unit, speedup),
                        (bar.get_x() + bar.get_width() / 2, value),
                        xytext=(0, 3), textcoords='offset points',
                        ha='center', va='bottom', fontsize=9)
        ax.set_xticks(range(len(impls)), [LABELS.get(i, i) for i in impls], fontsize=8.5)
        ax.set_title(f"{title}\n({unit}{', log scale' if log else ''}; lower is better)",
                     fontsize=10)
        ax.grid(axis='y', alpha=0.3, which='both' if log else 'major')
        ax.set_axisbelow(True)
        for side in ('top', 'right'):
            ax.spines[side].set_visible(False)
    fig.suptitle(
        f"gossip-fast bench: {c['workers']:,} simulated workers, {c['seconds']:g} s of "
        f"cluster time ({c['heartbeats_per_repeat']:,} heartbeats, {c['transport']} "
        f"messages), best of {c['repeat']}; speedups vs stock Celery", fontsize=11)
    footer = (f"{m['cpu']} ({m['cpus']} CPUs), {m['python']}, celery {m['celery']}, "
              f"kombu {m['kombu']}, gossip_fast {m.get('gossip_fast')}. In process, "
              'one thread; on a shared machine compare the ratios.')
    stock = res.get('stock')
    if stock and stock['tracked_workers'] < c['workers']:
        footer += (f" Stock keeps only {stock['tracked_workers']:,} of "
                   f"{c['workers']:,} workers (LRU): its numbers are not comparable.")
    fig.text(0.5, 0.01, '\n'.join(textwrap.wrap(footer, 150)), ha='center',
             va='bottom', fontsize=8, color='#555555')
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
