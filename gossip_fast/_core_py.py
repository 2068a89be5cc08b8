"""Pure-Python hot path of gossip_fast (the fallback of ``src/_core.pyx``).

This module and the Cython module ``gossip_fast._core`` implement the same
classes with the same behaviour; ``tests/test_differential.py`` holds them
(and stock Celery, where stock is correct) to the same results, and
``tests/test_parity.py`` to the same names and signatures.  What both use
as is (limits, names, the rare paths, the small methods) is written once in
``gossip_fast/_common.py``; what is here is what this one does in Python
and the compiled one in C.  Keep the two in step: same order of checks,
same rejection reasons.

- :class:`Clock`: the app's Lamport clock, hardened against poisoned values.
- :class:`Worker`: one tracked peer, with the attributes of
  ``celery.events.state.Worker``.
- :class:`State`: the table of peers, its deadline wheel and the sweep.
- :class:`Receiver`: ``Gossip.on_message``: routing, decoding, the clock
  rules of ``event_from_message`` and the state update.
"""
import bisect
import heapq
import threading
import time
from decimal import Decimal

from . import _common
from ._common import (  # noqa: F401 - the limits both cores export
    CLOCK_CEILING,
    DEFAULT_FIELDS,
    DRIFT_MAX,
    EXPIRE_FACTOR,
    MAX_FREQ,
    MAX_PEER_CLOCK,
    MAX_TIME,
    REJECTED,
    RESERVED_FIELDS,
    SLOTS_PER_SECOND,
    valid_peer_clock,
)

__all__ = _common.CORE_ALL

_JSON = _common.JSON
_fast_json = _common.fast_json


def as_seconds(value, upper):
    """*value* as a float in (0, upper], else None (NaN, Infinity, bools,
    strings and other types included).  Decimals come from kombu's JSON."""
    kind = type(value)
    if kind is float:
        number = value
    elif kind is int or kind is Decimal:
        if not 0 < value <= upper:
            return None
        number = float(value)
    else:
        return None
    return number if 0.0 < number <= upper else None


def _has_type_marker(body):
    """True if raw JSON may hold kombu's ``__type__`` objects: they are
    nested objects, so a body without a second '{' has none."""
    return body.find(b'{', 1) != -1 and b'__type__' in body


class Clock:
    """Lamport clock with the API of :class:`kombu.clocks.LamportClock`.

    Unlike kombu's clock it only takes integers in ``[0, 2**62]`` from
    peers; anything else (floats, Infinity, 1e30, Decimals, strings) forwards
    the clock instead and is counted in :attr:`rejected`.  The value always
    stays an ``int`` in ``[0, 2**63)``.
    """

    def __init__(self, initial_value=0, Lock=threading.Lock):
        self.mutex = Lock()
        self.rejected = 0
        self.value = initial_value

    value = _common.clock_value

    def adjust(self, other):
        # the check inline: this runs once per received event
        if type(other) is not int or not 0 <= other <= MAX_PEER_CLOCK:
            with self.mutex:
                self.rejected += 1
                if self._value < CLOCK_CEILING:
                    self._value += 1
                return self._value
        with self.mutex:
            value = self._value
            value = (other if other > value else value) + 1
            if value > CLOCK_CEILING:  # only from the ceiling itself
                value = CLOCK_CEILING
            self._value = value
            return value

    def forward(self):
        with self.mutex:
            value = self._value
            if value < CLOCK_CEILING:
                value = self._value = value + 1
            return value

    sort_heap = _common.sort_heap

    def __str__(self):
        return str(self._value)

    def __repr__(self):
        return f'<{type(self).__name__}: {self._value}>'


class Worker:
    """A tracked peer.

    Has every attribute of ``celery.events.state.Worker`` (``hostname``,
    ``pid``, ``freq``, ``heartbeats``, ``clock``, ``active``, ``processed``,
    ``loadavg``, ``sw_*``, ``alive``, ``heartbeat_expires``, ``id``) and any
    other field the peer sent, as attributes.
    """

    __slots__ = ('_hb', '_freq', '_expires', '_slot', '_drift_warned',
                 '__dict__', '__weakref__')
    heartbeat_max = _common.HEARTBEAT_MAX
    expire_window = _common.EXPIRE_WINDOW

    def __init__(self, hostname=None):
        self.__dict__.update(DEFAULT_FIELDS)
        self.__dict__['hostname'] = hostname
        self._hb = []
        self._freq = 60.0
        self._expires = 0.0
        self._slot = -1
        self._drift_warned = False

    @property
    def heartbeats(self):
        """Receive times of the last (at most 4) heartbeats, ascending."""
        return list(self._hb)

    @property
    def heartbeat_expires(self):
        return self._hb[-1] + self._freq * EXPIRE_FACTOR

    @property
    def alive(self):
        return bool(self._hb) and time.time() < self._expires

    status_string = property(_common.worker_status_string)
    id = property(_common.worker_id)
    update = _common.worker_update

    def materialize(self):
        """Nothing to do: this implementation keeps every field in
        ``__dict__`` (the compiled one serves a standard event's fields
        from the event until they are needed there)."""

    def __repr__(self):
        return '<Worker: {0.hostname} ({0.status_string} clock:{0.clock})'.format(self)


class State:
    """The table of peers: ``workers`` maps hostname to :class:`Worker`.

    Every tracked worker sits in one slot of a deadline wheel, the slot of
    the time its last heartbeat expires.  The sweep visits only the slots
    that are due, so its cost does not grow with the number of live
    workers, and a heartbeat moves its worker to a later slot in O(1).
    There is no size cap: nothing is evicted while it is alive.
    """

    def __init__(self, on_node_join=None, on_node_leave=None,
                 on_reject=None, on_drift=None):
        self.workers = {}
        self.on_node_join = on_node_join
        self.on_node_leave = on_node_leave
        self.on_reject = on_reject
        self.on_drift = on_drift
        self.event_count = 0
        self.dropped = 0       # events rejected as bad input
        self.joins = 0
        self.leaves = 0
        self.losses = 0
        self._wheel = {}       # slot -> {hostname: Worker}
        self._slots = []       # heap of slot numbers present in the wheel

    _reject = _common.reject_event

    # -- the event ---------------------------------------------------------

    def event(self, event):
        """Apply one prepared event (``celery.events.state.State.event``).

        Returns ``((worker, created), subject)`` for worker events, as stock
        does, and None for events that do not change the table.
        """
        self.event_count += 1
        type_ = event.get('type')
        if type(type_) is not str:
            return self._reject('bad_type', event.get('hostname'), type_)
        group, _, subject = type_.partition('-')
        if group != 'worker':
            return None
        hostname = event.get('hostname')
        if type(hostname) is not str or not hostname:
            return self._reject('bad_hostname', None, hostname)
        timestamp = as_seconds(event.get('timestamp'), MAX_TIME)
        if timestamp is None:
            return self._reject('bad_timestamp', hostname, event.get('timestamp'))
        received = as_seconds(event.get('local_received'), MAX_TIME)
        if received is None:
            return self._reject('bad_local_received', hostname,
                                event.get('local_received'))
        freq = None
        if 'freq' in event:
            freq = as_seconds(event['freq'], MAX_FREQ)
            if freq is None:
                return self._reject('bad_freq', hostname, event['freq'])
        for key in RESERVED_FIELDS:
            if key in event:
                event = _common.clean_reserved(self, event, hostname, key)
                break
        workers = self.workers
        worker = workers.get(hostname)
        if subject == 'offline':
            return self._offline(worker, hostname, event)
        created = worker is None
        if created:
            worker = workers[hostname] = Worker(hostname)
        worker.__dict__.update(event)
        if freq is not None:
            worker._freq = freq
        self._heartbeat(worker, timestamp, received)
        if created or subject == 'online':
            self._joined(worker)
        return (worker, created), subject

    def _joined(self, worker):
        self.joins += 1
        if self.on_node_join is not None:
            self.on_node_join(worker)

    def _offline(self, worker, hostname, event):
        if worker is None:  # unknown host: tell, but do not store
            worker = Worker(hostname)
        else:
            self._unschedule(worker)
            del self.workers[hostname]
        worker.__dict__.update(event)
        worker._hb.clear()
        _common.left(self, worker)
        return (worker, False), 'offline'

    def _heartbeat(self, worker, timestamp, received):
        if not worker._drift_warned and abs(int(received) - int(timestamp)) > DRIFT_MAX:
            worker._drift_warned = True
            if self.on_drift is not None:
                self.on_drift(worker, abs(int(received) - int(timestamp)),
                              received, timestamp)
        hb = worker._hb
        hearts = len(hb)
        if hearts > 3:
            del hb[0]
        if hearts and received > hb[-1]:
            hb.append(received)
        else:
            bisect.insort(hb, received)
        worker._expires = hb[-1] + worker._freq * EXPIRE_FACTOR
        self._schedule(worker)

    # -- the deadline wheel ------------------------------------------------

    def _schedule(self, worker):
        slot = int(worker._expires * SLOTS_PER_SECOND)
        if slot == worker._slot:
            return
        self._unschedule(worker)
        bucket = self._wheel.get(slot)
        if bucket is None:
            bucket = self._wheel[slot] = {}
            heapq.heappush(self._slots, slot)
        bucket[worker.hostname] = worker
        worker._slot = slot

    def _unschedule(self, worker):
        bucket = self._wheel.get(worker._slot)
        if bucket is not None:
            bucket.pop(worker.hostname, None)
            if not bucket:
                del self._wheel[worker._slot]
        worker._slot = -1

    def sweep(self, now=None):
        """Remove and return the workers whose heartbeats expired by *now*.

        Only due slots are visited: a slot that ended before *now* holds
        nothing but expired workers; the current slot is checked one by one.
        """
        if now is None:
            now = time.time()
        current = int(now * SLOTS_PER_SECOND)
        slots, wheel, workers = self._slots, self._wheel, self.workers
        lost = []
        while slots and slots[0] <= current:
            slot = slots[0]
            bucket = wheel.get(slot)
            if bucket is None:  # emptied since it was pushed
                heapq.heappop(slots)
                continue
            if slot < current:
                heapq.heappop(slots)
                del wheel[slot]
                expired = list(bucket.values())
            else:
                expired = [w for w in bucket.values() if not now < w._expires]
                for worker in expired:
                    del bucket[worker.hostname]
                if not bucket:
                    heapq.heappop(slots)
                    del wheel[slot]
            for worker in expired:
                worker._slot = -1
                # user code may have removed or replaced the entry
                if workers.get(worker.hostname) is worker:
                    del workers[worker.hostname]
                    lost.append(worker)
            if slot == current:
                break
        self.losses += len(lost)
        return lost

    # -- queries -----------------------------------------------------------

    def expired(self, now=None):
        """Hostnames of the workers that :meth:`sweep` at *now* would
        remove, left in place (only due slots are visited)."""
        if now is None:
            now = time.time()
        current = int(now * SLOTS_PER_SECOND)
        workers = self.workers
        found = []
        for slot, bucket in self._wheel.items():
            if slot <= current:
                for hostname, worker in bucket.items():
                    if not now < worker._expires and workers.get(hostname) is worker:
                        found.append(hostname)
        return found

    def alive_workers(self):
        """Iterator over the workers that are alive now."""
        now = time.time()
        return iter([w for w in self.workers.values()
                     if w._hb and now < w._expires])

    def alive_count(self, now=None):
        """Number of alive workers, without visiting live ones."""
        if now is None:
            now = time.time()
        current = int(now * SLOTS_PER_SECOND)
        dead = 0
        for slot, bucket in self._wheel.items():
            if slot < current:
                dead += len(bucket)
            elif slot == current:
                dead += sum(1 for w in bucket.values() if not now < w._expires)
        return len(self.workers) - dead

    def is_alive(self, hostname, now=None):
        worker = self.workers.get(hostname)
        if worker is None or not worker._hb:
            return False
        return (time.time() if now is None else now) < worker._expires

    def clear(self):
        for bucket in self._wheel.values():
            for worker in bucket.values():
                worker._slot = -1  # a kept reference is in no slot now
        self.workers.clear()
        self._wheel.clear()
        del self._slots[:]

    def __len__(self):
        return len(self.workers)

    def __repr__(self):
        return f'<State: workers={len(self.workers)} events={self.event_count}>'


class Receiver:
    """``Gossip.on_message``: route, decode, prepare and apply one event.

    *gossip* is the bootstep; its ``hostname``, ``event_handlers``,
    ``update_state`` and ``clock`` are looked up on every message, so tests
    and users can swap them at run time as with stock Celery.  When they are
    the ones the bootstep was built with, the event takes the fast path.
    """

    def __init__(self, gossip, state, clock, accept):
        self.gossip = gossip
        self.state = state
        self.clock = clock
        self.accept = accept
        # bound once, so that identity tells the fast path from a swap-in
        self.state_event = state.event if state is not None else None
        self.fast_prepare = self.prepare
        for name in _common.RECEIVER_COUNTERS:
            setattr(self, name, 0)

    stats = _common.receiver_stats

    def refresh(self):
        """Nothing to do: this implementation looks the bootstep's
        attributes up on every message (the compiled one caches them)."""

    # -- decoding ----------------------------------------------------------

    def _raw_json(self, body, content_type, content_encoding, headers):
        """*body* if we may decode it ourselves (JSON bytes in ``accept``,
        UTF-8, not compressed, no kombu ``__type__`` objects), else None."""
        accept = self.accept
        if (_fast_json is not None and type(body) is bytes
                and content_type == _JSON and (accept is None or _JSON in accept)
                and content_encoding in ('utf-8', 'utf8', None)
                and type(headers) is dict and not headers.get('compression')
                and not _has_type_marker(body)):
            return body
        return None

    def _message_raw(self, message):
        """:meth:`_raw_json` of a kombu message."""
        body = message.body
        if type(body) is str:
            body = _common.delivered_bytes(body, message.content_encoding)
        return self._raw_json(body, message.content_type,
                              message.content_encoding, message.headers)

    decode = _common.decode

    def _reject(self, reason, hostname, detail):
        self.gossip._reject(reason, hostname, detail)

    # -- the event's preparation (event_from_message, localize=False) -------

    prepare = _common.prepare

    # -- on_message --------------------------------------------------------

    def on_message(self, prepare, message):
        self.received += 1
        try:
            routing_key = message.delivery_info['routing_key']
        except Exception:
            return self._reject('bad_message', None, 'no routing key')
        return self._handle(prepare, routing_key, message, None, None)

    def on_raw(self, routing_key, headers, body, content_type=_JSON,
               content_encoding='utf-8', exchange='celeryev'):
        """One event read by a transport reader of ``gossip_fast.fastpath``:
        the same as :meth:`on_message` for the kombu message of these parts
        (which is built, and decoded by kombu, when we cannot decode it)."""
        headers = headers if headers is not None else {}
        raw = self._raw_json(body, content_type, content_encoding, headers)
        if raw is not None:
            self.received += 1
            return self._handle(self.fast_prepare, routing_key, None, raw, headers)
        return _common.on_parts(self, routing_key, headers, body, content_type,
                                content_encoding, exchange)

    def apply_held(self, items, deadline, minimum, other, error):
        """Apply held events, oldest first: each ``on_raw`` argument tuple
        through :meth:`on_raw`, anything else through *other(item)*, until
        ``time.monotonic()`` reaches *deadline* (looked at after *minimum*
        events, then every 8).  *error(exc)* gets an exception (a bug:
        on_raw counts and logs bad input itself).  Returns how many items
        were taken; the caller removes them (the readers' apply loop,
        ``gossip_fast.fastpath.base``)."""
        return _common.apply_held(self.on_raw, items, deadline, minimum, other, error)

    def _handle(self, prepare, routing_key, message, raw, headers):
        gossip = self.gossip
        if type(routing_key) is not str:
            return self._reject('bad_message', None, routing_key)
        # For redis when `fanout_patterns=False` (celery#1882)
        if routing_key.split('.', 1)[0] == 'task':
            self.skipped_tasks += 1
            return None
        handler = gossip.event_handlers.get(routing_key)
        body = _common.decoded(self, message, raw)
        if body is None:
            return None
        if handler is not None:
            return gossip._call_event_handler(handler, body)
        if message is not None:
            headers = message.headers
        header_host = headers.get('hostname') if type(headers) is dict else None
        body_host = body.get('hostname')
        hostname = header_host or body_host
        if type(hostname) is not str or not hostname:
            return self._reject('bad_hostname', None, hostname)
        if header_host and body_host is not None and body_host != header_host:
            return self._reject('hostname_mismatch', header_host, body_host)
        if hostname == gossip.hostname:
            self.own += 1
            gossip.clock.forward()
            return None
        if type(body.get('type')) is not str:
            return self._reject('bad_type', hostname, body.get('type'))
        try:
            event = prepare(body)[1]
            update_state = gossip.update_state
            if update_state is self.state_event:
                state = self.state
                dropped = state.dropped
                state.event(event)
                if state.dropped != dropped:
                    return None  # bad input, counted by the state
            else:
                update_state(event)
        except Exception as exc:  # never raise out of the consumer
            return self._reject('error', hostname, exc)
        self.applied += 1
        return None
