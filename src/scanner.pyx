# The scanner of standard event bodies (included by _core.pyx; declarations
# in scanner.pxd).
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

cdef const char* _KEY_NAMES[13]
_KEY_NAMES[:] = [b"hostname", b"type", b"clock", b"timestamp", b"freq",
                 b"utcoffset", b"pid", b"active", b"processed", b"loadavg",
                 b"sw_ident", b"sw_ver", b"sw_sys"]

# Byte classes: JSON whitespace, digits (and _PLAIN, in constants.pyx).
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


def scan_body(bytes body not None):
    """``(hostname, type, clock, timestamp, freq)`` if :func:`scan_standard`
    takes *body* as a standard event, else None (for tests)."""
    cdef Scan scan
    if not scan_standard(body, &scan):
        return None
    return (body[scan.host_start:scan.host_end].decode('ascii'),
            body[scan.type_start:scan.type_end].decode('ascii'),
            scan.clock, scan.timestamp, scan.freq)
