# The AMQP 0-9-1 delivery splitter (included by _core.pyx; declarations in
# amqpframes.pxd).

# The splitter (DeliveryScanner) is used by the RabbitMQ reader
# (gossip_fast/fastpath/amqp.py) in front of its Python splitter
# (AMQPReader._split).  A consumer of the gossip queue receives, per event,
# three frames on its channel:
#
#   1 <channel> <size> | 0x003C 0x003C consumer-tag delivery-tag redelivered
#                        exchange routing-key | 0xCE           basic.deliver
#   2 <channel> <size> | 0x003C 0x0000 <body size, 8 bytes> properties | 0xCE
#   3 <channel> <size> | body | 0xCE                           (one body frame)
#
# The scanner takes exactly those, and heartbeat frames, and nothing else:
# at anything it does not take (another frame, an incomplete or malformed
# delivery, a body of several frames, a body to decode with a content
# encoding other than UTF-8) it stops, and the reader's Python splitter
# handles that one frame or delivery (or finds it incomplete, or raises),
# so that what happens then is what always happened.  For what it takes it
# makes what the Python splitter makes: ``held((routing_key, headers, body,
# content_type, content_encoding, exchange))``, looking the raw exchange and
# routing key and the raw properties up in the reader's own caches, and
# calling the reader's ``_decode_key`` / ``_props_of`` for what is not
# there (the property templates stay in Python).
# tests/test_amqpframes.py holds the two splitters to the same results.

cdef enum:
    _METHOD = 1
    _HEADER = 2
    _BODY = 3
    _HEARTBEAT_FRAME = 8
    _FRAME_END = 0xCE
    _BASIC = 60
    _DELIVER = 60

cdef str _NO_BODY = ''   # what py-amqp's Message has for an empty body


cdef inline unsigned int _u16(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 8) | p[1]


cdef inline unsigned long long _u32(const unsigned char* p) noexcept nogil:
    return ((<unsigned long long>p[0] << 24) | (<unsigned long long>p[1] << 16)
            | (<unsigned long long>p[2] << 8) | p[3])


cdef inline unsigned long long _u64(const unsigned char* p) noexcept nogil:
    return (_u32(p) << 32) | _u32(p + 4)


cdef class DeliveryScanner:
    """Splits the byte stream of an AMQP consumer's connection into held
    deliveries: ``scan(buf, pos, out)`` appends to *out* the ``on_raw``
    arguments of every plain delivery on ``channel_id`` from *pos* on (as
    ``held()`` tuples, as the reader's Python splitter makes them) and skips
    heartbeat frames; it returns the position of the first byte it did not
    take: the end of what it took, an incomplete tail, or something the
    reader's Python splitter must see to (fewer than 11 bytes left, or any
    other frame or delivery).

    *keys* and *props* are the reader's caches (raw exchange and routing key
    -> ``(routing_key, exchange)``; raw content properties -> ``(headers,
    content_type, content_encoding, decode)``), *decode_key* and *props_of*
    what the reader calls for bytes not in them.
    """

    def __init__(self, unsigned int channel_id, dict keys, dict props, decode_key, props_of):
        if channel_id > 0xFFFF:
            raise ValueError(f'channel {channel_id} out of range')
        self.channel_id = channel_id
        self._keys = keys
        self._props = props
        self._decode_key = decode_key
        self._props_of = props_of
        self._last_raw = None
        self._last_key = None

    def scan(self, bytes buf not None, Py_ssize_t pos, list out not None):
        cdef Py_ssize_t end = PyBytes_GET_SIZE(buf), taken
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        if pos < 0 or pos > end:
            raise ValueError(f'position {pos} outside a buffer of {end} bytes')
        while end - pos >= 11:
            taken = self._delivery(p, pos, end, out)
            if taken == pos:
                break
            pos = taken
        return pos

    cdef Py_ssize_t _delivery(self, const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                              list out) except -1:
        """One delivery (or heartbeat frame) at p[pos], at least 11 bytes
        before *end*: the position after it, or *pos* if it is not for us.
        The checks are the Python splitter's, in its order."""
        cdef unsigned int chan = self.channel_id
        cdef unsigned long long size, body_size
        cdef Py_ssize_t mend, k, h, hend, b, bend
        cdef PyObject* found
        cdef tuple key, props
        # the method frame (its size read as unsigned: no overflow)
        size = _u32(p + pos + 3)
        if size + 7 >= <unsigned long long>(end - pos):
            return pos                          # incomplete, or too big
        mend = pos + 7 + <Py_ssize_t>size
        if p[mend] != _FRAME_END:
            return pos
        if p[pos] != _METHOD or _u16(p + pos + 1) != chan or _u16(p + pos + 7) != _BASIC \
                or _u16(p + pos + 9) != _DELIVER:
            if p[pos] == _HEARTBEAT_FRAME and _u16(p + pos + 1) == 0:
                return mend + 1                 # a heartbeat: skipped
            return pos
        # basic.deliver: consumer tag, delivery tag (8), redelivered (1),
        # then the exchange and routing key, looked up raw
        if size < 5:
            return pos
        k = pos + 12 + p[pos + 11] + 9
        if k >= mend:
            return pos
        key = self._key(p + k, mend - k)
        if key is None:
            return pos
        # the content header frame
        h = mend + 1
        if end - h < 21:
            return pos
        size = _u32(p + h + 3)
        if size + 7 >= <unsigned long long>(end - h):
            return pos
        hend = h + 7 + <Py_ssize_t>size
        if (p[h] != _HEADER or _u16(p + h + 1) != chan or _u16(p + h + 7) != _BASIC
                or p[hend] != _FRAME_END or h + 19 >= hend):
            return pos
        body_size = _u64(p + h + 11)
        raw = PyBytes_FromStringAndSize(<const char*>p + h + 19, hend - h - 19)
        found = PyDict_GetItem(self._props, raw)
        if found is NULL:
            value = self._props_of(raw)
        else:
            value = <object>found
        if type(value) is not tuple or len(<tuple>value) != 4:
            return pos
        props = <tuple>value
        # the body frame
        b = hend + 1
        if body_size == 0:
            body = _NO_BODY
        else:
            if end - b < 7:
                return pos
            size = _u32(p + b + 3)
            if size + 7 >= <unsigned long long>(end - b):
                return pos
            bend = b + 7 + <Py_ssize_t>size
            if p[b] != _BODY or _u16(p + b + 1) != chan or p[bend] != _FRAME_END:
                return pos
            if size != body_size:               # several body frames
                return pos
            if props[3]:                        # to decode, as py-amqp would
                return pos
            body = PyBytes_FromStringAndSize(<const char*>p + b + 7, <Py_ssize_t>size)
            b = bend + 1
        out.append(held((key[0], props[0], body, props[1], props[2], key[1])))
        return b

    cdef tuple _key(self, const unsigned char* p, Py_ssize_t n):
        """``(routing_key, exchange)`` of the raw pair at p (nearly always
        the one before: compared first), or None if the reader's decode
        gave something else."""
        cdef bytes last = self._last_raw
        cdef PyObject* found
        if (last is not None and PyBytes_GET_SIZE(last) == n
                and memcmp(PyBytes_AS_STRING(last), p, n) == 0):
            return self._last_key
        raw = PyBytes_FromStringAndSize(<const char*>p, n)
        found = PyDict_GetItem(self._keys, raw)
        if found is NULL:
            value = self._decode_key(raw)
        else:
            value = <object>found
        if type(value) is not tuple or len(<tuple>value) != 2:
            return None
        self._last_raw = raw
        self._last_key = <tuple>value
        return self._last_key
