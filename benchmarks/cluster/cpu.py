"""CPU time of one process, as precisely as the operating system tells it.

psutil's ``cpu_times()`` counts in clock ticks (10 ms on Linux): an idle
worker spends a few ms a second, so a 10 s window would read 0.05 s +- 0.01.
On Linux the scheduler keeps every thread's time on CPU in nanoseconds
(``/proc/<pid>/task/<tid>/schedstat``, first field): :class:`ProcessCPU`
sums it over the process's threads.  Elsewhere, or when /proc cannot be
read, it falls back to psutil.

A window's CPU is the sum, over threads, of what each spent between two
readings (:func:`delta`): a thread started in the window counts from zero,
and one that ended in the window loses its last part (it is counted, so a
report can say so; the benchmark's workers keep their threads for life).
"""
import os

import psutil

__all__ = ('ProcessCPU', 'delta', 'METHODS')

#: What :attr:`ProcessCPU.method` may be, and how the report words it.
METHODS = {
    'schedstat': 'Linux /proc/<pid>/task/*/schedstat: ns on CPU, summed over the '
                 'process\'s threads',
    'psutil': 'psutil cpu_times() user+system (clock ticks: 10 ms on Linux)',
}


class ProcessCPU:
    """Reads the CPU time of process *pid* (its main process, all threads)."""

    def __init__(self, pid):
        self.pid = pid
        self.ps = psutil.Process(pid)
        self.method = 'schedstat' if self._schedstat() is not None else 'psutil'

    def read(self):
        """``{thread id: ns on CPU}`` (psutil: one entry for the process)."""
        if self.method == 'schedstat':
            threads = self._schedstat()
            if threads is not None:
                return threads
            # the process is gone: let psutil raise the usual error
        t = self.ps.cpu_times()
        return {'process': int(round((t.user + t.system) * 1e9))}

    def seconds(self):
        """Total CPU seconds of the threads alive now."""
        return sum(self.read().values()) / 1e9

    def _schedstat(self):
        folder = f'/proc/{self.pid}/task'
        try:
            tids = os.listdir(folder)
        except OSError:
            return None
        threads = {}
        for tid in tids:
            try:
                with open(f'{folder}/{tid}/schedstat', 'rb') as f:
                    threads[tid] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended between listdir() and open()
        return threads or None


def delta(before, after):
    """CPU seconds spent between two :meth:`ProcessCPU.read` results, and
    how many threads ended in between (their last part is missing)."""
    ns = 0
    for tid, value in after.items():
        ns += value - before.get(tid, 0)
    ended = sum(1 for tid in before if tid not in after)
    return ns / 1e9, ended
