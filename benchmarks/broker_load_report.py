"""Tables and plot of the broker-load benchmark (``benchmarks/broker_load.py``)."""
import json
import os

LABELS = {'redis': 'Redis', 'amqp': 'RabbitMQ'}


def _f(value, fmt='{:,.1f}', none='-'):
    return none if value is None else fmt.format(value)


def _points(results, broker, mode):
    return {p['subscribers']: p for p in results['points']
            if p['broker'] == broker and p['mode'] == mode and 'error' not in p}


def criteria(results):
    """digest(max S) / digest(1) per broker: the issue's flatness criterion."""
    out = {}
    for broker in results.get('brokers', {}):
        digest = _points(results, broker, 'digest')
        stock = _points(results, broker, 'stock')
        if 1 in digest and len(digest) > 1:
            top = max(digest)
            entry = {'subscribers': top}
            for key in ('us_per_heartbeat', 'us_per_heartbeat_net'):
                low, high = digest[1].get(key), digest[top].get(key)
                entry[key] = (high / low) if low and high is not None else None
            out[broker] = entry
        if len(stock) > 1 and 1 in stock:
            top = max(stock)
            low, high = stock[1].get('us_per_heartbeat_net'), stock[top].get('us_per_heartbeat_net')
            if low is not None and high is not None and top > 1:
                out.setdefault(broker, {})['stock_us_per_subscriber'] = (high - low) / (top - 1)
    return out


def markdown(results):
    m = results['machine']
    lines = [
        '# Broker load: stock gossip vs digest mode',
        '',
        f'Run of {m["date"]} ({results["mode"]}, {results.get("elapsed_seconds", 0):.0f} s) on '
        f'{m["cpu_model"]}, {m["cores"]} cores, {m["memory_gb"]} GB, {m["platform"]}; '
        f'Python {m["python"]}; Redis {m["broker_packages"].get("redis-server")}, '
        f'RabbitMQ {m["broker_packages"].get("rabbitmq-server")} '
        f'(Erlang {m["broker_packages"].get("erlang-base")}); kombu {m["versions"].get("kombu")}, '
        f'celery {m["versions"].get("celery")}.  Load average at start: '
        f'{", ".join(f"{x:.2f}" for x in m["loadavg_start"])}.',
        '',
        'Regenerate: `scripts/broker-load-bench.sh` (method: `benchmarks/broker_load.py`; '
        'design: `docs/digest-mode.md`).  Heartbeats published byte for byte as Celery 5.7 '
        'sends them, at the rate shown, to S subscribing workers, each on its own '
        'connection.  *stock*: every worker subscribes as Celery\'s Gossip does (Redis '
        'PSUBSCRIBE `/0.celeryev/worker.*`; RabbitMQ a queue bound `worker.#`).  *digest*: '
        f'{results["design"]["relays"]} relay(s) subscribe so, the other workers only to the '
        'election keys, the digest and their own snapshot key, with the relays\' digest, '
        'announce and snapshot traffic simulated at the designed rate and size.  Broker '
        'CPU is the broker\'s whole process tree (the scheduler\'s ns counters) over each '
        'window (median of the windows), per heartbeat '
        'published in it; *net* subtracts the broker\'s idle CPU with the same subscribers '
        'connected (measured just before).  Deliveries are counted by the subscribers.',
        '',
    ]
    for broker, info in results.get('brokers', {}).items():
        label = LABELS.get(broker, broker)
        wire = info.get('wire') or {}
        lines += [f'## {label}', '',
                  f'Wire check: {"OK" if wire.get("ok") else "NOT OK"} ({wire.get("detail", "-")}).', '',
                  '| S | stock: rate (hb/s) | stock: broker CPU per heartbeat, net (total) | '
                  'stock: deliveries/s | digest: rate | digest: broker CPU per heartbeat, '
                  'net (total) | digest: deliveries/s | stock ÷ digest (net) |',
                  '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
        stock, digest = _points(results, broker, 'stock'), _points(results, broker, 'digest')
        for s in sorted(set(stock) | set(digest)):
            a, b = stock.get(s, {}), digest.get(s, {})
            ratio = None
            if a.get('us_per_heartbeat_net') and b.get('us_per_heartbeat_net'):
                ratio = a['us_per_heartbeat_net'] / b['us_per_heartbeat_net']
            lines.append(
                f'| {s} | {_f(a.get("rate_published"), "{:,.0f}")} | '
                f'{_f(a.get("us_per_heartbeat_net"))} us ({_f(a.get("us_per_heartbeat"))}) | '
                f'{_f(a.get("deliveries_per_s"), "{:,.0f}")} | '
                f'{_f(b.get("rate_published"), "{:,.0f}")} | '
                f'{_f(b.get("us_per_heartbeat_net"))} us ({_f(b.get("us_per_heartbeat"))}) | '
                f'{_f(b.get("deliveries_per_s"), "{:,.0f}")} | {_f(ratio, "{:,.1f}x")} |')
        lines += ['', 'Load during the windows (broker CPU in % of one core; machine busy in % '
                      'of all cores; the subscribers and the publisher run on the same machine):',
                  '',
                  '| S | mode | broker CPU | broker idle | net us/hb, windows (min-max) | '
                  'delivered (% of expected) | subscribers\' CPU | publisher CPU | '
                  'machine busy (idle window) | load avg | MB/s read |',
                  '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
        exact = _points(results, broker, 'exact')
        for s in sorted(set(stock) | set(digest) | set(exact)):
            for mode, pts in (('stock', stock), ('exact', exact), ('digest', digest)):
                p = pts.get(s)
                if not p:
                    continue
                lines.append(
                    f'| {s} | {mode} | {_f(p["broker_cpu_pct"])}% | {_f(p["broker_idle_pct"], "{:.2f}")}% | '
                    f'{_f(p["us_per_heartbeat_net_range"][0])}-{_f(p["us_per_heartbeat_net_range"][1])} | '
                    f'{_f(p["delivered_pct"], "{:.0f}")}% | '
                    f'{_f(p["subscriber_cpu_pct"])}% | {_f(p["publisher_cpu_pct"])}% | '
                    f'{_f(p["machine_busy_pct"], "{:.0f}")}% ({_f(p["machine_busy_idle_pct"], "{:.0f}")}%) | '
                    f'{_f(p["loadavg"], "{:.2f}")} | {_f(p["subscriber_mb_per_s"])} |')
        traffic = [(s, p['digest_traffic']) for s, p in sorted(digest.items()) if p.get('digest_traffic')]
        if traffic:
            s, t = traffic[-1]
            sizes = t.get('first_size', {})
            lines += ['', f'Digest traffic simulated at S={s} (messages/s published; size of the '
                          'first of each kind): ' + ', '.join(
                              f'{k} {_f(v, "{:,.2f}")}/s ({sizes.get(k, "-")} B)'
                              for k, v in t['per_s'].items()) + '.']
        if exact:
            lines += ['', '*exact*: the stock stream delivered through SUBSCRIBE of the heartbeat '
                          'channel (Redis) / a binding of `worker.heartbeat` (RabbitMQ) instead of '
                          'the pattern, same number of deliveries: ' + ', '.join(
                              f'S={s}: {_f(p["us_per_heartbeat_net"])} us net per heartbeat '
                              f'(stock {_f(stock.get(s, {}).get("us_per_heartbeat_net"))})'
                              for s, p in sorted(exact.items())) + '.']
        errors = [p for p in results['points'] if p['broker'] == broker and 'error' in p]
        for p in errors:
            lines.append(f'\nFAILED: {p["mode"]} S={p["subscribers"]}: {p["error"]}')
        lines.append('')
    crit = criteria(results)
    if crit:
        lines += ['## Flatness', '']
        for broker, c in crit.items():
            label = LABELS.get(broker, broker)
            parts = []
            if c.get('us_per_heartbeat') is not None:
                parts.append(f'digest mode at S={c["subscribers"]} costs '
                             f'{c["us_per_heartbeat"]:.2f}x its cost at S=1 per heartbeat '
                             f'({c["us_per_heartbeat_net"]:.2f}x net of idle)')
            if c.get('stock_us_per_subscriber') is not None:
                parts.append(f'stock grows {c["stock_us_per_subscriber"]:.2f} us per heartbeat '
                             f'per added subscriber (net)')
            lines.append(f'- {label}: ' + '; '.join(parts) + '.')
        lines.append('')
    if results.get('interrupted'):
        lines.append('**Interrupted**: partial results.\n')
    return '\n'.join(lines)


def plot(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    brokers = list(results.get('brokers', {}))
    if not brokers:
        return None
    fig, axes = plt.subplots(2, len(brokers), figsize=(5.5 * len(brokers), 8), squeeze=False)
    for col, broker in enumerate(brokers):
        for mode, style in (('stock', 'o-'), ('exact', 'x--'), ('digest', 's-')):
            pts = _points(results, broker, mode)
            xs = sorted(pts)
            if not xs:
                continue
            axes[0][col].plot(xs, [pts[x]['us_per_heartbeat_net'] for x in xs], style, label=mode)
            axes[1][col].plot(xs, [pts[x]['deliveries_per_heartbeat'] for x in xs], style, label=mode)
        label = LABELS.get(broker, broker)
        axes[0][col].set_title(f'{label}: broker CPU per published heartbeat')
        axes[0][col].set_ylabel('us (net of idle)')
        axes[1][col].set_title(f'{label}: deliveries per published heartbeat')
        axes[1][col].set_ylabel('deliveries')
        for row in (0, 1):
            ax = axes[row][col]
            ax.set_xlabel('subscribing workers (S)')
            ax.set_yscale('log')
            ax.grid(True, which='both', alpha=0.3)
            ax.legend()
    m = results['machine']
    fig.suptitle(f'gossip broker load, stock vs digest mode ({m["cores"]} cores, {m["date"][:10]})')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_all(results, out_dir):
    paths = {'json': os.path.join(out_dir, 'broker-load.json'),
             'md': os.path.join(out_dir, 'broker-load.md'),
             'png': os.path.join(out_dir, 'broker-load.png')}
    results['criteria'] = criteria(results)
    with open(paths['json'], 'w') as f:
        json.dump(results, f, indent=1, default=str)
    with open(paths['md'], 'w') as f:
        f.write(markdown(results))
    try:
        plot(results, paths['png'])
    except Exception as exc:  # a missing matplotlib must not lose the numbers
        paths.pop('png')
        print(f'plot failed: {exc!r}', flush=True)
    return paths
