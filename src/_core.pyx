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
from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.unicode cimport (PyUnicode_CheckExact, PyUnicode_DATA, PyUnicode_GET_LENGTH,
                              PyUnicode_READ_CHAR)
from libc.math cimport ldexp
from libc.string cimport memchr, memcmp, memcpy, memset

import heapq
import threading
import time
from decimal import Decimal

from kombu.message import Message
from kombu.serialization import loads as kombu_loads

try:  # exact JSON (big ints preserved)
    import msgspec
except ImportError:  # pragma: no cover - depends on the platform
    _fast_json = _decode_event = None
    _EVENT_FIELDS = ()
else:
    _fast_json = msgspec.json.Decoder().decode

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
cdef frozenset _EVENT_FIELD_SET = frozenset(_EVENT_FIELDS) | {'local_received'}


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    ctypedef struct PyTypeObject


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

cdef extern from *:
    """
    /* Attribute lookup of *type*'s instances is object's own (no
       __getattribute__ or __getattr__ of a Python class). */
    static int gf_generic_getattr(PyObject* type) {
        return ((PyTypeObject*)type)->tp_getattro == PyObject_GenericGetAttr;
    }
    """
    bint gf_generic_getattr(object type)


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

__all__ = ('Clock', 'Worker', 'State', 'Receiver', 'MAX_PEER_CLOCK', 'REJECTED',
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
    int PyObject_GenericSetAttr(object obj, object name, object value) except -1
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow) except? -1.0

cdef dict _DEFAULTS = dict(DEFAULT_FIELDS)
cdef str JSON = 'application/json'
#: What ``Receiver.decode`` returns for a message it rejected (a JSON
#: ``null`` body decodes to None, which is bad input of another kind).
REJECTED = object()
cdef object _REJECTED = REJECTED
cdef object _time = time.time
cdef object _heappush = heapq.heappush
cdef object _heappop = heapq.heappop


cdef extern from *:
    """
    /* a == b for two exact strs; compact ones (every str but a legacy,
       perhaps not ready, one of 3.10/3.11) by length, kind and bytes,
       which for equal strs are equal. */
    static int gf_str_equal(PyObject* a, PyObject* b) {
        if (a == b)
            return 1;
        if (PyUnicode_IS_COMPACT(a) && PyUnicode_IS_COMPACT(b))
            return (PyUnicode_GET_LENGTH(a) == PyUnicode_GET_LENGTH(b)
                    && PyUnicode_KIND(a) == PyUnicode_KIND(b)
                    && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b),
                              PyUnicode_GET_LENGTH(a) * PyUnicode_KIND(a)) == 0);
        int order = PyUnicode_Compare(a, b);
        if (order == -1 && PyErr_Occurred())
            return -1;
        return order == 0;
    }
    """
    int gf_str_equal(object a, object b) except -1


# ``a == b`` and ``a != b`` as Python evaluates them; for two exact strs
# without the call (Cython's compares them with PyUnicode_Compare, which
# orders them).
cdef inline bint _eq(object a, object b) except -1:
    if type(a) is str and type(b) is str:
        return gf_str_equal(a, b)
    return a == b


cdef inline bint _ne(object a, object b) except -1:
    if type(a) is str and type(b) is str:
        return not gf_str_equal(a, b)
    return a != b


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
    # kombu's encodings are nested objects: with no second '{' there are none
    if n < 2 or memchr(p + 1, 123, n - 1) == NULL:  # '{'
        return False
    while i + 8 <= n:
        found = <const unsigned char*>memchr(p + i, 95, n - 7 - i)  # '_'
        if found == NULL:
            return False
        if memcmp(found, b"__type__", 8) == 0:
            return True
        i = (found - p) + 1
    return False


# -- the scanner of standard event bodies --------------------------------------
#
# Celery's worker events are small JSON objects of 13 known keys with plain
# ASCII strings, short numbers and a list of numbers.  For such a body the
# hot path needs five values (hostname, type, clock, timestamp, freq); this
# scanner checks that the bytes are exactly such an object (a strict subset
# of JSON: no escapes, no exponents, no non-ASCII, no nesting beyond one
# list, each standard key once and no other) and extracts those five.  The
# worker entry keeps the raw bytes and decodes them (with msgspec, exactly as
# the general path would) only when someone reads its other attributes.
# Anything outside the subset goes to the msgspec/kombu path.
#
# It reads a bytes object's buffer, which CPython always ends with a NUL
# byte: no table below takes NUL, so every loop stops at the end without a
# bounds check of its own.

cdef enum:
    # the standard keys, in the order of _KEY_NAMES
    _K_HOSTNAME, _K_TYPE, _K_CLOCK, _K_TIMESTAMP, _K_FREQ, _K_UTCOFFSET,
    _K_PID, _K_ACTIVE, _K_PROCESSED, _K_LOADAVG, _K_SW_IDENT, _K_SW_VER, _K_SW_SYS
    _ALL_KEYS = 0x1FFF      # 13 standard keys
    _MAX_NUMBER = 24        # longest number literal we parse ourselves
    _MAX_DIGITS = 19        # digits that always fit a uint64
    _MAX_DECIMALS = 22      # 10**22 is the largest power of ten a double holds exactly

cdef struct Scan:
    Py_ssize_t host_start, host_end, type_start, type_end
    long long clock
    double timestamp, freq

cdef struct Number:
    unsigned long long digits   # all the digits as an integer (if count <= _MAX_DIGITS)
    int count                   # how many digits, before and after the point
    int decimals                # how many after the point
    bint negative, is_int

cdef const char* _KEY_NAMES[13]
_KEY_NAMES[:] = [b"hostname", b"type", b"clock", b"timestamp", b"freq",
                 b"utcoffset", b"pid", b"active", b"processed", b"loadavg",
                 b"sw_ident", b"sw_ver", b"sw_sys"]

# Byte classes: inside a string of the subset (printable ASCII but '"' and
# '\\'), JSON whitespace, digits.
cdef bint _PLAIN[256]
cdef bint _SPACE[256]
cdef bint _DIGIT[256]
# 5**k and 10.0**k for k <= _MAX_DECIMALS, all exact
cdef unsigned long long _POW5[_MAX_DECIMALS + 1]
cdef double _POW10[_MAX_DECIMALS + 1]
# Celery writes the keys in one order and the same bytes between them:
# '{"hostname": ' opens the body and ', "<key>": ' comes before every other
# key.  The scanner first tries the fragment that comes next in that layout
# (two 8-byte words compared under a mask), and reads the separator and the
# key one by one only when it differs.  Fragment k is the one before key k;
# _F_OPEN is the opening one, and after the last key none is expected.
cdef enum:
    _F_OPEN = 13
    _F_NONE = -1
cdef int _CELERY_ORDER[13]
_CELERY_ORDER[:] = [_K_HOSTNAME, _K_UTCOFFSET, _K_PID, _K_CLOCK, _K_FREQ, _K_ACTIVE,
                    _K_PROCESSED, _K_LOADAVG, _K_SW_IDENT, _K_SW_VER, _K_SW_SYS,
                    _K_TIMESTAMP, _K_TYPE]
cdef int _NEXT_FRAGMENT[13]  # by key
cdef unsigned long long _FRAGMENT[14][2]
cdef unsigned long long _FRAGMENT_MASK[14][2]
cdef Py_ssize_t _FRAGMENT_LENGTH[14]


cdef void _set_fragment(int f, bytes text) noexcept:
    cdef unsigned char fragment[16]
    cdef unsigned char mask[16]
    cdef Py_ssize_t length = len(text)  # at most 16
    memset(fragment, 0, 16)
    memset(mask, 0, 16)
    memcpy(fragment, <char*>text, length)
    memset(mask, 0xFF, length)
    memcpy(_FRAGMENT[f], fragment, 16)
    memcpy(_FRAGMENT_MASK[f], mask, 16)
    _FRAGMENT_LENGTH[f] = length


cdef void _init_scanner_tables() noexcept:
    cdef int c, k
    for c in range(256):
        _PLAIN[c] = 32 <= c <= 126 and c != c'"' and c != c'\\'
        _SPACE[c] = c == c' ' or c == c'\n' or c == c'\r' or c == c'\t'
        _DIGIT[c] = c'0' <= c <= c'9'
    _POW5[0], _POW10[0] = 1, 1.0
    for k in range(1, _MAX_DECIMALS + 1):
        _POW5[k] = _POW5[k - 1] * 5
        _POW10[k] = _POW10[k - 1] * 10.0
    for c in range(13):
        k = _CELERY_ORDER[c]
        _NEXT_FRAGMENT[k] = _CELERY_ORDER[c + 1] if c < 12 else _F_NONE
        _set_fragment(k, b', "' + <bytes>_KEY_NAMES[k] + b'": ')
    _set_fragment(_F_OPEN, b'{"' + <bytes>_KEY_NAMES[_CELERY_ORDER[0]] + b'": ')


_init_scanner_tables()


cdef extern from *:
    """
    #include <float.h>
    /* True where double arithmetic rounds to double (SSE2), not to x87's
       extended precision: a division of two exact doubles is then a single
       correctly rounded operation. */
    #define GF_DOUBLE_EVAL (FLT_EVAL_METHOD == 0)

    static inline int gf_bit_length(unsigned long long x) {
    #if defined(__GNUC__) || defined(__clang__)
        return x ? 64 - __builtin_clzll(x) : 0;
    #else
        int n = 0;
        while (x) { x >>= 1; n++; }
        return n;
    #endif
    }
    """
    const bint GF_DOUBLE_EVAL
    int gf_bit_length(unsigned long long x) noexcept nogil


cdef inline bint _at_fragment(const unsigned char* p, Py_ssize_t i, Py_ssize_t n,
                              int f) noexcept nogil:
    """p[i:] starts with fragment *f* (see _FRAGMENT)."""
    cdef unsigned long long a, b
    if f == _F_NONE or i + 16 > n:
        return False
    memcpy(&a, p + i, 8)
    memcpy(&b, p + i + 8, 8)
    return (((a ^ _FRAGMENT[f][0]) & _FRAGMENT_MASK[f][0])
            | ((b ^ _FRAGMENT[f][1]) & _FRAGMENT_MASK[f][1])) == 0


cdef inline Py_ssize_t _skip_ws(const unsigned char* p, Py_ssize_t i) noexcept nogil:
    while _SPACE[p[i]]:
        i += 1
    return i


cdef inline Py_ssize_t _scan_string(const unsigned char* p, Py_ssize_t i) noexcept nogil:
    """p[i] is '"': the index after the closing quote, or -1."""
    i += 1
    while _PLAIN[p[i]]:
        i += 1
    return i + 1 if p[i] == c'"' else -1


cdef inline Py_ssize_t _scan_number(const unsigned char* p, Py_ssize_t i,
                                    Number* out) noexcept nogil:
    """A JSON number without exponent at p[i]: the index after it, or -1."""
    cdef Py_ssize_t start = i, first, point
    # past _MAX_DIGITS digits this wraps around: then count says not to use it
    cdef unsigned long long digits = 0
    out.negative = p[i] == c'-'
    if out.negative:
        i += 1
    first = i
    if not _DIGIT[p[i]]:
        return -1
    if p[i] == c'0':  # a leading 0 stands alone
        i += 1
    else:
        while _DIGIT[p[i]]:
            digits = digits * 10 + (p[i] - c'0')
            i += 1
    out.is_int = p[i] != c'.'
    if out.is_int:
        out.count, out.decimals = <int>(i - first), 0
    else:
        point = i
        i += 1
        if not _DIGIT[p[i]]:
            return -1
        while _DIGIT[p[i]]:
            digits = digits * 10 + (p[i] - c'0')
            i += 1
        out.count, out.decimals = <int>(i - first - 1), <int>(i - point - 1)
    if p[i] == c'e' or p[i] == c'E':  # exponents: not ours
        return -1
    if i - start > _MAX_NUMBER:
        return -1
    out.digits = digits
    return i


cdef inline double _scaled_down(unsigned long long w, int k) noexcept nogil:
    """``w / 10**k`` correctly rounded (to nearest, ties to even), for
    ``2**53 < w < 2**64`` and ``k <= _MAX_DECIMALS``, in exact integers.

    ``w / 10**k == (w / 5**k) * 2**-k``: the quotient ``q`` of ``w * 2**s``
    by ``5**k`` is taken with 54 or 55 bits, and its bits below the 53 of a
    double, with the remainder ``r``, decide the rounding.  Long division
    shifts in as many bits at a time as keep ``r << step`` below 2**63.
    """
    cdef unsigned long long d = _POW5[k], q = w // d, r = w % d, low, half
    cdef int bits_d = gf_bit_length(d), scale, s, step, shift
    scale = 54 + bits_d - gf_bit_length(w)  # w * 2**scale / d >= 2**53
    if scale < 0:
        scale = 0
    s = scale
    while s > 0:
        step = s if s < 63 - bits_d else 63 - bits_d
        r <<= step
        q = (q << step) | (r // d)
        r %= d
        s -= step
    shift = gf_bit_length(q) - 53  # >= 1
    low = q & ((1ULL << shift) - 1)
    half = 1ULL << (shift - 1)
    q >>= shift
    if low > half or (low == half and (r != 0 or q & 1)):
        q += 1  # q <= 2**53: still exact as a double
    return ldexp(<double>q, shift - scale - k)


cdef inline bint _exact_double(const Number* num, double* out) noexcept nogil:
    """The double nearest to *num* (as float() of its literal), if its
    digits are few enough for :func:`_scaled_down` or a single division."""
    cdef double value
    if num.count > _MAX_DIGITS or num.decimals > _MAX_DECIMALS:
        return False
    if num.digits == 0:
        value = 0.0
    elif num.digits <= (1ULL << 53):  # both operands exact: one rounding
        if not GF_DOUBLE_EVAL:
            return False
        value = <double>num.digits / _POW10[num.decimals]
    else:
        value = _scaled_down(num.digits, num.decimals)
    out[0] = -value if num.negative else value
    return True


cdef double _number_value(const unsigned char* p, Py_ssize_t start, Py_ssize_t end,
                          const Number* num) except? -1.0:
    """float() of the literal p[start:end] that :func:`_scan_number` read."""
    cdef double value
    cdef char text[_MAX_NUMBER + 1]
    if _exact_double(num, &value):
        return value
    # locale-independent and correctly rounded, like float(); our literals
    # are short and have no exponent, so it cannot overflow
    memcpy(text, p + start, end - start)
    text[end - start] = 0
    return PyOS_string_to_double(text, NULL, NULL)


cdef inline Py_ssize_t _scan_scalar(const unsigned char* p, Py_ssize_t i,
                                    Py_ssize_t n) noexcept nogil:
    cdef Number num
    cdef unsigned char c = p[i]
    if c == c'"':
        return _scan_string(p, i)
    if c == c't' and i + 4 <= n and memcmp(p + i, b"true", 4) == 0:
        return i + 4
    if c == c'f' and i + 5 <= n and memcmp(p + i, b"false", 5) == 0:
        return i + 5
    if c == c'n' and i + 4 <= n and memcmp(p + i, b"null", 4) == 0:
        return i + 4
    return _scan_number(p, i, &num)


cdef inline Py_ssize_t _scan_value(const unsigned char* p, Py_ssize_t i,
                                   Py_ssize_t n) noexcept nogil:
    if p[i] == c'[':  # a flat list of scalars
        i = _skip_ws(p, i + 1)
        if p[i] == c']':
            return i + 1
        while True:
            i = _scan_scalar(p, i, n)
            if i < 0:
                return -1
            i = _skip_ws(p, i)
            if p[i] == c',':
                i = _skip_ws(p, i + 1)
                continue
            if p[i] == c']':
                return i + 1
            return -1
    return _scan_scalar(p, i, n)


cdef inline int _key_index(const unsigned char* p, Py_ssize_t length) noexcept nogil:
    """Which standard key p[:length] is, or -1.

    The length and the first byte name the only candidate (sw_ver and sw_sys
    differ in the fourth); one comparison confirms it.
    """
    cdef int k = -1
    cdef Py_ssize_t j
    cdef unsigned char c = p[0]
    if length == 3:
        k = _K_PID if c == c'p' else -1
    elif length == 4:
        k = _K_TYPE if c == c't' else _K_FREQ if c == c'f' else -1
    elif length == 5:
        k = _K_CLOCK if c == c'c' else -1
    elif length == 6:
        k = (_K_ACTIVE if c == c'a' else
             (_K_SW_VER if p[3] == c'v' else _K_SW_SYS) if c == c's' else -1)
    elif length == 7:
        k = _K_LOADAVG if c == c'l' else -1
    elif length == 8:
        k = _K_HOSTNAME if c == c'h' else _K_SW_IDENT if c == c's' else -1
    elif length == 9:
        k = (_K_TIMESTAMP if c == c't' else _K_UTCOFFSET if c == c'u' else
             _K_PROCESSED if c == c'p' else -1)
    if k < 0:
        return -1
    for j in range(1, length):
        if p[j] != <unsigned char>_KEY_NAMES[k][j]:
            return -1
    return k


cdef bint scan_standard(bytes body, Scan* out) except -1:
    """True if *body* is a standard event body (see above); fills *out*."""
    cdef const unsigned char* p = <const unsigned char*><char*>body
    cdef Py_ssize_t n = len(body), i = 0, end
    cdef int k, seen = 0, expected = _F_OPEN
    cdef Number num
    while True:
        # i: at the start, or just after a value
        if _at_fragment(p, i, n, expected):
            k = _CELERY_ORDER[0] if expected == _F_OPEN else expected
            i += _FRAGMENT_LENGTH[expected]
        else:
            i = _skip_ws(p, i)
            if p[i] == c'}' and seen:
                return seen == _ALL_KEYS and _skip_ws(p, i + 1) == n
            if p[i] != (c',' if seen else c'{'):
                return False
            i = _skip_ws(p, i + 1)
            if p[i] != c'"':
                return False
            end = _scan_string(p, i)
            if end < 0:
                return False
            k = _key_index(p + i + 1, end - 2 - i)
            if k < 0:
                return False
            i = _skip_ws(p, end)
            if p[i] != c':':
                return False
            i += 1
        if seen & (1 << k):
            return False
        seen |= 1 << k
        expected = _NEXT_FRAGMENT[k]
        i = _skip_ws(p, i)
        if k == _K_HOSTNAME or k == _K_TYPE:
            if p[i] != c'"':
                return False
            end = _scan_string(p, i)
            if end < 0:
                return False
            if k == _K_HOSTNAME:
                out.host_start, out.host_end = i + 1, end - 1
            else:
                out.type_start, out.type_end = i + 1, end - 1
        elif k == _K_CLOCK or k == _K_TIMESTAMP or k == _K_FREQ:
            end = _scan_number(p, i, &num)
            if end < 0:
                return False
            if k == _K_CLOCK:
                if not num.is_int or num.negative or num.count > 18:
                    return False
                out.clock = <long long>num.digits
            elif k == _K_TIMESTAMP:
                out.timestamp = _number_value(p, i, end, &num)
            else:
                out.freq = _number_value(p, i, end, &num)
        else:
            end = _scan_value(p, i, n)
            if end < 0:
                return False
        i = end


cdef object _MISSING = object()


cdef object first_reserved_key(dict event):
    """The first key of *event* in RESERVED_FIELDS, or None.

    Walks the keys once and filters them on (first character, length), a
    pair no field Celery sends shares with a reserved name, so a normal
    heartbeat costs no hash lookups here.
    """
    cdef Py_ssize_t pos = 0, n
    cdef PyObject* key
    cdef PyObject* value
    cdef Py_UCS4 first
    while PyDict_Next(event, &pos, &key, &value):
        if not PyUnicode_CheckExact(<object>key):
            continue
        n = PyUnicode_GET_LENGTH(<object>key)
        if n < 2:
            continue
        first = PyUnicode_READ_CHAR(<object>key, 0)
        if ((first == 'h' and (n == 10 or n == 13 or n == 17))
                or (first == 'e' and (n == 5 or n == 13))
                or (first == 'a' and n == 5)
                or (first == 'i' and n == 2)
                or (first == 's' and n == 13)
                or (first == 'u' and n == 6)
                or first == '_'):
            if <object>key in RESERVED_FIELDS:
                return <object>key
    return None


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


cdef class _Bucket


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
    cdef _Bucket _bucket  # the wheel slot it sits in, or None
    cdef Worker _next, _prev  # its neighbours there
    cdef dict _fields  # the same dict object as __dict__
    # The last standard event and its receive time: its raw JSON bytes
    # (decoded into an _Event on first use) or an _Event.  While set, its
    # fields are served by __getattr__ and are absent from __dict__.
    cdef object _event
    cdef double _received

    heartbeat_max = _HB_MAX
    expire_window = 200

    def __init__(self, hostname=None):
        self._fields = PyObject_GenericGetDict(self, NULL)
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
        self.materialize()
        for key, value in dict(fields, **kw).items():
            if key not in RESERVED_FIELDS:
                self._fields[key] = value

    def __getattr__(self, name):
        # only called for names not in __dict__
        if self._event is not None:
            if name == 'local_received':
                return self._received
            if name in _EVENT_FIELD_SET:
                return getattr(self.decoded_event(), name)
        if name in _DEFAULTS:  # stock Worker's defaults, never set
            return _DEFAULTS[name]
        raise AttributeError(
            f"'{type(self).__name__}' object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if self._event is not None and name in _EVENT_FIELD_SET:
            self.materialize()
        PyObject_GenericSetAttr(self, name, value)

    cdef void set_event(self, object event, double received) except *:
        """Take a standard event's fields without copying them."""
        cdef dict fields = self._fields
        if self._event is None and fields:
            for name in _EVENT_FIELD_SET:
                fields.pop(name, None)
        self._event = event
        self._received = received

    cdef object decoded_event(self):
        if type(self._event) is bytes:  # checked by scan_standard: cannot fail
            self._event = _decode_event(self._event)
        return self._event

    cpdef materialize(self):
        """Move the last standard event's fields into ``__dict__``."""
        event = self.decoded_event()
        if event is not None:
            self._event = None
            for name in _EVENT_FIELDS:
                self._fields[name] = getattr(event, name)
            self._fields['local_received'] = self._received

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
cdef class _Bucket:
    """The workers of one slot of the deadline wheel, in the order they
    entered it: a doubly linked list through ``Worker._next``/``_prev``, so
    that a heartbeat moves its worker between slots without dict work."""
    cdef Worker head, tail
    cdef Py_ssize_t count

    cdef inline void append(self, Worker worker) noexcept:
        worker._prev = self.tail
        worker._next = None
        if self.tail is None:
            self.head = worker
        else:
            self.tail._next = worker
        self.tail = worker
        self.count += 1

    cdef inline void remove(self, Worker worker) noexcept:
        if worker._prev is None:
            self.head = worker._next
        else:
            worker._prev._next = worker._next
        if worker._next is None:
            self.tail = worker._prev
        else:
            worker._next._prev = worker._prev
        worker._next = worker._prev = None
        self.count -= 1

    cdef list members(self):
        """Its workers, in order."""
        cdef list found = []
        cdef Worker worker = self.head
        while worker is not None:
            found.append(worker)
            worker = worker._next
        return found


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
    cdef public Py_ssize_t event_count, dropped, joins, leaves, losses
    cdef dict _wheel
    cdef list _slots
    cdef long long _last_slot
    cdef _Bucket _last_bucket
    cdef bint _created
    cdef str _subject

    def __init__(self, on_node_join=None, on_node_leave=None,
                 on_reject=None, on_drift=None):
        self.workers = {}
        self.on_node_join = on_node_join
        self.on_node_leave = on_node_leave
        self.on_reject = on_reject
        self.on_drift = on_drift
        self.event_count = 0
        self.dropped = 0
        self.joins = 0
        self.leaves = 0
        self.losses = 0
        self._wheel = {}
        self._slots = []
        self._last_slot = -1
        self._last_bucket = None

    cdef object _reject(self, str reason, object hostname, object detail):
        """Drop the event: count it here and tell the bootstep."""
        self.dropped += 1
        if self.on_reject is not None:
            self.on_reject(reason, hostname, detail)
        return None

    def event(self, event):
        """Apply one prepared event (``celery.events.state.State.event``).

        Returns ``((worker, created), subject)`` for worker events, as stock
        does, and None for events that do not change the table.
        """
        cdef Worker worker = self.apply(
            <dict>event if type(event) is dict else dict(event))
        if worker is None:
            return None
        return (worker, self._created), self._subject

    cdef Worker apply(self, dict event):
        """The work of :meth:`event`; sets ``_created`` and ``_subject``."""
        cdef double timestamp, received, freq = -1.0
        cdef Worker worker
        cdef bint created
        cdef str subject
        self.event_count += 1
        type_ = event.get('type')
        if type(type_) is not str:
            self._reject('bad_type', event.get('hostname'), type_)
            return None
        if type_ == 'worker-heartbeat':
            subject = 'heartbeat'
        else:
            group, _, subject = (<str>type_).partition('-')
            if group != 'worker':
                return None
        hostname = event.get('hostname')
        if type(hostname) is not str or not hostname:
            self._reject('bad_hostname', None, hostname)
            return None
        timestamp = as_seconds_c(event.get('timestamp'), _MAX_TIME)
        if timestamp < 0.0:
            self._reject('bad_timestamp', hostname, event.get('timestamp'))
            return None
        received = as_seconds_c(event.get('local_received'), _MAX_TIME)
        if received < 0.0:
            self._reject('bad_local_received', hostname, event.get('local_received'))
            return None
        raw_freq = event.get('freq', _MISSING)
        if raw_freq is not _MISSING:
            freq = as_seconds_c(raw_freq, _MAX_FREQ)
            if freq < 0.0:
                self._reject('bad_freq', hostname, raw_freq)
                return None
        reserved = first_reserved_key(event)
        if reserved is not None:
            if self.on_reject is not None:  # cleaned, still applied
                self.on_reject('reserved_field', hostname, reserved)
            event = {k: v for k, v in event.items() if k not in RESERVED_FIELDS}
        self._subject = subject
        found = self.workers.get(hostname)
        if subject == 'offline':
            return self._offline(found, hostname, event)
        created = found is None
        if created:
            worker = Worker(hostname)
            self.workers[hostname] = worker
        else:
            worker = <Worker>found
        self._created = created
        worker.materialize()
        worker._fields.update(event)
        if freq > 0.0:
            worker._freq = freq
        self._heartbeat(worker, timestamp, received)
        if created or subject == 'online':
            self.joins += 1
            if self.on_node_join is not None:
                self.on_node_join(worker)
        return worker

    cdef void apply_event(self, object event, str hostname, bint online,
                          double timestamp, double freq, double received) except *:
        """Apply a validated standard worker event (not offline): the fast
        lane of :meth:`apply`, with the same effects."""
        cdef Worker worker
        self.event_count += 1
        found = self.workers.get(hostname)
        created = found is None
        if created:
            worker = Worker(hostname)
            self.workers[hostname] = worker
        else:
            worker = <Worker>found
        worker.set_event(event, received)
        worker._freq = freq
        self._heartbeat(worker, timestamp, received)
        if created or online:
            self.joins += 1
            if self.on_node_join is not None:
                self.on_node_join(worker)

    cdef Worker _offline(self, object found, object hostname, dict event):
        cdef Worker worker
        self._created = False
        if found is None:  # unknown host: tell, but do not store
            worker = Worker(hostname)
        else:
            worker = <Worker>found
            self._unschedule(worker)
            del self.workers[hostname]
            worker.materialize()
        worker._fields.update(event)
        worker._n = 0
        self.leaves += 1
        if self.on_node_leave is not None:
            self.on_node_leave(worker)
        return worker

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
        cdef _Bucket bucket
        if slot == worker._slot:
            return
        self._unschedule(worker)
        # heartbeats arrive in time order, so most land in the slot of the
        # previous one: remember it and skip the wheel lookup
        if slot == self._last_slot and self._last_bucket is not None:
            bucket = self._last_bucket
        else:
            key = slot
            found = self._wheel.get(key)
            if found is None:
                bucket = _Bucket()
                self._wheel[key] = bucket
                _heappush(self._slots, key)
            else:
                bucket = <_Bucket>found
            self._last_slot = slot
            self._last_bucket = bucket
        bucket.append(worker)
        worker._slot = slot
        worker._bucket = bucket

    cdef inline void _unschedule(self, Worker worker) except *:
        cdef _Bucket bucket = worker._bucket
        if bucket is None:
            return
        bucket.remove(worker)
        if not bucket.count:
            self._wheel.pop(worker._slot, None)
            if bucket is self._last_bucket:
                self._last_bucket = None
        worker._slot = -1
        worker._bucket = None

    def sweep(self, now=None):
        """Remove and return the workers whose heartbeats expired by *now*.

        Only due slots are visited: a slot that ended before *now* holds
        nothing but expired workers; the current slot is checked one by one.
        """
        cdef double t = _time() if now is None else now
        cdef long long current = <long long>(t * _SLOTS_PER_SECOND)
        cdef long long slot
        cdef list slots = self._slots, lost = [], expired
        cdef dict wheel = self._wheel, workers = self.workers
        cdef _Bucket bucket
        cdef Worker worker
        while slots and <long long>slots[0] <= current:
            slot = slots[0]
            found = wheel.get(slot)
            if found is None:  # emptied since it was pushed
                _heappop(slots)
                continue
            bucket = <_Bucket>found
            if bucket is self._last_bucket:
                self._last_bucket = None
            if slot < current:
                expired = bucket.members()
            else:
                expired = [w for w in bucket.members() if not t < (<Worker>w)._expires]
            for w in expired:
                bucket.remove(<Worker>w)
            if not bucket.count:
                _heappop(slots)
                del wheel[slot]
            for w in expired:
                worker = <Worker>w
                worker._slot = -1
                worker._bucket = None
                # user code may have removed or replaced the entry
                if workers.get(worker._hostname) is worker:
                    del workers[worker._hostname]
                    lost.append(worker)
            if slot == current:
                break
        self.losses += len(lost)
        return lost

    # -- queries -----------------------------------------------------------

    def expired(self, now=None):
        """Hostnames of the workers that :meth:`sweep` at *now* would
        remove, left in place (only due slots are visited)."""
        cdef double t = _time() if now is None else now
        cdef long long current = <long long>(t * _SLOTS_PER_SECOND)
        cdef dict workers = self.workers
        cdef list found = []
        for key, bucket in self._wheel.items():
            if <long long>key <= current:
                for w in (<_Bucket>bucket).members():
                    hostname = (<Worker>w)._hostname
                    if not t < (<Worker>w)._expires and workers.get(hostname) is w:
                        found.append(hostname)
        return found

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
                dead += (<_Bucket>bucket).count
            elif slot == current:
                for w in (<_Bucket>bucket).members():
                    if not t < (<Worker>w)._expires:
                        dead += 1
        return len(self.workers) - dead

    def is_alive(self, hostname, now=None):
        found = self.workers.get(hostname)
        if found is None or not (<Worker>found)._n:
            return False
        return (_time() if now is None else now) < (<Worker>found)._expires

    def clear(self):
        cdef Worker worker
        self.workers.clear()
        for bucket in self._wheel.values():  # unlink, so none is left half in
            for w in (<_Bucket>bucket).members():
                worker = <Worker>w
                (<_Bucket>bucket).remove(worker)
                worker._slot = -1
                worker._bucket = None
        self._wheel.clear()
        del self._slots[:]
        self._last_bucket = None

    def __len__(self):
        return len(self.workers)

    def __repr__(self):
        return f'<State: workers={len(self.workers)} events={self.event_count}>'


cdef enum:
    _HOST_PROBES = 16       # slots a _HostIndex looks at for one name
    _HOST_MIN_SIZE = 64


cdef inline size_t _fnv1a(const char* p, Py_ssize_t n) noexcept nogil:
    cdef unsigned long long h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <unsigned char>p[i]) * 1099511628211ULL
    # the low bits, which pick the slot, depend on the low bits only: mix
    # the high ones in
    return <size_t>(h ^ (h >> 32))


@cython.final
cdef class _HostIndex:
    """Hostname strs by their ASCII bytes, so that a scanned body finds the
    str its worker is filed under instead of creating, hashing and freeing
    one per message.

    Open addressing, at most _HOST_PROBES probes per name (so a flood of
    colliding names costs misses, not time) and at most half full: when an
    addition would make it fuller it starts over, empty, with at least
    twice as many slots as the table it serves has workers.  A str it
    returns has exactly the bytes asked for, so an entry left by a worker
    that is gone is still right.
    """
    cdef PyObject** slots  # strong references to exact, compact ASCII strs, or NULL
    cdef size_t size
    cdef Py_ssize_t used

    def __dealloc__(self):
        self.reset(0)

    cdef str find(self, const char* name, Py_ssize_t n):
        cdef size_t i, probe
        cdef PyObject* entry
        if self.size == 0:
            return None
        i = _fnv1a(name, n)
        for probe in range(_HOST_PROBES):
            entry = self.slots[(i + probe) & (self.size - 1)]
            if entry == NULL:
                return None
            if (PyUnicode_GET_LENGTH(<object>entry) == n
                    and memcmp(PyUnicode_DATA(<object>entry), name, n) == 0):
                return <str>entry
        return None

    cdef int add(self, str hostname, Py_ssize_t served) except -1:
        """Index *hostname* (ignored unless compact ASCII); *served*: the
        size of the table of workers."""
        cdef size_t i, probe, size = _HOST_MIN_SIZE
        cdef PyObject** slot
        if not PyUnicode_IS_COMPACT_ASCII(hostname):
            return 0
        if (self.used + 1) * 2 > <Py_ssize_t>self.size:
            while size < <size_t>served * 2:
                size *= 2
            self.reset(size)
        i = _fnv1a(<const char*>PyUnicode_DATA(hostname), PyUnicode_GET_LENGTH(hostname))
        for probe in range(_HOST_PROBES):
            slot = &self.slots[(i + probe) & (self.size - 1)]
            if slot[0] == NULL:
                Py_INCREF(hostname)
                slot[0] = <PyObject*>hostname
                self.used += 1
                return 0
        return 0  # no free slot near: this name is not indexed

    cdef int reset(self, size_t size) except -1:
        """Drop every entry; then hold *size* (a power of two, or 0) slots."""
        cdef size_t i
        if self.slots != NULL:
            for i in range(self.size):
                if self.slots[i] != NULL:
                    Py_DECREF(<object>self.slots[i])
            PyMem_Free(self.slots)
            self.slots, self.size, self.used = NULL, 0, 0
        if size:
            self.slots = <PyObject**>PyMem_Calloc(size, sizeof(PyObject*))
            if self.slots == NULL:
                raise MemoryError()
            self.size = size
        return 0


cdef enum:
    _FEW_HANDLERS = 4


cdef object _handler_for(dict handlers, str key):
    """``handlers.get(key)``.  Gossip has two handlers: comparing *key* (a
    new str per message) with their keys costs less than hashing it."""
    cdef Py_ssize_t pos = 0
    cdef PyObject* name
    cdef PyObject* handler
    if len(handlers) > _FEW_HANDLERS:
        return handlers.get(key)
    while PyDict_Next(handlers, &pos, &name, &handler):
        if type(<object>name) is not str:  # its __eq__ decides: let the dict ask
            return handlers.get(key)
        if gf_str_equal(<object>name, key):
            return <object>handler
    return None


cdef inline bint _is_task_key(str key):
    """*key* is ``task`` or starts with ``task.`` (a task message)."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(key)
    return (n >= 4 and PyUnicode_READ_CHAR(key, 0) == u't'
            and PyUnicode_READ_CHAR(key, 1) == u'a'
            and PyUnicode_READ_CHAR(key, 2) == u's'
            and PyUnicode_READ_CHAR(key, 3) == u'k'
            and (n == 4 or PyUnicode_READ_CHAR(key, 4) == u'.'))


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
    cdef object _accept
    cdef bint _json_accepted
    cdef public object state_event
    cdef public object fast_prepare
    cdef public Py_ssize_t received, applied, own, skipped_tasks, decode_fallbacks
    cdef State _state
    cdef object _message_type  # the last kombu Message class read by slots
    cdef _HostIndex _hosts
    # The bootstep's swappable attributes, cached; Gossip.__setattr__ calls
    # refresh() whenever one of them is set, so a swap takes effect at once.
    cdef object _hostname, _clock, _update_state, _event_handlers

    @property
    def accept(self):
        """Content types we decode (kombu's prepared ``accept`` set)."""
        return self._accept

    @accept.setter
    def accept(self, value):
        self._accept = value
        self._json_accepted = value is None or JSON in value

    def __init__(self, gossip, state, clock, accept):
        self.gossip = gossip
        self.state = state
        self._state = state if type(state) is State else None
        self.clock = clock
        self.accept = accept
        # bound once, so that identity tells the fast path from a swap-in
        self.state_event = state.event if state is not None else None
        self.fast_prepare = self.prepare
        self._hosts = _HostIndex()
        self.received = 0
        self.applied = 0
        self.own = 0
        self.skipped_tasks = 0
        self.decode_fallbacks = 0
        self.refresh()

    def refresh(self):
        """Re-read the bootstep's ``hostname``, ``clock``, ``update_state``
        and ``event_handlers`` (called by ``Gossip.__setattr__``)."""
        gossip = self.gossip
        self._hostname = getattr(gossip, 'hostname', None)
        self._clock = getattr(gossip, 'clock', None)
        self._update_state = getattr(gossip, 'update_state', None)
        self._event_handlers = getattr(gossip, 'event_handlers', None)

    # -- decoding ----------------------------------------------------------

    cdef object raw_json(self, object body, object content_type,
                         object content_encoding, object headers):
        """*body* if we may decode it ourselves (JSON bytes in ``accept``,
        UTF-8, not compressed, no kombu ``__type__`` objects), else None."""
        if (_fast_json is None or type(body) is not bytes
                or _ne(content_type, JSON) or not self._json_accepted):
            return None
        if not (content_encoding is None or _eq(content_encoding, 'utf-8')
                or _eq(content_encoding, 'utf8')):
            return None
        if type(headers) is not dict or (<dict>headers).get('compression'):
            return None
        if has_type_marker(<bytes>body):
            return None
        return body

    cdef inline bint slotted(self, object message) except -1:
        """True if *message* is a kombu Message whose attributes we read
        from its slots (see :func:`_slotted`)."""
        if type(message) is self._message_type:
            return True
        if isinstance(message, Message) and _slotted(type(message)):
            self._message_type = type(message)
            return True
        return False

    cdef object message_raw(self, object message):
        """:meth:`raw_json` of a real kombu message, else None."""
        if self.slotted(message):
            return self.raw_json(
                _slot(message, _OFF_BODY), _slot(message, _OFF_CONTENT_TYPE),
                _slot(message, _OFF_CONTENT_ENCODING), _slot(message, _OFF_HEADERS))
        if not isinstance(message, Message):
            return None
        return self.raw_json(message.body, message.content_type,
                             message.content_encoding, message.headers)

    cpdef object decode(self, message, raw=None):
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
            raw = self.message_raw(message)
            if raw is None:
                try:
                    return kombu_loads(message.body, message.content_type,
                                       message.content_encoding, accept=self._accept)
                except Exception as exc:
                    return self._rejected('decode_error', None, exc)
        try:
            return _fast_json(raw)
        except Exception:
            self.decode_fallbacks += 1  # NaN, Infinity, bad UTF-8: kombu decides
        try:
            return kombu_loads(raw, JSON, 'utf-8', accept=self._accept)
        except Exception as exc:
            return self._rejected('decode_error', None, exc)

    cdef bint fast_lane(self, object raw, dict headers) except -1:
        """Handle a standard worker event without building a dict.

        Returns False, having changed nothing, when the message is anything
        else (another shape, bad or odd values, offline, own events, header
        mismatches...): the general path then handles it.
        """
        cdef double timestamp, freq
        cdef Scan scan
        if scan_standard(<bytes>raw, &scan):
            return self.scanned_lane(raw, <const char*><char*>raw, &scan, headers)
        try:
            event = _decode_event(raw)
        except Exception:
            return False
        if _OFFSETS_OK:
            hostname = _slot(event, _OFF_HOSTNAME)
            type_ = _slot(event, _OFF_TYPE)
            clock_value = _slot(event, _OFF_CLOCK)
            timestamp_value = _slot(event, _OFF_TIMESTAMP)
            freq_value = _slot(event, _OFF_FREQ)
        else:
            hostname = event.hostname
            type_ = event.type
            clock_value = event.clock
            timestamp_value = event.timestamp
            freq_value = event.freq
        if type(hostname) is not str or not hostname:
            return False
        header_host = headers.get('hostname')
        if header_host and header_host != hostname:
            return False
        if hostname == self._hostname:
            return False
        if (type(type_) is not str or not (<str>type_).startswith('worker-')
                or type_ == 'worker-offline'):
            return False
        if not valid_peer_clock_c(clock_value):
            return False
        timestamp = as_seconds_c(timestamp_value, _MAX_TIME)
        freq = as_seconds_c(freq_value, _MAX_FREQ)
        if timestamp < 0.0 or freq < 0.0:
            return False
        clock = self._clock
        if type(clock) is Clock:
            (<Clock>clock).adjust_c(clock_value)
        else:
            clock.adjust(clock_value)
        self._state.apply_event(event, hostname, type_ == 'worker-online',
                                timestamp, freq, <double>_time())
        self.applied += 1
        return True

    cdef bint scanned_lane(self, bytes raw, const char* p, Scan* scan,
                           dict headers) except -1:
        """:meth:`fast_lane` for a body that :func:`scan_standard` read."""
        cdef Py_ssize_t type_length = scan.type_end - scan.type_start
        cdef Py_ssize_t host_length = scan.host_end - scan.host_start
        cdef const char* type_ = p + scan.type_start
        cdef str hostname
        cdef bint indexed
        if host_length <= 0:
            return False
        hostname = self._hosts.find(p + scan.host_start, host_length)
        indexed = hostname is not None
        if not indexed:
            hostname = PyUnicode_DecodeASCII(p + scan.host_start, host_length, NULL)
        header_host = headers.get('hostname')
        if header_host and _ne(header_host, hostname):
            return False
        if _eq(hostname, self._hostname):
            return False
        if type_length < 7 or memcmp(type_, b"worker-", 7) != 0 or (
                type_length == 14 and memcmp(type_, b"worker-offline", 14) == 0):
            return False
        if not (scan.clock <= _MAX_PEER_CLOCK and 0.0 < scan.timestamp <= _MAX_TIME
                and 0.0 < scan.freq <= _MAX_FREQ):
            return False
        clock = self._clock
        if type(clock) is Clock:
            (<Clock>clock).adjust_c(scan.clock)
        else:
            clock.adjust(scan.clock)
        self._state.apply_event(
            raw, hostname,
            type_length == 13 and memcmp(type_, b"worker-online", 13) == 0,
            scan.timestamp, scan.freq, <double>_time())
        if not indexed:
            self._hosts.add(hostname, len(self._state.workers))
        self.applied += 1
        return True

    cdef object _reject(self, str reason, object hostname, object detail):
        self.gossip._reject(reason, hostname, detail)
        return None

    cdef object _rejected(self, str reason, object hostname, object detail):
        self.gossip._reject(reason, hostname, detail)
        return _REJECTED

    # -- the event's preparation (event_from_message, localize=False) -------

    def prepare(self, body):
        """Apply the Lamport clock rules to *body* and stamp it.

        Same contract as ``EventReceiver.event_from_message(body,
        localize=False)``: returns ``(type, body)``.  A clock that is not an
        int in range is not taken; the clock is forwarded as if the event had
        none.
        """
        if type(body) is not dict:  # stock takes any mapping; so do we
            body = dict(body)
        return body['type'], self.prepare_c(<dict>body)

    cdef dict prepare_c(self, dict body):
        clock = self._clock
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
        try:
            if self.slotted(message):
                info = _slot(message, _OFF_DELIVERY_INFO)
            else:
                info = message.delivery_info
            routing_key = (<dict>info)['routing_key'] if type(info) is dict else info['routing_key']
        except Exception:
            return self._reject('bad_message', None, 'no routing key')
        return self._handle(prepare, routing_key, message, None, None)

    def on_raw(self, routing_key, headers, body, content_type=JSON,
               content_encoding='utf-8', exchange='celeryev'):
        """One event read by a transport reader of ``gossip_fast.fastpath``:
        the same as :meth:`on_message` for the kombu message of these parts
        (which is built, and decoded by kombu, when we cannot decode it)."""
        if headers is None:
            headers = {}
        raw = self.raw_json(body, content_type, content_encoding, headers)
        if raw is None:
            return self.on_message(self.fast_prepare, Message(
                body=body, content_type=content_type,
                content_encoding=content_encoding, headers=headers,
                delivery_info={'exchange': exchange, 'routing_key': routing_key}))
        self.received += 1
        return self._handle(self.fast_prepare, routing_key, None, raw, headers)

    cdef object _handle(self, object prepare, object routing_key, object message,
                        object raw, object headers):
        gossip = self.gossip
        if type(routing_key) is not str:
            return self._reject('bad_message', None, routing_key)
        # For redis when `fanout_patterns=False` (celery#1882)
        if _is_task_key(<str>routing_key):
            self.skipped_tasks += 1
            return None
        handlers = self._event_handlers
        if type(handlers) is dict:
            handler = _handler_for(<dict>handlers, <str>routing_key)
        else:
            handler = handlers.get(routing_key)
        if handler is not None:
            payload = self.decode(message, raw)
            if payload is _REJECTED:
                return None
            if type(payload) is not dict:
                return self._reject('bad_body', None, type(payload).__name__)
            return gossip._call_event_handler(handler, payload)
        if (prepare is self.fast_prepare and self._state is not None
                and self._update_state is self.state_event):
            if message is not None:
                raw = self.message_raw(message)
                if raw is not None:  # read as message_raw read the rest
                    headers = (_slot(message, _OFF_HEADERS)
                               if type(message) is self._message_type
                               else message.headers)
            if raw is not None:
                try:
                    if self.fast_lane(raw, <dict>headers):
                        return None
                except Exception as exc:  # never raise out of the consumer
                    return self._reject('error', None, exc)
        found = self.decode(message, raw)
        if found is _REJECTED:
            return None
        if type(found) is not dict:
            return self._reject('bad_body', None, type(found).__name__)
        cdef dict body = <dict>found
        if message is not None:
            headers = message.headers
        header_host = (<dict>headers).get('hostname') if type(headers) is dict else None
        body_host = body.get('hostname')
        hostname = header_host or body_host
        if type(hostname) is not str or not hostname:
            return self._reject('bad_hostname', None, hostname)
        if header_host and body_host is not None and body_host != header_host:
            return self._reject('hostname_mismatch', header_host, body_host)
        if hostname == self._hostname:
            self.own += 1
            clock = self._clock
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
            update_state = self._update_state
            if update_state is self.state_event and self._state is not None:
                dropped = self._state.dropped
                self._state.apply(<dict>event)
                if self._state.dropped != dropped:
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


def scan_body(bytes body not None):
    """``(hostname, type, clock, timestamp, freq)`` if :func:`scan_standard`
    takes *body* as a standard event, else None (for tests)."""
    cdef Scan scan
    if not scan_standard(body, &scan):
        return None
    return (body[scan.host_start:scan.host_end].decode('ascii'),
            body[scan.type_start:scan.type_end].decode('ascii'),
            scan.clock, scan.timestamp, scan.freq)


include "_fastpath.pxi"
