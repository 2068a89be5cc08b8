# The Redis pub/sub splitter (included by _core.pyx; declarations in
# pubsub.pxd).

# The splitter (PubSubScanner) is used by the Redis reader
# (gossip_fast/fastpath/redis.py) instead of hiredis + msgspec.
# A Redis pub/sub connection (RESP2) carries one reply per event:
#
#   *4\r\n$8\r\npmessage\r\n$<n>\r\n<pattern>\r\n$<n>\r\n<channel>\r\n$<n>\r\n<data>\r\n
#
# and <data> is kombu's JSON envelope of the event, which kombu's Redis
# channel always writes the same way (json.dumps of the same dict):
#
#   {"body": "<base64>", "content-encoding": "<s>", "content-type": "<s>",
#    "headers": {"hostname": "<s>"}, "properties": {"delivery_mode": <int>,
#    "delivery_info": {"exchange": "<s>", "routing_key": "<s>"},
#    "priority": <int>, "body_encoding": "base64", "delivery_tag": "<s>"}}
#
# For such an envelope (strings of printable ASCII without quote or
# backslash, base64 in its canonical form) the scanner makes the
# ``Receiver.on_raw`` arguments itself, in one pass over the bytes: no
# hiredis reply list, no envelope object, the routing key, exchange and
# content strings and each sender's headers dict made once and shared.
# Every other pmessage goes to the reader's ``fallback(data)`` (msgspec,
# then kombu), every other reply is returned as hiredis would return it.
# tests/test_pubsub.py holds the two ways to the same results.

try:
    from hiredis import ProtocolError as _ProtocolError, ReplyError as _ReplyError
except ImportError:  # pragma: no cover - the reader needs hiredis anyway
    class _ProtocolError(Exception):
        pass

    class _ReplyError(Exception):
        pass

cdef bytes _PMESSAGE = b"*4\r\n$8\r\npmessage\r\n"
cdef Py_ssize_t _PMESSAGE_SIZE = len(_PMESSAGE)
cdef const char* _E0 = b'{"body": "'
cdef const char* _E1 = b'", "content-encoding": "'
cdef const char* _E2 = b'", "content-type": "'
cdef const char* _E3 = b'", "headers": {"hostname": "'
cdef const char* _E4 = b'"}, "properties": {"delivery_mode": '
cdef const char* _E5 = b', "delivery_info": {"exchange": "'
cdef const char* _E6 = b'", "routing_key": "'
cdef const char* _E7 = b'"}, "priority": '
cdef const char* _E8 = b', "body_encoding": "base64", "delivery_tag": "'
cdef const char* _E9 = b'"}}'
cdef Py_ssize_t _E0_SIZE = strlen(_E0)
cdef Py_ssize_t _E1_SIZE = strlen(_E1)
cdef Py_ssize_t _E2_SIZE = strlen(_E2)
cdef Py_ssize_t _E3_SIZE = strlen(_E3)
cdef Py_ssize_t _E4_SIZE = strlen(_E4)
cdef Py_ssize_t _E5_SIZE = strlen(_E5)
cdef Py_ssize_t _E6_SIZE = strlen(_E6)
cdef Py_ssize_t _E7_SIZE = strlen(_E7)
cdef Py_ssize_t _E8_SIZE = strlen(_E8)
cdef Py_ssize_t _E9_SIZE = strlen(_E9)

# base64 alphabet -> 6-bit value, 64 for '=', 255 for anything else
cdef unsigned char _B64[256]
for _i in range(256):
    _B64[_i] = 255
for _i, _c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"):
    _B64[ord(_c)] = _i
_B64[61] = 64  # '='

# the same, shifted into place for each of the four characters of a
# quantum; any other byte sets bit 24, so one test rejects a quantum
cdef unsigned int _B64_0[256]
cdef unsigned int _B64_1[256]
cdef unsigned int _B64_2[256]
cdef unsigned int _B64_3[256]
for _i in range(256):
    if _B64[_i] < 64:
        _B64_0[_i], _B64_1[_i], _B64_2[_i], _B64_3[_i] = (
            _B64[_i] << 18, _B64[_i] << 12, _B64[_i] << 6, _B64[_i])
    else:
        _B64_0[_i] = _B64_1[_i] = _B64_2[_i] = _B64_3[_i] = 1 << 24


cdef inline Py_ssize_t _literal(const char* p, Py_ssize_t i, Py_ssize_t n,
                                const char* text, Py_ssize_t size) noexcept nogil:
    """The index after *text* (*size* bytes) if p[i:] starts with it, else -1."""
    if i + size > n or memcmp(p + i, text, size) != 0:
        return -1
    return i + size


cdef inline Py_ssize_t _plain(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The index of the quote ending a string of printable ASCII without
    backslash that starts at p[i], else -1."""
    while i < n and _PLAIN[<unsigned char>p[i]]:
        i += 1
    if i < n and p[i] == 34:  # '"'
        return i
    return -1


cdef inline Py_ssize_t _digits(const char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The index after a short run of ASCII digits at p[i] (a JSON int), else -1."""
    cdef Py_ssize_t start = i
    while i < n and 48 <= p[i] <= 57:
        i += 1
    if i == start or i - start > 18 or (p[start] == 48 and i - start > 1):
        return -1
    return i


cdef object _b64decode(const char* p, Py_ssize_t n):
    """The bytes of canonical base64 (padded, no whitespace, zero pad
    bits), or None for anything else (the fallback then decides)."""
    cdef Py_ssize_t pad = 0, size, i, o = 0
    cdef unsigned int a, b, c, d, quantum
    cdef const unsigned char* q = <const unsigned char*>p
    cdef unsigned char* out
    if n == 0 or n % 4:
        return None
    if p[n - 1] == 61:
        pad = 2 if p[n - 2] == 61 else 1
    size = n // 4 * 3 - pad
    result = PyBytes_FromStringAndSize(NULL, size)
    out = <unsigned char*>PyBytes_AS_STRING(result)
    for i in range(0, n - 4, 4):
        quantum = _B64_0[q[i]] | _B64_1[q[i + 1]] | _B64_2[q[i + 2]] | _B64_3[q[i + 3]]
        if quantum >> 24:
            return None
        out[o] = <unsigned char>(quantum >> 16)
        out[o + 1] = <unsigned char>(quantum >> 8)
        out[o + 2] = <unsigned char>quantum
        o += 3
    a = _B64[<unsigned char>p[n - 4]]
    b = _B64[<unsigned char>p[n - 3]]
    c = _B64[<unsigned char>p[n - 2]]
    d = _B64[<unsigned char>p[n - 1]]
    if a > 63 or b > 63:
        return None
    if pad == 0:
        if c > 63 or d > 63:
            return None
        out[o] = <unsigned char>((a << 2) | (b >> 4))
        out[o + 1] = <unsigned char>(((b & 15) << 4) | (c >> 2))
        out[o + 2] = <unsigned char>(((c & 3) << 6) | d)
    elif pad == 1:
        if c > 63 or c & 3:
            return None
        out[o] = <unsigned char>((a << 2) | (b >> 4))
        out[o + 1] = <unsigned char>(((b & 15) << 4) | (c >> 2))
    else:
        if b & 15:
            return None
        out[o] = <unsigned char>((a << 2) | (b >> 4))
    return result


cdef class PubSubScanner:
    """Splits the RESP2 byte stream of a Redis pub/sub connection.

    ``feed(data, offset, length)`` appends bytes read from the socket; ``scan(out)``
    takes every complete reply: a pmessage with a standard kombu envelope
    becomes ``(routing_key, headers, body, content_type, content_encoding,
    exchange)`` (``Receiver.on_raw``'s arguments) appended to *out*; any
    other pmessage's data goes to ``fallback(data)`` and what that returns
    is appended unless None; other replies are returned in a list, as
    hiredis returns them (bytes, int, None, a list of those, a
    ``hiredis.ReplyError``).  Nested arrays (which a RESP2 pub/sub
    connection never carries) raise ``hiredis.ProtocolError``.  With
    ``dedup`` set (Sentinel's fanout compatibility) every pmessage goes to
    the fallback, which de-duplicates by delivery tag.
    """

    def __cinit__(self):
        self._buf = NULL
        self._start = self._end = self._size = 0

    def __init__(self, fallback):
        self.fallback = fallback
        self.dedup = False
        self._strings = {}
        self._recent = [[b'', ''] for _ in range(4)]
        self._headers = {}
        self.cache_size = 16384

    def __dealloc__(self):
        free(self._buf)

    def feed(self, data, Py_ssize_t offset=0, Py_ssize_t length=-1):
        """Append *length* bytes of *data* from *offset* (as hiredis's)."""
        cdef const unsigned char[:] view = data
        cdef Py_ssize_t n = view.shape[0] - offset if length < 0 else length
        cdef char* grown
        if offset < 0 or n < 0 or offset + n > view.shape[0]:
            raise ValueError('offset and length exceed the data')
        if n == 0:
            return
        if self._start and self._start == self._end:
            self._start = self._end = 0
        if self._end + n > self._size:
            if self._start:  # move what is left to the front first
                memcpy(self._buf, self._buf + self._start, self._end - self._start)
                self._end -= self._start
                self._start = 0
            if self._end + n > self._size:
                grown = <char*>realloc(self._buf, max(self._end + n, 2 * self._size, 65536))
                if grown == NULL:
                    raise MemoryError()
                self._buf = grown
                self._size = max(self._end + n, 2 * self._size, 65536)
        memcpy(self._buf + self._end, &view[offset], n)
        self._end += n

    @property
    def buffered(self):
        """Bytes fed but not yet taken by scan()."""
        return self._end - self._start

    def scan(self, list out):
        cdef const char* p = self._buf
        cdef Py_ssize_t i = self._start, n = self._end, end
        others = None
        while i < n:
            end = self._pmessage(p, i, n, out)
            if end == 0:  # not a pmessage: a generic reply
                end = self._reply(p, i, n)
                if end < 0:
                    break
                reply = self._last
                if (type(reply) is list and len(<list>reply) == 4
                        and (<list>reply)[0] == b'pmessage'):
                    item = self.fallback((<list>reply)[3])
                    if item is not None:
                        out.append(item)
                else:
                    if others is None:
                        others = []
                    others.append(reply)
            elif end < 0:  # incomplete
                break
            i = self._start = end  # taken, even if a later fallback raises
        if i == n:
            self._start = self._end = 0
        return others if others is not None else []

    cdef Py_ssize_t _bulk(self, const char* p, Py_ssize_t i, Py_ssize_t n,
                          Py_ssize_t* start) except -2:
        """A bulk string at p[i] ('$'): the index after it (its data from
        start[0]), -1 if incomplete, or raises on bad framing."""
        cdef Py_ssize_t length = 0, j = i + 1
        if j >= n:
            return -1
        if p[j] == 45:  # '$-1': null
            j += 1
            while j < n and p[j] != 13:
                j += 1
            if j + 1 >= n:
                return -1
            start[0] = -1
            return j + 2
        while j < n and 48 <= p[j] <= 57:
            length = length * 10 + (p[j] - 48)
            if length > 536870912:  # Redis's own limit (proto-max-bulk-len)
                raise _ProtocolError('bulk string too long')
            j += 1
        if j + 1 >= n:
            return -1
        if p[j] != 13 or p[j + 1] != 10 or j == i + 1:
            raise _ProtocolError(f'bad bulk length at byte {j}')
        j += 2
        if j + length + 2 > n:
            return -1
        if p[j + length] != 13 or p[j + length + 1] != 10:
            raise _ProtocolError('bulk string not terminated')
        start[0] = j
        return j + length + 2

    cdef Py_ssize_t _pmessage(self, const char* p, Py_ssize_t i, Py_ssize_t n,
                              list out) except -2:
        """A pmessage at p[i]: taken (the index after it), incomplete (-1),
        or not one with three bulk strings after its name (0)."""
        cdef Py_ssize_t j, data, end, unused
        cdef int k
        if n - i < _PMESSAGE_SIZE or memcmp(p + i, <const char*>_PMESSAGE, _PMESSAGE_SIZE) != 0:
            if n - i < _PMESSAGE_SIZE and memcmp(p + i, <const char*>_PMESSAGE, n - i) == 0:
                return -1  # maybe one, not all here yet
            return 0
        j = i + _PMESSAGE_SIZE
        for k in range(2):  # the pattern and the channel
            if j >= n:
                return -1
            if p[j] != 36:
                return 0
            j = self._bulk(p, j, n, &unused)
            if j < 0:
                return -1
            if unused < 0:
                return 0
        if j >= n:
            return -1
        if p[j] != 36:
            return 0
        end = self._bulk(p, j, n, &data)
        if end < 0:
            return -1
        if data < 0:
            return 0
        item = None if self.dedup else self._envelope(p + data, end - 2 - data)
        if item is None:
            item = self.fallback(PyBytes_FromStringAndSize(p + data, end - 2 - data))
        if item is not None:
            out.append(item)
        return end

    cdef object _envelope(self, const char* p, Py_ssize_t n):
        """on_raw's arguments for a standard envelope, else None."""
        cdef Py_ssize_t i, b0, b1, s0, s1, t0, t1, h0, h1, x0, x1, r0, r1
        cdef const char* found
        i = _literal(p, 0, n, _E0, _E0_SIZE)
        if i < 0:
            return None
        b0 = i
        # the base64 decoder checks every character of the body
        found = <const char*>memchr(p + i, 34, n - i)
        if found == NULL:
            return None
        b1 = found - p
        i = _literal(p, b1, n, _E1, _E1_SIZE)
        if i < 0:
            return None
        s0 = i
        s1 = _plain(p, i, n)
        if s1 < 0:
            return None
        i = _literal(p, s1, n, _E2, _E2_SIZE)
        if i < 0:
            return None
        t0 = i
        t1 = _plain(p, i, n)
        if t1 < 0:
            return None
        i = _literal(p, t1, n, _E3, _E3_SIZE)
        if i < 0:
            return None
        h0 = i
        h1 = _plain(p, i, n)
        if h1 < 0:
            return None
        i = _literal(p, h1, n, _E4, _E4_SIZE)
        if i < 0:
            return None
        i = _digits(p, i, n)
        if i < 0:
            return None
        i = _literal(p, i, n, _E5, _E5_SIZE)
        if i < 0:
            return None
        x0 = i
        x1 = _plain(p, i, n)
        if x1 < 0:
            return None
        i = _literal(p, x1, n, _E6, _E6_SIZE)
        if i < 0:
            return None
        r0 = i
        r1 = _plain(p, i, n)
        if r1 < 0:
            return None
        i = _literal(p, r1, n, _E7, _E7_SIZE)
        if i < 0:
            return None
        i = _digits(p, i, n)
        if i < 0:
            return None
        i = _literal(p, i, n, _E8, _E8_SIZE)
        if i < 0:
            return None
        i = _plain(p, i, n)  # the delivery tag
        if i < 0:
            return None
        i = _literal(p, i, n, _E9, _E9_SIZE)
        if i != n:
            return None
        body = _b64decode(p + b0, b1 - b0)
        if body is None:
            return None
        return held((self._field(0, p + r0, r1 - r0), self._headers_of(p + h0, h1 - h0), body,
                     self._field(1, p + t0, t1 - t0), self._field(2, p + s0, s1 - s0),
                     self._field(3, p + x0, x1 - x0)))

    cdef inline object _field(self, int field, const char* p, Py_ssize_t n):
        """The str of envelope string *field* (routing key, content type,
        encoding, exchange): nearly always the one before, so that is
        compared first (no bytes object, no hash, no lookup)."""
        cdef list recent = <list>self._recent[field]
        cdef bytes raw = <bytes>recent[0]
        if PyBytes_GET_SIZE(raw) == n and memcmp(PyBytes_AS_STRING(raw), p, n) == 0:
            return recent[1]
        found = self._string(p, n)
        recent[0] = PyBytes_FromStringAndSize(p, n)
        recent[1] = found
        return found

    cdef object _string(self, const char* p, Py_ssize_t n):
        raw = PyBytes_FromStringAndSize(p, n)
        found = self._strings.get(raw)
        if found is None:
            if len(self._strings) >= self.cache_size:
                self._strings.clear()
            found = self._strings[raw] = PyUnicode_DecodeASCII(p, n, NULL)
        return found

    cdef object _headers_of(self, const char* p, Py_ssize_t n):
        raw = PyBytes_FromStringAndSize(p, n)
        found = self._headers.get(raw)
        if found is None:
            if len(self._headers) >= self.cache_size:
                self._headers.clear()
            found = self._headers[raw] = {'hostname': PyUnicode_DecodeASCII(p, n, NULL)}
        return found

    cdef Py_ssize_t _line(self, const char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
        """The index of the '\\r' of the '\\r\\n' ending the line at p[i], or -1."""
        while i + 1 < n:
            if p[i] == 13 and p[i + 1] == 10:
                return i
            i += 1
        return -1

    cdef Py_ssize_t _scalar(self, const char* p, Py_ssize_t i, Py_ssize_t n) except -2:
        """One non-array reply at p[i] into self._last: the index after it, or -1."""
        cdef Py_ssize_t eol, start
        cdef char kind = p[i]
        if kind == 36:  # '$'
            eol = self._bulk(p, i, n, &start)
            if eol < 0:
                return -1
            self._last = None if start < 0 else PyBytes_FromStringAndSize(p + start, eol - 2 - start)
            return eol
        eol = self._line(p, i + 1, n)
        if eol < 0:
            return -1
        text = PyBytes_FromStringAndSize(p + i + 1, eol - i - 1)
        if kind == 43:    # '+': a status
            self._last = text
        elif kind == 45:  # '-': an error
            self._last = _ReplyError(text.decode('utf-8', 'replace'))
        elif kind == 58:  # ':': an integer
            try:
                self._last = int(text)
            except ValueError:
                raise _ProtocolError(f'bad integer reply {text!r}') from None
        else:
            raise _ProtocolError(f'unexpected reply type {bytes([kind])!r}')
        return eol + 2

    cdef Py_ssize_t _reply(self, const char* p, Py_ssize_t i, Py_ssize_t n) except -2:
        """One reply (a scalar or a flat array, or a RESP3 push, which the
        reader never asks for) at p[i] into self._last."""
        cdef Py_ssize_t eol, count, k, j
        if p[i] != 42 and p[i] != 62:  # not '*' or '>'
            return self._scalar(p, i, n)
        eol = self._line(p, i + 1, n)
        if eol < 0:
            return -1
        try:
            count = int(PyBytes_FromStringAndSize(p + i + 1, eol - i - 1))
        except ValueError:
            raise _ProtocolError('bad array length') from None
        j = eol + 2
        if count < 0:
            self._last = None
            return j
        items = []
        for k in range(count):
            if j >= n:
                return -1
            if p[j] == 42 or p[j] == 62:
                raise _ProtocolError('nested array on a pub/sub connection')
            j = self._scalar(p, j, n)
            if j < 0:
                return -1
            items.append(self._last)
        self._last = items
        return j
