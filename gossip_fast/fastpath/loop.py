"""When the fast reader drains: on the worker's event loop, woken by data.

Each turn of the worker's event loop (kombu's ``Hub``) costs more CPU than
applying a hundred heartbeats (mostly because a process woken from sleep
runs on cold caches: see docs/receive-path.md for the measurements), so
the reader wakes the loop no more often than gossip needs, and never when
nothing arrives:

* **watching**: the reader's socket is registered with the hub and no timer
  is set.  A readable socket is drained at once: at low rates an event
  costs one turn, as it does with stock Celery, and no added delay.
* **polling**: once the socket wakes the loop more often than every
  ``max_delay`` (on average over its last ``1 / max_delay`` wake-ups), it
  is unwatched and drains run on the timer instead,
  ``max_delay`` apart (``catchup_delay`` while the reader has a backlog):
  under load the loop turns ``1 / max_delay`` times a second whatever the
  rate, and an event waits at most ``max_delay``.  A timed drain that
  finds nothing goes back to watching.
* **housekeeping**: one slow repeating timer (:meth:`Reader.housekeeping_interval`:
  the connection's heartbeat or health-check period) drains a reader that
  has not drained for that long, so heartbeats are sent and a silent broker
  is noticed while nothing arrives.
* **reconnecting**: after a lost connection the socket is gone (unwatched
  before it closed, so its file descriptor number can be reused by anyone);
  a timer retries at the reader's backoff time, then watching resumes on
  the new socket.

Only pools whose worker runs kombu's hub have one (prefork, solo, threads);
for gevent and eventlet, :func:`gossip_fast.fastpath.select` keeps kombu's
consumer, which kombu's blocking loop wakes on data too.
"""
import math
import time
from collections import deque

from celery.utils.log import get_logger

__all__ = ('HubDriver',)

logger = get_logger(__name__)

WATCHING, POLLING, STOPPED = 'watching', 'polling', 'stopped'


class HubDriver:
    """Drains *reader* from the worker's event loop *hub*."""

    def __init__(self, reader, hub):
        self.reader = reader
        self.hub = hub
        self.timer = hub.timer
        self.mode = WATCHING
        self.wakeups = {'readable': 0, 'timer': 0, 'housekeeping': 0}
        self._fd = None           # registered with the hub, for ...
        self._sock = None         # ... this socket
        self._tref = None         # the next timed drain
        self._housekeeping = None
        self._last_drain = float('-inf')
        # the times of the socket's last wake-ups, about a second's worth
        # at the rate where polling starts to pay
        self._woken = deque(maxlen=max(2, math.ceil(1.0 / reader.max_delay)))
        reader.watcher = self

    # -- lifecycle ---------------------------------------------------------------

    def start(self, retry=False):
        """Connect the reader (raises if it cannot, unless *retry*: then
        it reconnects with its backoff, as after a lost connection) and
        watch its socket."""
        try:
            self.reader.start()
        except Exception as exc:
            if not retry:
                raise
            self.reader._failed(exc, time.monotonic())
        self._last_drain = time.monotonic()  # a fresh connection is healthy
        self._housekeeping = self.timer.call_repeatedly(
            self.reader.housekeeping_interval(), self._on_housekeeping)
        if self.reader.retry_at is not None:
            self._poll(max(0.0, self.reader.retry_at - self._last_drain))
        else:
            self._watch()

    def wake(self):
        """Drain soon (from the timer): the reader changed its connection
        outside a drain (a failed resubscription, for one)."""
        if self.mode != STOPPED:
            self._poll(0.0)

    def stop(self):
        """Unwatch, cancel the timers, stop the reader (closes its socket)."""
        self.mode = STOPPED
        self._cancel()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        self._unwatch()
        self.reader.stop()
        self.reader.watcher = None

    # -- the reader tells us about its socket ------------------------------------------

    def socket_ready(self, sock):
        """A new connection: watch it (unless polling, or stopped)."""
        if self.mode == WATCHING:
            self._watch()

    def socket_closing(self, sock):
        """Before *sock* closes: its descriptor must leave the hub first."""
        if sock is self._sock:
            self._unwatch()

    # -- wake-ups ------------------------------------------------------------------------

    def _on_readable(self):
        self.wakeups['readable'] += 1
        woken = self._woken
        now = time.monotonic()
        woken.append(now)
        max_delay = self.reader.max_delay
        if len(woken) == woken.maxlen and now - woken[0] < (len(woken) - 1) * max_delay:
            # the socket wakes the loop more often than every max_delay:
            # batch, starting from the last drain
            woken.clear()
            self._poll(max(0.0, self._last_drain + max_delay - now))
        else:
            self._drain(timed=False)

    def _on_timer(self):
        self._tref = None
        self.wakeups['timer'] += 1
        self._drain(timed=True)

    def _on_housekeeping(self):
        if (self.mode != STOPPED and time.monotonic() - self._last_drain
                >= self.reader.housekeeping_interval()):
            self.wakeups['housekeeping'] += 1
            self._drain(timed=False)

    def _drain(self, timed):
        reader = self.reader
        before = reader.bytes_read
        try:
            reader.drain()
        except Exception as exc:  # pylint: disable=broad-except
            # drain() never raises; a hub callback must not either
            logger.exception('gossip_fast: error draining the %s reader: %r',
                             reader.name, exc)
        self._last_drain = time.monotonic()
        if self.mode == STOPPED:
            return
        if reader.retry_at is not None:      # lost the connection: back off
            self._poll(max(0.0, reader.retry_at - self._last_drain))
        elif reader.backlog():                # behind: come back soon
            self._poll(reader.catchup_delay)
        elif timed and reader.bytes_read != before:  # still flowing: poll on
            self._poll(reader.max_delay)
        else:
            self.mode = WATCHING
            self._watch()

    # -- modes -----------------------------------------------------------------------------

    def _poll(self, delay):
        self.mode = POLLING
        self._unwatch()
        self._cancel()
        self._tref = self.timer.call_after(delay, self._on_timer)

    def _watch(self):
        self._cancel()
        sock = self.reader.sock
        if sock is self._sock:
            return
        self._unwatch()
        if sock is not None:
            fd = sock.fileno()
            self.hub.add_reader(fd, self._on_readable)
            self._fd, self._sock = fd, sock

    def _unwatch(self):
        fd, self._fd, self._sock = self._fd, None, None
        if fd is not None:
            self.hub.remove_reader(fd)

    def _cancel(self):
        tref, self._tref = self._tref, None
        if tref is not None:
            tref.cancel()

    def stats(self):
        return {'mode': self.mode, 'wakeups': dict(self.wakeups)}
