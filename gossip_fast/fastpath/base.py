"""What every transport reader of the fast receive path does.

A reader owns one broker connection of its own.  ``start()`` opens it and
subscribes (called from ``Gossip.get_consumers``, so on every consumer
(re)start, never at construction); ``drain()`` reads what the socket has
without blocking, holds the events it parsed in a backlog (oldest first)
and applies them through ``receiver.on_raw`` for at most ``budget``
seconds (wall clock: the longest it holds the worker's event loop).  When
it cannot apply all it read, what is left waits for the next drain, which
then comes ``catchup_delay`` seconds later instead of ``max_delay``
(:mod:`.loop` decides when drains run); in that backlog, heartbeats that a
newer heartbeat of the same sender supersedes are shed (each one only
repeats the sender's liveness) and counted.  While it has a backlog,
``Gossip.periodic`` sweeps as of :attr:`Reader.caught_up_at`, the last time
the reader had applied all it had read: a peer is never declared lost
while its newer heartbeat waits in our backlog.  On a broker error it
closes the connection and reconnects with exponential backoff from later
``drain()`` calls, never by sleeping; events it had read but not applied
are applied after the reconnect.  ``stop()`` closes everything.

A transport reader implements only its framing: :meth:`Reader.connect`,
:meth:`Reader.fill` (read the socket, parse into :attr:`Reader.pending`),
:meth:`Reader.disconnect`, and :meth:`Reader.apply_other` for held items
that are not ``on_raw`` arguments.
"""
import time

from celery.utils.log import get_logger

__all__ = ('Reader', 'coalesce', 'sender', 'heartbeat_sender', 'HEARTBEAT')

logger = get_logger(__name__)


#: The routing key of the events a reader may shed.
HEARTBEAT = 'worker.heartbeat'


def sender(item):
    """The ``hostname`` header of a pending event, or None.  Readers hold
    events as ``Receiver.on_raw``'s arguments ``(routing_key, headers,
    body, content_type, content_encoding, exchange)``; anything else they
    hold (a Redis envelope for kombu to decode) has no known sender."""
    if type(item) is tuple:
        headers = item[1]
        if type(headers) is dict:
            found = headers.get('hostname')
            if type(found) is str:
                return found
    return None


def heartbeat_sender(item):
    """:func:`sender` of a pending heartbeat (``''`` if unknown), None for
    any other event."""
    if type(item) is tuple and item[0] == HEARTBEAT:
        return sender(item) or ''
    return None


def coalesce(items, heartbeat_sender, max_pending):
    """Shed heartbeats from the backlog *items* (oldest first, in order).

    Returns ``(kept, shed)``: *items* without each heartbeat that a later
    heartbeat of the same sender supersedes, then, if more than
    *max_pending* remain, without the oldest heartbeats beyond that (a
    memory bound for a backlog of more distinct senders than that).
    ``heartbeat_sender(item)`` is the sender of a heartbeat (``''`` if
    unknown: never superseded, but trimmed), None for any other item: those
    are always kept, in their order.
    """
    kept = []
    seen = set()
    shed = 0
    for item in reversed(items):
        sender = heartbeat_sender(item)
        if sender:
            if sender in seen:
                shed += 1
                continue
            seen.add(sender)
        kept.append(item)
    kept.reverse()
    excess = len(kept) - max_pending
    if excess > 0:
        trimmed = []
        for item in kept:
            if excess > 0 and heartbeat_sender(item) is not None:
                excess -= 1
                shed += 1
                continue
            trimmed.append(item)
        kept = trimmed
    return kept, shed


def _identity(item):
    return item


class Reader:
    #: Longest time one drain() may spend reading and applying (seconds).
    budget = 0.02
    #: Wait before the next drain() while a backlog is left (seconds).
    catchup_delay = 0.01
    #: Events applied by a drain before it looks at the clock; then it
    #: looks every 8 events.
    min_apply = 32
    #: Smallest backlog worth a pass of shed_superseded().
    coalesce_min = 1024
    #: Most heartbeats kept in the backlog, after superseded ones are shed
    #: (one per sender): a memory bound, reached only when this many
    #: distinct senders wait (see docs/internals.md for their size).
    #: Below the cluster's size it would shed live peers' only heartbeats.
    max_pending = 250000
    #: Reconnect backoff: first wait, cap (seconds).
    backoff_start = 0.5
    backoff_max = 30.0
    #: Name of the path in the stats.
    name = 'fast'

    def __init__(self, gossip, channel, queue, max_delay=0.25):
        self.gossip = gossip
        self.receiver = gossip._receiver
        self.channel = channel           # the consumer's own kombu channel
        self.connection = channel.connection.client  # its kombu Connection
        self.queue = queue               # the stock Receiver's kombu Queue
        self.max_delay = max_delay
        #: Events read and not applied yet (oldest first).
        self.pending = []
        #: Whether the last fill() stopped before the socket ran dry.
        self.unread = False
        #: Told before the socket closes, and when a new one is ready
        #: (the event-loop driver of :mod:`.loop`, or None).
        self.watcher = None
        self.received = 0
        self.shed = 0
        self.reconnects = 0
        self.errors = 0
        self.batches = 0
        self.bytes_read = 0
        self.longest_drain = 0.0
        self.handler_errors = 0
        self._coalesce_at = 0  # backlog size for the next shedding pass
        # the compiled core has the same pass, compiled (src/shedding.pyx)
        core = getattr(gossip, 'core', None)
        self._coalesce = getattr(core, 'coalesce', coalesce)
        # held events out of the cyclic GC's sight (see the core's held())
        self.held = getattr(core, 'held', _identity)
        self.retry_at = None  # monotonic time of the next reconnect attempt
        self._backoff = None  # the next wait; backoff_start at first
        self._stopped = False
        self._sock = None
        #: Wall-clock time when the reader last had nothing held or unread:
        #: every event it had read by then was applied.
        self.caught_up_at = time.time()

    # -- to implement -------------------------------------------------------

    def connect(self):
        """Open the connection and subscribe (setting :attr:`sock`); raise
        on failure."""
        raise NotImplementedError

    def fill(self, deadline):
        """Read what the socket has without blocking and parse it into
        :attr:`pending` (as ``self.held(on_raw arguments)``); set
        :attr:`unread` if it stopped before the socket ran dry; raise on a
        broken connection (after keeping what it parsed)."""
        raise NotImplementedError

    def disconnect(self):
        """Close the connection (must not raise)."""
        raise NotImplementedError

    def apply_other(self, item):
        """Apply a held item that is not ``on_raw``'s arguments."""
        raise TypeError(f'{self.name} reader holds no such item: {item!r}')

    def housekeeping_interval(self):
        """Longest time between drains while nothing arrives: the
        connection's own health checks (heartbeats, pings) run in drains."""
        return 30.0

    # -- the socket -----------------------------------------------------------

    @property
    def sock(self):
        """The connected socket, or None."""
        return self._sock

    @sock.setter
    def sock(self, sock):
        self._sock = sock
        if sock is not None and self.watcher is not None:
            self.watcher.socket_ready(sock)

    def close(self):
        """Tell the watcher, then close the connection (never raises)."""
        sock = self._sock
        if sock is not None and self.watcher is not None:
            self.watcher.socket_closing(sock)
        try:
            self.disconnect()
        finally:
            self._sock = None

    # -- lifecycle --------------------------------------------------------------

    def start(self):
        self._stopped = False
        self.connect()
        self.caught_up_at = time.time()

    def stop(self):
        self._stopped = True  # a late drain() must not reconnect
        self.retry_at = None
        self.close()
        self.pending = []

    def drain(self):
        """Read, then apply until the budget is spent; never raises, never
        blocks for long.  Returns the number of events applied."""
        started = time.monotonic()
        if self._stopped:
            return 0
        if self.retry_at is not None:
            if started < self.retry_at:
                return 0
            try:
                self.connect()
            except Exception as exc:
                self._failed(exc, started)
                return 0
            self.retry_at = None
            self._backoff = None
            self.reconnects += 1
            logger.info('gossip_fast: %s reader reconnected', self.name)
        wall = time.time()
        try:
            count = self.read(started + self.budget)
        except Exception as exc:  # the broker went away, or worse
            self._failed(exc, started)
            return 0
        if not self.backlog():
            self.caught_up_at = wall  # all it read (by then, at least) applied
        elapsed = time.monotonic() - started
        self.batches += 1
        self.received += count
        if elapsed > self.longest_drain:
            self.longest_drain = elapsed
        return count

    def read(self, deadline):
        """fill(), then apply held events until *deadline*; returns the
        number applied.  Raises what fill() raised, after applying what it
        had read."""
        failure = None
        try:
            self.fill(deadline)
        except Exception as exc:  # apply what we have, then report it
            failure = exc
        count = self.apply_pending(deadline) if self.pending else 0
        if failure is not None:
            self.received += count  # applied before the failure
            raise failure
        return count

    def backlog(self):
        """True if the last drain left events to apply or bytes unread."""
        return bool(self.pending) or self.unread

    # -- the backlog ------------------------------------------------------------------

    def apply_pending(self, deadline):
        """Apply held events, oldest first, until *deadline* (looked at
        after ``min_apply`` events, then every 8: ``Receiver.apply_held``,
        compiled in the Cython core); then shed from what is left.  Returns
        the number applied."""
        items = self.pending
        done = self.receiver.apply_held(items, deadline, self.min_apply,
                                        self.apply_other, self.item_error)
        del items[:done]  # in place: a copy of a big backlog per drain is O(backlog)
        if items:
            self.shed_superseded(items)
        return done

    def shed_superseded(self, pending):
        """Over budget: keep what is left for the next drain(), but for the
        heartbeats that a newer one of the same sender supersedes (and,
        past ``max_pending``, the oldest heartbeats); in place.

        A pass costs one step per held event, so it runs only once the
        backlog has doubled since the last one (and holds at least
        ``coalesce_min``): amortized, a constant per event, instead of a
        pass over a big backlog after every drain while behind."""
        if len(pending) < max(self._coalesce_at, self.coalesce_min):
            return
        kept, shed = self._coalesce(pending, heartbeat_sender, self.max_pending)
        self._coalesce_at = 2 * len(kept)
        if shed:
            self.shed += shed
            pending[:] = kept

    def item_error(self, exc):
        """on_raw counts and logs bad input itself: an exception is a bug."""
        self.handler_errors += 1
        logger.exception('gossip_fast: error handling an event: %r', exc)

    def bad_input(self, reason, detail):
        """Input that never became an event (a broken envelope): counted
        and logged, rate-limited, by the step, as all bad input."""
        self.gossip._reject(reason, None, detail)

    # -- failures -------------------------------------------------------------------

    def _failed(self, exc, now):
        self.errors += 1
        self.close()
        wait = self._backoff or self.backoff_start
        logger.warning('gossip_fast: %s reader lost its connection (%r); '
                       'retrying in %.1f s', self.name, exc, wait)
        self.retry_at = now + wait
        self._backoff = min(wait * 2, self.backoff_max)

    def stats(self):
        stats = {
            'path': self.name,
            'max_delay': self.max_delay,
            'received': self.received,
            'pending': len(self.pending),
            'shed': self.shed,
            'reconnects': self.reconnects,
            'errors': self.errors,
            'batches': self.batches,
            'bytes_read': self.bytes_read,
            'longest_drain_ms': round(self.longest_drain * 1000, 3),
            'behind_s': round(time.time() - self.caught_up_at, 3) if self.backlog() else 0.0,
        }
        if self.handler_errors:
            stats['handler_errors'] = self.handler_errors
        return stats
