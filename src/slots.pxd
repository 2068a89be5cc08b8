# Reading fields at fixed offsets: what slots.pyx needs of CPython's
# structures.

from cpython.object cimport PyObject

cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    ctypedef struct PyTypeObject

cdef extern from *:
    """
    /* Attribute lookup of *type*'s instances is object's own (no
       __getattribute__ or __getattr__ of a Python class). */
    static int gf_generic_getattr(PyObject* type) {
        return ((PyTypeObject*)type)->tp_getattro == PyObject_GenericGetAttr;
    }
    """
    bint gf_generic_getattr(object type)
