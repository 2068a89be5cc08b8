"""What the two cores share: their limits, names and the logic that needs no
C speed, written once.

Both hot-path modules import this: the compiled ``gossip_fast._core``
(``src/``, which copies the numbers into C globals at import) and its
pure-Python twin ``gossip_fast._core_py``.  What they do not take from here
is what one of them does differently: the representation of a worker and
of the clock, and the per-message path, which the compiled core runs in C
(see ``docs/internals.md``).

The functions whose first parameter is ``self`` are methods of both cores'
classes (``sort_heap = _common.sort_heap`` in each class body); the others
are called by both.  They use only the public attributes of the objects
they are given, which both cores have.
"""
import time
from itertools import pairwise

from kombu.message import Message
from kombu.serialization import loads as kombu_loads

try:  # exact JSON (big ints preserved); absent on PyPy
    from msgspec.json import Decoder as _JSONDecoder
except ImportError:  # pragma: no cover - depends on the platform
    fast_json = None
else:
    #: msgspec's JSON decoder (None where msgspec is missing).
    fast_json = _JSONDecoder().decode

#: The public names of both cores (their ``__all__``).
CORE_ALL = ('Clock', 'Worker', 'State', 'Receiver', 'MAX_PEER_CLOCK', 'REJECTED',
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
#: Heartbeats a worker entry keeps (stock ``Worker.heartbeat_max``; the
#: compiled core sizes a C array with it, and checks it at import).
HEARTBEAT_MAX = 4
#: Stock ``Worker.expire_window``.
EXPIRE_WINDOW = 200
#: Body keys that would shadow or break a worker entry's own attributes.
RESERVED_FIELDS = frozenset((
    'heartbeats', 'event', 'alive', 'heartbeat_expires', 'id',
    'status_string', 'update', 'heartbeat_max', 'expire_window',
    '_hb', '_freq', '_expires', '_slot', '_drift_warned',
))
#: The fields (and their defaults) every worker entry starts with (stock
#: ``Worker``'s).
DEFAULT_FIELDS = (
    ('pid', None), ('freq', 60), ('clock', 0), ('active', None),
    ('processed', None), ('loadavg', None), ('sw_ident', None),
    ('sw_ver', None), ('sw_sys', None),
)
JSON = 'application/json'
#: What ``Receiver.decode`` returns for a message it rejected (a JSON
#: ``null`` body decodes to None, which is bad input of another kind).
REJECTED = object()
#: The counters of a Receiver, in the order ``Receiver.stats`` lists them.
RECEIVER_COUNTERS = ('received', 'applied', 'own', 'skipped_tasks', 'decode_fallbacks')


# -- Clock -----------------------------------------------------------------------

def valid_peer_clock(value):
    """Return True if *value* may be adjusted to (an int in range)."""
    return type(value) is int and 0 <= value <= MAX_PEER_CLOCK


def _clock_value(self):
    return self._value


def _set_clock_value(self, value):
    if type(value) is not int or not 0 <= value <= CLOCK_CEILING:
        raise ValueError(f'Lamport clock value must be an int in [0, 2**63): {value!r}')
    self._value = value


#: ``Clock.value`` of both cores, over their ``_value``: set only to an int
#: in ``[0, 2**63)``.
clock_value = property(_clock_value, _set_clock_value)


def sort_heap(self, h):
    """Return the first (lowest clock, then lowest id) event of *h*.

    Same result as kombu's for lists of two or more, and also correct for
    a list of one (kombu raises IndexError there).
    """
    if len(h) == 1:
        return h[0]
    if h[0][0] == h[1][0]:
        same = []
        for prev, nxt in pairwise(h):
            if prev[0] != nxt[0]:
                break
            same.append(prev)
        return sorted(same, key=lambda event: event[1])[0]
    return h[0]


# -- Worker ----------------------------------------------------------------------

def worker_update(self, fields, **kw):
    """Set fields as attributes (reserved names are ignored)."""
    self.materialize()
    attributes = self.__dict__
    for key, value in dict(fields, **kw).items():
        if key not in RESERVED_FIELDS:
            attributes[key] = value


def worker_status_string(self):
    return 'ONLINE' if self.alive else 'OFFLINE'


def worker_id(self):
    return '{0.hostname}.{0.pid}'.format(self)


# -- State -----------------------------------------------------------------------

def reject_event(state, reason, hostname, detail):
    """Drop the event: count it in *state* and tell the bootstep."""
    state.dropped += 1
    if state.on_reject is not None:
        state.on_reject(reason, hostname, detail)


def left(state, worker):
    """*worker* went offline: count it, and tell the bootstep."""
    state.leaves += 1
    if state.on_node_leave is not None:
        state.on_node_leave(worker)


def clean_reserved(state, event, hostname, key):
    """*event* without its reserved keys (*key* is the first), told to the
    bootstep: the event is still applied."""
    if state.on_reject is not None:
        state.on_reject('reserved_field', hostname, key)
    return {k: v for k, v in event.items() if k not in RESERVED_FIELDS}


# -- Receiver --------------------------------------------------------------------

def rejected(receiver, reason, hostname, detail):
    """Tell the bootstep about a message we drop; :data:`REJECTED`."""
    receiver.gossip._reject(reason, hostname, detail)
    return REJECTED


def delivered_bytes(body, content_encoding):
    """The bytes of a body that py-amqp handed over as text.

    py-amqp's channels decode every delivered body with its
    ``content_encoding`` (``auto_decode``, on by default), so a JSON event
    reaches kombu's consumer as a ``str``; encoded back to UTF-8 it is the
    wire's bytes again, which the JSON fast lane reads.  Anything else, or
    text that does not encode, stays with kombu's decoder (None).
    """
    if content_encoding not in ('utf-8', 'utf8'):
        return None
    try:
        return body.encode('utf-8')
    except UnicodeEncodeError:
        return None


def decode(self, message, raw=None):
    """The payload of *message* (or of its *raw* JSON bytes), or
    :data:`REJECTED` (and a rejection) if it is bad.

    Real kombu messages with a JSON body are decoded here from their raw
    bytes; everything else goes through kombu's ``loads`` with our
    ``accept`` set, so nothing outside it (pickle) is ever decoded.
    """
    if raw is None and isinstance(message, Message) and not message.errors:
        raw = self._message_raw(message)
    if raw is None:
        return decode_message(self, message)
    try:
        return fast_json(raw)
    except Exception:
        return decode_odd_json(self, raw)


def decoded(receiver, message, raw):
    """The body of an event as a dict (:meth:`decode`), or None when it is
    bad (told to the bootstep)."""
    body = receiver.decode(message, raw)
    if body is REJECTED:
        return None
    if type(body) is not dict:
        receiver.gossip._reject('bad_body', None, type(body).__name__)
        return None
    return body


def decode_message(receiver, message):
    """``Receiver.decode`` of a message whose raw JSON we do not read:
    kombu decodes it, with the receiver's ``accept`` set, so nothing
    outside it (pickle) is ever decoded; a message-like object that is not
    kombu's gives its ``payload``."""
    if not isinstance(message, Message):
        try:  # a message-like object of the user's or a test's
            return message.payload
        except Exception as exc:
            return rejected(receiver, 'decode_error', None, exc)
    if message.errors:
        return rejected(receiver, 'decode_error', None, 'undecompressable body')
    try:
        return kombu_loads(message.body, message.content_type,
                           message.content_encoding, accept=receiver.accept)
    except Exception as exc:
        return rejected(receiver, 'decode_error', None, exc)


def decode_odd_json(receiver, raw):
    """Raw JSON that msgspec refused (NaN, Infinity, bad UTF-8): kombu
    decides, as stock would."""
    receiver.decode_fallbacks += 1
    try:
        return kombu_loads(raw, JSON, 'utf-8', accept=receiver.accept)
    except Exception as exc:
        return rejected(receiver, 'decode_error', None, exc)


def on_parts(receiver, routing_key, headers, body, content_type, content_encoding,
             exchange):
    """``Receiver.on_raw`` of what only kombu may decode: ``on_message`` of
    the kombu message of these parts."""
    return receiver.on_message(receiver.fast_prepare, Message(
        body=body, content_type=content_type, content_encoding=content_encoding,
        headers=headers, delivery_info={'exchange': exchange, 'routing_key': routing_key}))


def apply_held(on_raw, items, deadline, minimum, other, error):
    """``Receiver.apply_held`` with *on_raw* for the argument tuples: the
    fallback's (and any stand-in receiver's) loop; the compiled core runs
    the same loop in C."""
    total = len(items)
    monotonic = time.monotonic
    done = 0
    while done < total:
        item = items[done]
        done += 1
        try:
            if type(item) is tuple:
                on_raw(*item)
            else:
                other(item)
        except Exception as exc:  # pylint: disable=broad-except
            error(exc)
        if not done & 7 and done >= minimum and monotonic() >= deadline:
            break
    return done


def prepare(self, body):
    """Apply the Lamport clock rules to *body* and stamp it.

    Same contract as ``EventReceiver.event_from_message(body,
    localize=False)``: returns ``(type, body)``, *body* being the mapping
    given, stamped in place (``clock`` and ``local_received`` set), as stock
    does.  A clock that is not an int in range is not taken; the clock is
    forwarded as if the event had none.
    """
    clock = self.gossip.clock
    type_ = body['type']
    if type_ == 'task-sent':
        body['clock'] = (clock.value or 1) - 1
        clock.adjust(body['clock'])
    elif 'clock' not in body:
        body['clock'] = clock.forward()
    elif valid_peer_clock(body['clock']):
        clock.adjust(body['clock'])
    else:
        self.gossip._reject('bad_clock', body.get('hostname'), body['clock'])
        body['clock'] = clock.forward()
    body['local_received'] = time.time()
    return type_, body


def receiver_stats(self):
    return {name: getattr(self, name) for name in RECEIVER_COUNTERS}
