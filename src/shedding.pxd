# Shedding a backlog (shedding.pyx).

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)
