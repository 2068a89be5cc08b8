"""Pure-Python hot path of gossip_fast (the fallback of ``src/_core.pyx``).

This module and the Cython module ``gossip_fast._core`` implement the same
classes with the same behaviour; ``tests/test_differential.py`` holds them
(and stock Celery, where stock is correct) to the same results.  Keep the two
in step: same names, same order of checks, same rejection reasons.

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

from kombu.message import Message
from kombu.serialization import loads as kombu_loads

try:  # exact JSON (big ints preserved); absent on PyPy
    from msgspec.json import Decoder as _JSONDecoder
except ImportError:  # pragma: no cover - depends on the platform
    _fast_json = None
else:
    _fast_json = _JSONDecoder().decode

__all__ = ('Clock', 'Worker', 'State', 'Receiver', 'MAX_PEER_CLOCK', 'REJECTED',
           'RESERVED_FIELDS', 'SLOTS_PER_SECOND', 'MAX_FREQ')

#: Highest clock value accepted from a peer.  Far beyond any real cluster
#: (2**62 events), and low enough that our own clock can never leave
#: [0, 2**63) by adjusting to it and forwarding afterwards.
MAX_PEER_CLOCK = 2 ** 62
#: Our clock saturates here instead of overflowing a signed 64-bit integer.
CLOCK_CEILING = 2 ** 63 - 1
#: Heartbeat periods above a day are treated as bad input.
MAX_FREQ = 86400.0
#: Timestamps must be positive and below this (year 33658).
MAX_TIME = 1e12
#: ``heartbeat_expires = last heartbeat + freq * EXPIRE_FACTOR`` (stock:
#: ``HEARTBEAT_EXPIRE_WINDOW / 100``).
EXPIRE_FACTOR = 2.0
#: Drift (seconds) between a peer's timestamp and our receive time above
#: which we warn once per peer (stock ``HEARTBEAT_DRIFT_MAX``).
DRIFT_MAX = 16
#: Resolution of the deadline wheel: a slot is 1/16 s (exact in binary
#: floating point, so slot boundaries are exact).
SLOTS_PER_SECOND = 16
#: Body keys that would shadow or break a worker entry's own attributes.
RESERVED_FIELDS = frozenset((
    'heartbeats', 'event', 'alive', 'heartbeat_expires', 'id',
    'status_string', 'update', 'heartbeat_max', 'expire_window',
    '_hb', '_freq', '_expires', '_slot', '_drift_warned',
))
DEFAULT_FIELDS = (
    ('pid', None), ('freq', 60), ('clock', 0), ('active', None),
    ('processed', None), ('loadavg', None), ('sw_ident', None),
    ('sw_ver', None), ('sw_sys', None),
)
JSON = 'application/json'
#: What ``Receiver.decode`` returns for a message it rejected (a JSON
#: ``null`` body decodes to None, which is bad input of another kind).
REJECTED = object()


def valid_peer_clock(value):
    """Return True if *value* may be adjusted to (an int in range)."""
    return type(value) is int and 0 <= value <= MAX_PEER_CLOCK


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


def has_type_marker(body):
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
        self._value = 0
        self.value = initial_value

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        if type(value) is not int or not 0 <= value <= CLOCK_CEILING:
            raise ValueError(
                f'Lamport clock value must be an int in [0, 2**63): {value!r}')
        self._value = value

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

    def sort_heap(self, h):
        """Return the first (lowest clock, then lowest id) event of *h*.

        Same result as kombu's for lists of two or more, and also correct for
        a list of one (kombu raises IndexError there).
        """
        if len(h) == 1:
            return h[0]
        if h[0][0] == h[1][0]:
            same = []
            for prev, nxt in zip(h, h[1:]):
                if prev[0] != nxt[0]:
                    break
                same.append(prev)
            return sorted(same, key=lambda event: event[1])[0]
        return h[0]

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
    heartbeat_max = 4
    expire_window = 200

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

    @property
    def status_string(self):
        return 'ONLINE' if self.alive else 'OFFLINE'

    @property
    def id(self):
        return '{0.hostname}.{0.pid}'.format(self)

    def update(self, fields, **kw):
        """Set fields as attributes (reserved names are ignored)."""
        for key, value in dict(fields, **kw).items():
            if key not in RESERVED_FIELDS:
                self.__dict__[key] = value

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

    # -- input validation --------------------------------------------------

    def _reject(self, reason, hostname, detail):
        """Drop the event: count it here and tell the bootstep."""
        self.dropped += 1
        if self.on_reject is not None:
            self.on_reject(reason, hostname, detail)
        return None

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
                if self.on_reject is not None:  # cleaned, still applied
                    self.on_reject('reserved_field', hostname, key)
                event = {k: v for k, v in event.items() if k not in RESERVED_FIELDS}
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
            self.joins += 1
            if self.on_node_join is not None:
                self.on_node_join(worker)
        return (worker, created), subject

    def _offline(self, worker, hostname, event):
        if worker is None:  # unknown host: tell, but do not store
            worker = Worker(hostname)
        else:
            self._unschedule(worker)
            del self.workers[hostname]
        worker.__dict__.update(event)
        worker._hb.clear()
        self.leaves += 1
        if self.on_node_leave is not None:
            self.on_node_leave(worker)
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
        self.received = 0
        self.applied = 0
        self.own = 0
        self.skipped_tasks = 0
        self.decode_fallbacks = 0

    def refresh(self):
        """Nothing to do: this implementation looks the bootstep's
        attributes up on every message (the compiled one caches them)."""

    # -- decoding ----------------------------------------------------------

    def raw_json(self, body, content_type, content_encoding, headers):
        """*body* if we may decode it ourselves (JSON bytes in ``accept``,
        UTF-8, not compressed, no kombu ``__type__`` objects), else None."""
        accept = self.accept
        if (_fast_json is not None and type(body) is bytes
                and content_type == JSON and (accept is None or JSON in accept)
                and content_encoding in ('utf-8', 'utf8', None)
                and type(headers) is dict and not headers.get('compression')
                and not has_type_marker(body)):
            return body
        return None

    def decode(self, message, raw=None):
        """The payload of *message* (or of its *raw* JSON bytes), or
        :data:`REJECTED` (and a rejection) if it is bad.

        Real kombu messages with a JSON body are decoded here from their raw
        bytes; everything else goes through kombu's ``loads`` with our
        ``accept`` set, so nothing outside it (pickle) is ever decoded.
        """
        if raw is None:
            if not isinstance(message, Message):
                try:  # a message-like object of the user's or a test's
                    return message.payload
                except Exception as exc:
                    return self._rejected('decode_error', None, exc)
            if message.errors:
                return self._rejected('decode_error', None, 'undecompressable body')
            raw = self.raw_json(message.body, message.content_type,
                                message.content_encoding, message.headers)
            if raw is None:
                try:
                    return kombu_loads(message.body, message.content_type,
                                       message.content_encoding, accept=self.accept)
                except Exception as exc:
                    return self._rejected('decode_error', None, exc)
        try:
            return _fast_json(raw)
        except Exception:
            self.decode_fallbacks += 1  # NaN, Infinity, bad UTF-8: kombu decides
        try:
            return kombu_loads(raw, JSON, 'utf-8', accept=self.accept)
        except Exception as exc:
            return self._rejected('decode_error', None, exc)

    def _reject(self, reason, hostname, detail):
        self.gossip._reject(reason, hostname, detail)
        return None

    def _rejected(self, reason, hostname, detail):
        self.gossip._reject(reason, hostname, detail)
        return REJECTED

    # -- the event's preparation (event_from_message, localize=False) -------

    def prepare(self, body):
        """Apply the Lamport clock rules to *body* and stamp it.

        Same contract as ``EventReceiver.event_from_message(body,
        localize=False)``: returns ``(type, body)``.  A clock that is not an
        int in range is not taken; the clock is forwarded as if the event had
        none.
        """
        clock = self.gossip.clock
        type_ = body['type']
        if type_ == 'task-sent':
            body['clock'] = (clock.value or 1) - 1
            clock.adjust(body['clock'])
        else:
            if 'clock' not in body:
                body['clock'] = clock.forward()
            elif valid_peer_clock(body['clock']):
                clock.adjust(body['clock'])
            else:
                self._reject('bad_clock', body.get('hostname'), body['clock'])
                body['clock'] = clock.forward()
        body['local_received'] = time.time()
        return type_, body

    # -- on_message --------------------------------------------------------

    def on_message(self, prepare, message):
        self.received += 1
        try:
            routing_key = message.delivery_info['routing_key']
        except Exception:
            return self._reject('bad_message', None, 'no routing key')
        return self._handle(prepare, routing_key, message, None, None)

    def on_raw(self, routing_key, headers, body, content_type=JSON,
               content_encoding='utf-8', exchange='celeryev'):
        """One event read by a transport reader of ``gossip_fast.fastpath``:
        the same as :meth:`on_message` for the kombu message of these parts
        (which is built, and decoded by kombu, when we cannot decode it)."""
        headers = headers if headers is not None else {}
        raw = self.raw_json(body, content_type, content_encoding, headers)
        if raw is None:
            return self.on_message(self.fast_prepare, Message(
                body=body, content_type=content_type,
                content_encoding=content_encoding, headers=headers,
                delivery_info={'exchange': exchange, 'routing_key': routing_key}))
        self.received += 1
        return self._handle(self.fast_prepare, routing_key, None, raw, headers)

    def _handle(self, prepare, routing_key, message, raw, headers):
        gossip = self.gossip
        if type(routing_key) is not str:
            return self._reject('bad_message', None, routing_key)
        # For redis when `fanout_patterns=False` (celery#1882)
        if routing_key.split('.', 1)[0] == 'task':
            self.skipped_tasks += 1
            return None
        handler = gossip.event_handlers.get(routing_key)
        if handler is not None:
            payload = self.decode(message, raw)
            if payload is REJECTED:
                return None
            if type(payload) is not dict:
                return self._reject('bad_body', None, type(payload).__name__)
            return gossip._call_event_handler(handler, payload)
        body = self.decode(message, raw)
        if body is REJECTED:
            return None
        if type(body) is not dict:
            return self._reject('bad_body', None, type(body).__name__)
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
            if prepare is self.fast_prepare:
                event = self.prepare(body)[1]
            else:
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

    def stats(self):
        return {
            'received': self.received,
            'applied': self.applied,
            'own': self.own,
            'skipped_tasks': self.skipped_tasks,
            'decode_fallbacks': self.decode_fallbacks,
        }
