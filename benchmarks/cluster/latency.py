"""Publish-to-applied latency of gossip heartbeats, and its percentiles.

The publisher stamps each heartbeat's ``timestamp`` with ``time.time()``
when it renders it (``publisher.py``, both modes); stock Celery and
gossip_fast keep, for every tracked worker, the last event's ``timestamp``
and the time it was applied (``heartbeats[-1]``, the event's
``local_received``).  Publisher and workers share the machine, hence the
clock: ``heartbeats[-1] - timestamp`` is how long the heartbeat took from
the publisher to the worker's table.

:class:`LatencySampler` runs in the worker (``app.py``), in its own
thread, only while the controller asks for it: every ``period`` seconds,
shorter than the peers' 2 s heartbeat period, it looks at each of the
given simulated peers and takes one sample per new ``heartbeats[-1]``.
The sample does not depend on when it is taken, only on the two stamps.
"""
import json
import math
import os
import threading
import time

__all__ = ('LatencySampler', 'percentile', 'summarize')

PERIOD = 0.25        # s between looks at the tracked peers (< the 2 s heartbeat period)


class LatencySampler(threading.Thread):
    """Samples ``heartbeats[-1] - timestamp`` of *hosts* for *seconds*,
    then writes ``{"id", "samples_ms", ...}`` to *out_path*."""

    def __init__(self, table_of, request, out_path):
        super().__init__(name='bench-latency', daemon=True)
        self.table_of = table_of          # () -> {hostname: Worker}, the gossip state's table
        self.request = request
        self.out_path = out_path
        self.tid = None

    def run(self):
        self.tid = threading.get_native_id()
        req = self.request
        hosts = list(req['hosts'])
        last = {}                          # hostname -> heartbeats[-1] already seen
        samples = []
        started = time.time()
        deadline = time.monotonic() + float(req['seconds'])
        while True:
            table = self.table_of()
            if table is not None:
                for host in hosts:
                    self._look(table, host, last, samples)
            if time.monotonic() >= deadline:
                break
            time.sleep(float(req.get('period', PERIOD)))
        self._write({'id': req['id'], 'started': started, 'ended': time.time(),
                     'hosts': len(hosts), 'hosts_seen': len(last),
                     'samples_ms': [round(1e3 * s, 3) for s in samples]})

    @staticmethod
    def _look(table, host, last, samples):
        """One sample if *host* has a heartbeat not seen before (the first
        one seen, applied before the window, only sets the mark)."""
        worker = table.get(host)
        if worker is None:
            return
        try:
            beats = worker.heartbeats
            if not beats or beats[-1] == last.get(host):
                return
            received = beats[-1]
            # read only now: gossip_fast decodes a peer's last event on first
            # access to its fields, so reading them every round would add work
            timestamp = float(worker.timestamp)
            if worker.heartbeats[-1] != received:
                return  # a newer one landed meanwhile: taken next round
        except (AttributeError, IndexError, TypeError, ValueError):
            return
        if host in last:
            samples.append(received - timestamp)
        last[host] = received

    def _write(self, result):
        tmp = f'{self.out_path}.tmp'
        with open(tmp, 'w') as f:
            json.dump(result, f)
        os.replace(tmp, self.out_path)


def percentile(ordered, q):
    """The *q*-th percentile (0-100) of the sorted list *ordered*, linearly
    interpolated between the closest ranks (numpy's default)."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples_ms):
    """Count, p50, p90, p99 and max of latencies in ms."""
    ordered = sorted(samples_ms)
    return {'samples': len(ordered),
            'p50_ms': percentile(ordered, 50), 'p90_ms': percentile(ordered, 90),
            'p99_ms': percentile(ordered, 99),
            'max_ms': ordered[-1] if ordered else None,
            'min_ms': ordered[0] if ordered else None}
