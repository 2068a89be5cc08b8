"""When the fast reader drains, whatever wakes it.

A wake-up of a sleeping worker costs more CPU than applying a hundred
heartbeats (docs/receive-path.md), so a reader drains as data arrives while
it arrives seldom, and in batches, ``max_delay`` apart, once it arrives more
often than that.  :class:`Pacing` makes that choice; its two drivers only
wait as it says: :class:`~.loop.HubDriver` on the worker's event loop
(prefork, solo, threads) and :class:`~.green.GreenDriver` in a greenlet of
its own (gevent, eventlet).

Each ``on_*`` method returns what to do next: ``None`` to wait for the
socket to be readable (*watching*), or the number of seconds after which to
drain on a timer (*polling*).
"""
import math
import time
from collections import deque

from celery.utils.log import get_logger

__all__ = ('Pacing', 'WATCHING', 'POLLING', 'STOPPED')

logger = get_logger(__name__)

WATCHING, POLLING, STOPPED = 'watching', 'polling', 'stopped'


class Pacing:
    """The drain schedule of *reader* (its driver waits as told)."""

    def __init__(self, reader):
        self.reader = reader
        self.mode = WATCHING
        self.wakeups = {'readable': 0, 'timer': 0, 'housekeeping': 0}
        self._last_drain = float('-inf')
        # the times of the socket's last wake-ups, about a second's worth
        # at the rate where polling starts to pay
        self._woken = deque(maxlen=max(2, math.ceil(1.0 / reader.max_delay)))
        reader.watcher = self

    def on_readable(self):
        """The socket has data: drain now, or, once it wakes us more often
        than every ``max_delay`` (on average over its last ``1 / max_delay``
        wake-ups), batch: drain ``max_delay`` after the last drain."""
        self.wakeups['readable'] += 1
        woken = self._woken
        now = time.monotonic()
        woken.append(now)
        max_delay = self.reader.max_delay
        if len(woken) == woken.maxlen and now - woken[0] < (len(woken) - 1) * max_delay:
            woken.clear()
            return max(0.0, self._last_drain + max_delay - now)
        return self._drain(timed=False)

    def on_timer(self):
        """A timed drain is due."""
        self.wakeups['timer'] += 1
        return self._drain(timed=True)

    def until_housekeeping(self):
        """Seconds until a silent connection needs a drain for its own
        health checks (heartbeats, pings): 0 if it needs one now."""
        return max(0.0, self._last_drain + self.reader.housekeeping_interval()
                   - time.monotonic())

    def on_housekeeping(self):
        """Nothing arrived for a while: drain, so that the connection's own
        health checks run."""
        self.wakeups['housekeeping'] += 1
        return self._drain(timed=False)

    def _drain(self, timed):
        reader = self.reader
        before = reader.bytes_read
        try:
            reader.drain()
        except Exception as exc:  # pylint: disable=broad-except
            # drain() never raises; a driver's callback must not either
            logger.exception('gossip_fast: error draining the %s reader: %r',
                             reader.name, exc)
        self._last_drain = time.monotonic()
        if reader.retry_at is not None:      # lost the connection: back off
            return max(0.0, reader.retry_at - self._last_drain)
        if reader.backlog():                  # behind: come back soon
            return reader.catchup_delay
        if timed and reader.bytes_read != before:  # still flowing: poll on
            return reader.max_delay
        return None

    def start_reader(self, retry):
        """Connect the reader (raises if it cannot, unless *retry*: then it
        reconnects with its backoff, as after a lost connection).  Returns
        what to do first."""
        try:
            self.reader.start()
        except Exception as exc:
            if not retry:
                raise
            self.reader._failed(exc, time.monotonic())
        self._last_drain = time.monotonic()  # a fresh connection is healthy
        if self.reader.retry_at is not None:
            return max(0.0, self.reader.retry_at - self._last_drain)
        return None

    def stats(self):
        return {'mode': self.mode, 'wakeups': dict(self.wakeups)}
