# The Redis pub/sub splitter (pubsub.pyx).

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp, memcpy, strlen

@cython.final
cdef class PubSubScanner:
    cdef char* _buf
    cdef Py_ssize_t _start, _end, _size
    cdef public object fallback
    cdef public bint dedup
    cdef dict _strings   # raw bytes -> str, for the few distinct strings
    cdef list _recent    # per envelope string field: [raw bytes, str] seen last
    cdef dict _headers   # raw hostname -> its shared headers dict
    cdef object _last    # the reply _reply() / _scalar() parsed last
    #: Entries of each cache at most (cleared when full).
    cdef public Py_ssize_t cache_size

    cdef Py_ssize_t _bulk(self, const char* p, Py_ssize_t i, Py_ssize_t n,
                          Py_ssize_t* start) except -2
    cdef Py_ssize_t _pmessage(self, const char* p, Py_ssize_t i, Py_ssize_t n,
                              list out) except -2
    cdef object _envelope(self, const char* p, Py_ssize_t n)
    cdef inline object _field(self, int field, const char* p, Py_ssize_t n)
    cdef object _string(self, const char* p, Py_ssize_t n)
    cdef object _headers_of(self, const char* p, Py_ssize_t n)
    cdef Py_ssize_t _line(self, const char* p, Py_ssize_t i, Py_ssize_t n) noexcept
    cdef Py_ssize_t _scalar(self, const char* p, Py_ssize_t i, Py_ssize_t n) except -2
    cdef Py_ssize_t _reply(self, const char* p, Py_ssize_t i, Py_ssize_t n) except -2
