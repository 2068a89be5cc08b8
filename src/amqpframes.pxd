# The AMQP 0-9-1 delivery splitter (amqpframes.pyx).

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.string cimport memcmp

@cython.final
cdef class DeliveryScanner:
    cdef readonly unsigned int channel_id
    cdef dict _keys          # the reader's: raw exchange + routing key -> (rk, exchange)
    cdef dict _props         # the reader's: raw properties -> (headers, type, encoding, decode)
    cdef object _decode_key  # the reader's, for a key not in _keys
    cdef object _props_of    # the reader's, for properties not in _props
    cdef bytes _last_raw     # the raw key seen last, and what it is
    cdef tuple _last_key

    cdef Py_ssize_t _delivery(self, const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                              list out) except -1
    cdef tuple _key(self, const unsigned char* p, Py_ssize_t n)
