# cython: language_level=3, freethreading_compatible=False
"""Compiled hot path of gossip_fast (built as ``gossip_fast._core``).

The same classes, names and behaviour as ``gossip_fast/_core_py.py`` (read
that module's docstrings for the contract); ``tests/test_differential.py``
holds the two to the same results.  What differs is the representation: a
worker's heartbeats are a C ring of four doubles and its deadline a C double,
the clock is a C int64, and the per-message path calls the C API instead of
Python methods wherever it can.
"""
cimport cython
from libc.string cimport memchr, memcmp

import heapq
import threading
import time
from decimal import Decimal

from kombu.message import Message
from kombu.serialization import loads as kombu_loads

try:  # exact JSON (big ints preserved)
    from msgspec.json import Decoder as _JSONDecoder
except ImportError:  # pragma: no cover - depends on the platform
    _fast_json = None
else:
    _fast_json = _JSONDecoder().decode

__all__ = ('Clock', 'Worker', 'State', 'Receiver', 'MAX_PEER_CLOCK',
           'RESERVED_FIELDS', 'SLOTS_PER_SECOND', 'MAX_FREQ')

cdef long long _MAX_PEER_CLOCK = 2 ** 62
cdef long long _CLOCK_CEILING = 2 ** 63 - 1
cdef double _MAX_FREQ = 86400.0
cdef double _MAX_TIME = 1e12
cdef double _EXPIRE_FACTOR = 2.0
cdef long long _DRIFT_MAX = 16
cdef double _SLOTS_PER_SECOND = 16.0
cdef enum:
    _HB_MAX = 4

MAX_PEER_CLOCK = _MAX_PEER_CLOCK
CLOCK_CEILING = _CLOCK_CEILING
MAX_FREQ = _MAX_FREQ
MAX_TIME = _MAX_TIME
EXPIRE_FACTOR = _EXPIRE_FACTOR
DRIFT_MAX = _DRIFT_MAX
SLOTS_PER_SECOND = 16
RESERVED_FIELDS = frozenset((
    'heartbeats', 'event', 'alive', 'heartbeat_expires', 'id',
    'status_string', 'update', 'heartbeat_max', 'expire_window',
    '_hb', '_freq', '_expires', '_slot', '_drift_warned',
))
cdef tuple _RESERVED = tuple(RESERVED_FIELDS)
DEFAULT_FIELDS = (
    ('pid', None), ('freq', 60), ('clock', 0), ('active', None),
    ('processed', None), ('loadavg', None), ('sw_ident', None),
    ('sw_ver', None), ('sw_sys', None),
)
cdef extern from "Python.h":
    # the instance dict of an extension object (created on first use)
    object PyObject_GenericGetDict(object obj, void* context)

cdef str JSON = 'application/json'
cdef object _time = time.time
cdef object _heappush = heapq.heappush
cdef object _heappop = heapq.heappop


cdef inline bint valid_peer_clock_c(object value):
    return type(value) is int and 0 <= value <= _MAX_PEER_CLOCK


def valid_peer_clock(value):
    """Return True if *value* may be adjusted to (an int in range)."""
    return valid_peer_clock_c(value)


cdef double as_seconds_c(object value, double upper):
    """*value* as a double in (0, upper], else -1.0."""
    cdef double number
    kind = type(value)
    if kind is float:
        number = value
    elif kind is int or kind is Decimal:
        if not 0 < value <= upper:
            return -1.0
        number = float(value)
    else:
        return -1.0
    if 0.0 < number <= upper:
        return number
    return -1.0


def as_seconds(value, upper):
    cdef double number = as_seconds_c(value, upper)
    return None if number < 0.0 else number


cdef bint has_type_marker(bytes data):
    """True if the raw JSON contains ``__type__`` (kombu's object hook)."""
    cdef Py_ssize_t n = len(data), i = 0
    cdef const unsigned char* p = <const unsigned char*><char*>data
    cdef const unsigned char* found
    while i + 8 <= n:
        found = <const unsigned char*>memchr(p + i, 95, n - 7 - i)  # '_'
        if found == NULL:
            return False
        if memcmp(found, b"__type__", 8) == 0:
            return True
        i = (found - p) + 1
    return False


@cython.final
cdef class Clock:
    """Lamport clock with the API of :class:`kombu.clocks.LamportClock`.

    Only integers in ``[0, 2**62]`` are taken from peers; anything else
    forwards the clock and is counted in :attr:`rejected`.  The value is a
    C int64 that stays in ``[0, 2**63)``.  ``adjust`` and ``forward`` run
    without releasing the GIL, so they are atomic; ``mutex`` exists for API
    compatibility.
    """
    cdef long long _value
    cdef public object mutex
    cdef public Py_ssize_t rejected

    def __init__(self, initial_value=0, Lock=threading.Lock):
        self.mutex = Lock()
        self.rejected = 0
        self.value = initial_value

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        if type(value) is not int or not 0 <= value <= _CLOCK_CEILING:
            raise ValueError(
                f'Lamport clock value must be an int in [0, 2**63): {value!r}')
        self._value = value

    cdef inline long long adjust_c(self, long long other):
        cdef long long value = self._value
        if other > value:
            value = other
        if value < _CLOCK_CEILING:
            value += 1
        self._value = value
        return value

    cdef inline long long forward_c(self):
        if self._value < _CLOCK_CEILING:
            self._value += 1
        return self._value

    def adjust(self, other):
        if not valid_peer_clock_c(other):
            self.rejected += 1
            return self.forward_c()
        return self.adjust_c(other)

    def forward(self):
        return self.forward_c()

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


@cython.final
cdef class Worker:
    """A tracked peer.

    Has every attribute of ``celery.events.state.Worker`` (``hostname``,
    ``pid``, ``freq``, ``heartbeats``, ``clock``, ``active``, ``processed``,
    ``loadavg``, ``sw_*``, ``alive``, ``heartbeat_expires``, ``id``) and any
    other field the peer sent, as attributes.
    """
    cdef dict __dict__
    cdef object __weakref__
    cdef double _hb[_HB_MAX]
    cdef int _n
    cdef double _freq
    cdef double _expires
    cdef long long _slot
    cdef bint _drift_warned
    cdef object _hostname
    cdef dict _fields  # the same dict object as __dict__

    heartbeat_max = _HB_MAX
    expire_window = 200

    def __init__(self, hostname=None):
        self._fields = PyObject_GenericGetDict(self, NULL)
        self._fields.update(DEFAULT_FIELDS)
        self._fields['hostname'] = hostname
        self._hostname = hostname
        self._n = 0
        self._freq = 60.0
        self._expires = 0.0
        self._slot = -1
        self._drift_warned = False

    @property
    def heartbeats(self):
        """Receive times of the last (at most 4) heartbeats, ascending."""
        return [self._hb[i] for i in range(self._n)]

    @property
    def heartbeat_expires(self):
        if self._n == 0:
            raise IndexError('list index out of range')
        return self._hb[self._n - 1] + self._freq * _EXPIRE_FACTOR

    @property
    def alive(self):
        return self._n > 0 and <double>_time() < self._expires

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
                self._fields[key] = value

    def __repr__(self):
        return '<Worker: {0.hostname} ({0.status_string} clock:{0.clock})'.format(self)

    cdef inline void add_heartbeat(self, double received):
        # stock: drop the oldest of 4, append if newest, else insort
        cdef int n = self._n, i
        if n > _HB_MAX - 1:
            for i in range(n - 1):
                self._hb[i] = self._hb[i + 1]
            n -= 1
        if n and received > self._hb[n - 1]:
            self._hb[n] = received
        else:
            i = n
            while i > 0 and self._hb[i - 1] > received:
                self._hb[i] = self._hb[i - 1]
                i -= 1
            self._hb[i] = received
        self._n = n + 1
        self._expires = self._hb[n] + self._freq * _EXPIRE_FACTOR


@cython.final
cdef class State:
    """The table of peers: ``workers`` maps hostname to :class:`Worker`.

    Every tracked worker sits in one slot of a deadline wheel, the slot of
    the time its last heartbeat expires.  The sweep visits only the slots
    that are due, so its cost does not grow with the number of live
    workers, and a heartbeat moves its worker to a later slot in O(1).
    There is no size cap: nothing is evicted while it is alive.
    """
    cdef public dict workers
    cdef public object on_node_join, on_node_leave, on_reject, on_drift
    cdef public Py_ssize_t event_count, joins, leaves, losses
    cdef dict _wheel
    cdef list _slots

    def __init__(self, on_node_join=None, on_node_leave=None,
                 on_reject=None, on_drift=None):
        self.workers = {}
        self.on_node_join = on_node_join
        self.on_node_leave = on_node_leave
        self.on_reject = on_reject
        self.on_drift = on_drift
        self.event_count = 0
        self.joins = 0
        self.leaves = 0
        self.losses = 0
        self._wheel = {}
        self._slots = []

    cdef object _reject(self, str reason, object hostname, object detail):
        if self.on_reject is not None:
            self.on_reject(reason, hostname, detail)
        return None

    def event(self, dict event):
        """Apply one prepared event (``celery.events.state.State.event``).

        Returns ``((worker, created), subject)`` for worker events, as stock
        does, and None for events that do not change the table.
        """
        return self.apply(event)

    cdef object apply(self, dict event):
        cdef double timestamp, received, freq = -1.0
        cdef Worker worker
        cdef bint created
        cdef str subject
        self.event_count += 1
        type_ = event.get('type')
        if type(type_) is not str:
            return self._reject('bad_type', event.get('hostname'), type_)
        if type_ == 'worker-heartbeat':
            subject = 'heartbeat'
        else:
            group, _, subject = (<str>type_).partition('-')
            if group != 'worker':
                return None
        hostname = event.get('hostname')
        if type(hostname) is not str or not hostname:
            return self._reject('bad_hostname', None, hostname)
        timestamp = as_seconds_c(event.get('timestamp'), _MAX_TIME)
        if timestamp < 0.0:
            return self._reject('bad_timestamp', hostname, event.get('timestamp'))
        received = as_seconds_c(event.get('local_received'), _MAX_TIME)
        if received < 0.0:
            return self._reject('bad_local_received', hostname,
                                event.get('local_received'))
        raw_freq = event.get('freq', None)
        if raw_freq is not None or 'freq' in event:
            freq = as_seconds_c(raw_freq, _MAX_FREQ)
            if freq < 0.0:
                return self._reject('bad_freq', hostname, raw_freq)
        for key in _RESERVED:
            if key in event:
                self._reject('reserved_field', hostname, key)
                event = {k: v for k, v in event.items() if k not in RESERVED_FIELDS}
                break
        found = self.workers.get(hostname)
        if subject == 'offline':
            return self._offline(found, hostname, event)
        created = found is None
        if created:
            worker = Worker(hostname)
            self.workers[hostname] = worker
        else:
            worker = <Worker>found
        worker._fields.update(event)
        if freq > 0.0:
            worker._freq = freq
        self._heartbeat(worker, timestamp, received)
        if created or subject == 'online':
            self.joins += 1
            if self.on_node_join is not None:
                self.on_node_join(worker)
        return (worker, created), subject

    cdef object _offline(self, object found, object hostname, dict event):
        cdef Worker worker
        if found is None:  # unknown host: tell, but do not store
            worker = Worker(hostname)
        else:
            worker = <Worker>found
            self._unschedule(worker)
            del self.workers[hostname]
        worker._fields.update(event)
        worker._n = 0
        self.leaves += 1
        if self.on_node_leave is not None:
            self.on_node_leave(worker)
        return (worker, False), 'offline'

    cdef inline void _heartbeat(self, Worker worker, double timestamp, double received) except *:
        cdef long long drift
        if not worker._drift_warned:
            drift = <long long>received - <long long>timestamp
            if drift < 0:
                drift = -drift
            if drift > _DRIFT_MAX:
                worker._drift_warned = True
                if self.on_drift is not None:
                    self.on_drift(worker, drift, received, timestamp)
        worker.add_heartbeat(received)
        self._schedule(worker)

    # -- the deadline wheel ------------------------------------------------

    cdef inline void _schedule(self, Worker worker) except *:
        cdef long long slot = <long long>(worker._expires * _SLOTS_PER_SECOND)
        if slot == worker._slot:
            return
        self._unschedule(worker)
        bucket = self._wheel.get(slot)
        if bucket is None:
            bucket = self._wheel[slot] = {}
            _heappush(self._slots, slot)
        (<dict>bucket)[worker._hostname] = worker
        worker._slot = slot

    cdef inline void _unschedule(self, Worker worker) except *:
        if worker._slot < 0:
            return
        bucket = self._wheel.get(worker._slot)
        if bucket is not None:
            (<dict>bucket).pop(worker._hostname, None)
            if not bucket:
                del self._wheel[worker._slot]
        worker._slot = -1

    def sweep(self, now=None):
        """Remove and return the workers whose heartbeats expired by *now*.

        Only due slots are visited: a slot that ended before *now* holds
        nothing but expired workers; the current slot is checked one by one.
        """
        cdef double t = _time() if now is None else now
        cdef long long current = <long long>(t * _SLOTS_PER_SECOND)
        cdef long long slot
        cdef list slots = self._slots, lost = [], expired
        cdef dict wheel = self._wheel, workers = self.workers, bucket
        cdef Worker worker
        while slots and <long long>slots[0] <= current:
            slot = slots[0]
            found = wheel.get(slot)
            if found is None:  # emptied since it was pushed
                _heappop(slots)
                continue
            bucket = <dict>found
            if slot < current:
                _heappop(slots)
                del wheel[slot]
                expired = list(bucket.values())
            else:
                expired = [w for w in bucket.values() if not t < (<Worker>w)._expires]
                for w in expired:
                    del bucket[(<Worker>w)._hostname]
                if not bucket:
                    _heappop(slots)
                    del wheel[slot]
            for w in expired:
                worker = <Worker>w
                worker._slot = -1
                # user code may have removed or replaced the entry
                if workers.get(worker._hostname) is worker:
                    del workers[worker._hostname]
                    lost.append(worker)
            if slot == current:
                break
        self.losses += len(lost)
        return lost

    # -- queries -----------------------------------------------------------

    def alive_workers(self):
        """Iterator over the workers that are alive now."""
        cdef double t = _time()
        cdef Worker worker
        alive = []
        for w in self.workers.values():
            worker = <Worker>w
            if worker._n and t < worker._expires:
                alive.append(worker)
        return iter(alive)

    def alive_count(self, now=None):
        """Number of alive workers, without visiting live ones."""
        cdef double t = _time() if now is None else now
        cdef long long current = <long long>(t * _SLOTS_PER_SECOND)
        cdef long long slot
        cdef Py_ssize_t dead = 0
        for key, bucket in self._wheel.items():
            slot = key
            if slot < current:
                dead += len(<dict>bucket)
            elif slot == current:
                for w in (<dict>bucket).values():
                    if not t < (<Worker>w)._expires:
                        dead += 1
        return len(self.workers) - dead

    def is_alive(self, hostname, now=None):
        found = self.workers.get(hostname)
        if found is None or not (<Worker>found)._n:
            return False
        return (_time() if now is None else now) < (<Worker>found)._expires

    def clear(self):
        self.workers.clear()
        self._wheel.clear()
        del self._slots[:]

    def __len__(self):
        return len(self.workers)

    def __repr__(self):
        return f'<State: workers={len(self.workers)} events={self.event_count}>'


@cython.final
cdef class Receiver:
    """``Gossip.on_message``: route, decode, prepare and apply one event.

    *gossip* is the bootstep; its ``hostname``, ``event_handlers``,
    ``update_state`` and ``clock`` are looked up on every message, so tests
    and users can swap them at run time as with stock Celery.  When they are
    the ones the bootstep was built with, the event takes the fast path.
    """
    cdef public object gossip
    cdef public object state
    cdef public object clock
    cdef public object accept
    cdef public object state_event
    cdef public object fast_prepare
    cdef public Py_ssize_t received, applied, own, skipped_tasks, decode_fallbacks
    cdef State _state

    def __init__(self, gossip, state, clock, accept):
        self.gossip = gossip
        self.state = state
        self._state = state if type(state) is State else None
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

    # -- decoding ----------------------------------------------------------

    cpdef object decode(self, message):
        """The message's payload, or None (and a rejection) if it is bad.

        Real kombu messages with a JSON body are decoded here from their raw
        bytes; everything else goes through kombu's ``loads`` with our
        ``accept`` set, so nothing outside it (pickle) is ever decoded.
        """
        if not isinstance(message, Message):
            try:  # a message-like object of the user's or a test's
                return message.payload
            except Exception as exc:
                return self._reject('decode_error', None, exc)
        if message.errors:
            return self._reject('decode_error', None, 'undecompressable body')
        body = message.body
        content_type = message.content_type
        accept = self.accept
        if (_fast_json is not None and type(body) is bytes
                and content_type == JSON
                and (accept is None or JSON in accept)):
            encoding = message.content_encoding
            if ((encoding is None or encoding == 'utf-8' or encoding == 'utf8')
                    and not message.headers.get('compression')
                    and not has_type_marker(<bytes>body)):
                try:
                    return _fast_json(body)
                except Exception:
                    self.decode_fallbacks += 1  # NaN, Infinity, bad UTF-8: kombu decides
        try:
            return kombu_loads(body, content_type, message.content_encoding,
                               accept=accept)
        except Exception as exc:
            return self._reject('decode_error', None, exc)

    cdef object _reject(self, str reason, object hostname, object detail):
        self.gossip._reject(reason, hostname, detail)
        return None

    # -- the event's preparation (event_from_message, localize=False) -------

    def prepare(self, dict body):
        """Apply the Lamport clock rules to *body* and stamp it.

        Same contract as ``EventReceiver.event_from_message(body,
        localize=False)``: returns ``(type, body)``.  A clock that is not an
        int in range is not taken; the clock is forwarded as if the event had
        none.
        """
        return body['type'], self.prepare_c(body)

    cdef dict prepare_c(self, dict body):
        clock = self.gossip.clock
        cdef Clock fast = clock if type(clock) is Clock else None
        type_ = body['type']
        if type_ == 'task-sent':
            body['clock'] = (clock.value or 1) - 1
            clock.adjust(body['clock'])
        else:
            value = body.get('clock', None)
            if value is None and 'clock' not in body:
                body['clock'] = fast.forward_c() if fast is not None else clock.forward()
            elif valid_peer_clock_c(value):
                if fast is not None:
                    fast.adjust_c(value)
                else:
                    clock.adjust(value)
            else:
                self._reject('bad_clock', body.get('hostname'), value)
                body['clock'] = fast.forward_c() if fast is not None else clock.forward()
        body['local_received'] = _time()
        return body

    # -- on_message --------------------------------------------------------

    def on_message(self, prepare, message):
        self.received += 1
        gossip = self.gossip
        try:
            routing_key = message.delivery_info['routing_key']
        except Exception:
            return self._reject('bad_message', None, 'no routing key')
        if type(routing_key) is not str:
            return self._reject('bad_message', None, routing_key)
        # For redis when `fanout_patterns=False` (celery#1882)
        if (<str>routing_key).startswith('task') and (
                len(<str>routing_key) == 4 or (<str>routing_key)[4] == '.'):
            self.skipped_tasks += 1
            return None
        handler = gossip.event_handlers.get(routing_key)
        if handler is not None:
            payload = self.decode(message)
            if payload is None:
                return None
            if type(payload) is not dict:
                return self._reject('bad_body', None, type(payload).__name__)
            return gossip._call_event_handler(handler, payload)
        found = self.decode(message)
        if found is None:
            return None
        if type(found) is not dict:
            return self._reject('bad_body', None, type(found).__name__)
        cdef dict body = <dict>found
        headers = message.headers
        header_host = (<dict>headers).get('hostname') if type(headers) is dict else None
        body_host = body.get('hostname')
        hostname = header_host or body_host
        if type(hostname) is not str or not hostname:
            return self._reject('bad_hostname', None, hostname)
        if header_host and body_host is not None and body_host != header_host:
            return self._reject('hostname_mismatch', header_host, body_host)
        if hostname == gossip.hostname:
            self.own += 1
            clock = gossip.clock
            if type(clock) is Clock:
                (<Clock>clock).forward_c()
            else:
                clock.forward()
            return None
        if type(body.get('type')) is not str:
            return self._reject('bad_type', hostname, body.get('type'))
        try:
            if prepare is self.fast_prepare:
                event = self.prepare_c(body)
            else:
                event = prepare(body)[1]
            update_state = gossip.update_state
            if update_state is self.state_event and self._state is not None:
                self._state.apply(event)
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
