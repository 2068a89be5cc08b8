# Comparisons and searches (compare.pyx).

from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_CheckExact, PyUnicode_GET_LENGTH, PyUnicode_READ_CHAR
from libc.string cimport memchr, memcmp

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


cdef enum:
    _FEW_HANDLERS = 4  # up to this many, _handler_for compares instead of hashing
