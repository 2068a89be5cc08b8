# The scanner of standard event bodies (scanner.pyx).

from libc.math cimport ldexp
from libc.string cimport memcmp, memcpy, memset
from cpython.object cimport PyObject

cdef extern from "Python.h":
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow) except? -1.0

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

# Fragment k is the layout's text before key k (see _FRAGMENT in scanner.pyx).
cdef enum:
    _F_OPEN = 13
    _F_NONE = -1


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
