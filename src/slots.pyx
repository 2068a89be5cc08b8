# Slot-offset reads (included by _core.pyx; declarations in slots.pxd).
#
# Two kinds of objects cross the hot path with their fields in slots: the
# msgspec Struct a standard event body decodes into, and kombu's Message.
# For both, reading a field is a load at the slot's offset (the member
# descriptor's) instead of a Python attribute lookup, checked at import (or
# once per message class) against getattr.

_fast_json = _common.fast_json  # exact JSON (big ints preserved), or None

try:
    import msgspec
except ImportError:  # pragma: no cover - depends on the platform
    _decode_event = None
    _EVENT_FIELDS = ()
else:
    class _Event(msgspec.Struct, forbid_unknown_fields=True, gc=False):
        """The body of a worker event exactly as Celery sends it (13 fields,
        no others): such bodies skip the dict and land in the table as is."""
        hostname: object
        utcoffset: object
        pid: object
        clock: object
        freq: object
        active: object
        processed: object
        loadavg: object
        sw_ident: object
        sw_ver: object
        sw_sys: object
        timestamp: object
        type: object

    _decode_event = msgspec.json.Decoder(_Event).decode
    _EVENT_FIELDS = _Event.__struct_fields__

# the names a Worker serves from its last standard event
cdef frozenset _EVENT_FIELD_SET = frozenset(_EVENT_FIELDS) | {'local_received'}


# Where the fields the hot path reads sit inside an _Event: a Struct keeps
# its fields in slots, so reading one is a load at a fixed offset (the
# member descriptor's), not a Python attribute lookup.  Checked against
# getattr at import; when it does not hold, _OFFSETS_OK is False and the
# hot path uses getattr.
cdef Py_ssize_t _OFF_HOSTNAME = 0, _OFF_CLOCK = 0, _OFF_FREQ = 0
cdef Py_ssize_t _OFF_TIMESTAMP = 0, _OFF_TYPE = 0
cdef bint _OFFSETS_OK = False


cdef Py_ssize_t _member_offset(object cls, str name) except -1:
    descr = cls.__dict__.get(name)
    if type(descr).__name__ != 'member_descriptor':
        return 0
    return (<PyMemberDescrObject*>descr).d_member.offset


cdef inline object _slot(object obj, Py_ssize_t offset):
    cdef PyObject* value = (<PyObject**>((<char*><PyObject*>obj) + offset))[0]
    if value == NULL:
        raise AttributeError('unset field')
    return <object>value


def _init_offsets():
    global _OFF_HOSTNAME, _OFF_CLOCK, _OFF_FREQ, _OFF_TIMESTAMP, _OFF_TYPE, _OFFSETS_OK
    if _decode_event is None:
        return False
    _OFF_HOSTNAME = _member_offset(_Event, 'hostname')
    _OFF_CLOCK = _member_offset(_Event, 'clock')
    _OFF_FREQ = _member_offset(_Event, 'freq')
    _OFF_TIMESTAMP = _member_offset(_Event, 'timestamp')
    _OFF_TYPE = _member_offset(_Event, 'type')
    if not (_OFF_HOSTNAME and _OFF_CLOCK and _OFF_FREQ and _OFF_TIMESTAMP and _OFF_TYPE):
        return False
    sample = _decode_event(
        b'{"hostname": "h", "utcoffset": 0, "pid": 1, "clock": 7, "freq": 2.5,'
        b' "active": 0, "processed": 0, "loadavg": [], "sw_ident": "i",'
        b' "sw_ver": "v", "sw_sys": "s", "timestamp": 1.5, "type": "t"}')
    _OFFSETS_OK = (
        _slot(sample, _OFF_HOSTNAME) is sample.hostname
        and _slot(sample, _OFF_CLOCK) is sample.clock
        and _slot(sample, _OFF_FREQ) is sample.freq
        and _slot(sample, _OFF_TIMESTAMP) is sample.timestamp
        and _slot(sample, _OFF_TYPE) is sample.type)
    return _OFFSETS_OK


_init_offsets()


# kombu's Message keeps the attributes the hot path reads of every message
# in slots of its own (``Message.__slots__``).  For a message class that
# resolves them to those slots, reading one is a load at the slot's offset
# too, exact because a slot is a data descriptor (an instance ``__dict__``
# cannot shadow it) and an unset one raises AttributeError as getattr would.
# Each class is checked once (:func:`_slotted`); others use getattr.
cdef tuple _MESSAGE_SLOTS = ('body', 'content_type', 'content_encoding',
                             'headers', 'delivery_info')
cdef Py_ssize_t _OFF_BODY = 0, _OFF_CONTENT_TYPE = 0, _OFF_CONTENT_ENCODING = 0
cdef Py_ssize_t _OFF_HEADERS = 0, _OFF_DELIVERY_INFO = 0
cdef dict _slotted_classes = {}  # message class -> bool


def _init_message_offsets():
    global _OFF_BODY, _OFF_CONTENT_TYPE, _OFF_CONTENT_ENCODING, _OFF_HEADERS
    global _OFF_DELIVERY_INFO
    offsets = [_member_offset(Message, name) for name in _MESSAGE_SLOTS]
    if all(offsets):
        (_OFF_BODY, _OFF_CONTENT_TYPE, _OFF_CONTENT_ENCODING, _OFF_HEADERS,
         _OFF_DELIVERY_INFO) = offsets
    return all(offsets)


_init_message_offsets()


cdef object _owner(type kind, str name):
    """The first class of *kind*'s MRO that defines *name*."""
    return next(c for c in kind.__mro__ if name in c.__dict__)


cdef bint _slotted(type kind) except -1:
    """True if instances of *kind* (a kombu Message class) read the
    attributes of _MESSAGE_SLOTS from Message's slots: no attribute hook
    of its own, and Message defines each of them first in its MRO."""
    found = _slotted_classes.get(kind)
    if found is None:
        found = (_OFF_BODY != 0 and gf_generic_getattr(kind)
                 and all(_owner(kind, name) is Message for name in _MESSAGE_SLOTS))
        _slotted_classes[kind] = found
    return found
