# Hostname strs by their bytes (hosts.pyx).

from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_GET_LENGTH
from libc.string cimport memcmp

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)

cdef enum:
    _HOST_PROBES = 16       # slots a _HostIndex looks at for one name
    _HOST_MIN_SIZE = 64


@cython.final
cdef class _HostIndex:
    cdef PyObject** slots  # strong references to exact, compact ASCII strs, or NULL
    cdef size_t size
    cdef Py_ssize_t used

    cdef str find(self, const char* name, Py_ssize_t n)
    cdef int add(self, str hostname, Py_ssize_t served) except -1
    cdef int reset(self, size_t size) except -1
