# The Lamport clock (clock.pyx).

@cython.final
cdef class Clock:
    cdef public long long _value  # public for the shared `value` property
    cdef public object mutex
    cdef public Py_ssize_t rejected

    # adjust() and forward() for callers that hold a C int64: no boxing
    cdef inline long long adjust_c(self, long long other)
    cdef inline long long forward_c(self)
