"""The fast reader on the worker's event loop (kombu's ``Hub``).

Prefork, solo and threads workers run kombu's hub.  :class:`HubDriver`
waits as :class:`~.pacing.Pacing` says, with the hub's own means, and never
wakes the loop when nothing arrives:

* **watching**: the reader's socket is registered with the hub and no timer
  is set.  A readable socket is drained at once: at low rates an event
  costs one turn, as it does with stock Celery, and no added delay.
* **polling**: once the socket wakes the loop more often than every
  ``max_delay``, it is unwatched and drains run on the hub's timer instead,
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

The gevent and eventlet pools have no hub: :mod:`.green` drives the reader
there.
"""
from .pacing import POLLING, STOPPED, WATCHING, Pacing

__all__ = ('HubDriver',)


class HubDriver(Pacing):
    """Drains *reader* from the worker's event loop *hub*."""

    def __init__(self, reader, hub):
        super().__init__(reader)
        self.hub = hub
        self.timer = hub.timer
        self._fd = None           # registered with the hub, for ...
        self._sock = None         # ... this socket
        self._tref = None         # the next timed drain
        self._housekeeping = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self, retry=False):
        """Connect the reader (see :meth:`Pacing.start_reader`) and watch
        its socket."""
        first = self.start_reader(retry)
        self._housekeeping = self.timer.call_repeatedly(
            self.reader.housekeeping_interval(), self._on_housekeeping)
        self._follow(first)

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
        self._follow(self.on_readable())

    def _on_timer(self):
        self._tref = None
        self._follow(self.on_timer())

    def _on_housekeeping(self):
        if self.mode != STOPPED and self.until_housekeeping() == 0:
            self._follow(self.on_housekeeping())

    def _follow(self, delay):
        """Do what the pacing said: watch (None) or drain after *delay*."""
        if self.mode == STOPPED:
            return
        if delay is None:
            self.mode = WATCHING
            self._watch()
        else:
            self._poll(delay)

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
