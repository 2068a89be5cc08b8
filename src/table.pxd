# The worker table (table.pyx): State, its entries (Worker) and the slots
# of its deadline wheel (_Bucket).

cdef extern from "Python.h":
    # the instance dict of an extension object (created on first use)
    object PyObject_GenericGetDict(object obj, void* context)
    int PyObject_GenericSetAttr(object obj, object name, object value) except -1

cdef enum:
    _HB_MAX = 4  # heartbeats kept per worker (stock's heartbeat_max)

cdef class _Bucket


@cython.final
cdef class Worker:
    cdef dict __dict__
    cdef object __weakref__
    cdef double _hb[_HB_MAX]  # receive times of the last heartbeats, ascending
    cdef int _n               # how many of _hb are set
    cdef double _freq
    cdef double _expires
    cdef long long _slot
    cdef bint _drift_warned
    cdef object _hostname
    cdef _Bucket _bucket  # the wheel slot it sits in, or None
    cdef Worker _next, _prev  # its neighbours there
    cdef dict _fields  # the same dict object as __dict__
    # The last standard event and its receive time: its raw JSON bytes
    # (decoded into an _Event on first use) or an _Event.  While set, its
    # fields are served by __getattr__ and are absent from __dict__.
    cdef object _event
    cdef double _received

    cdef void set_event(self, object event, double received) except *
    cdef object decoded_event(self)
    cpdef materialize(self)
    cdef inline void add_heartbeat(self, double received)


@cython.final
cdef class _Bucket:
    cdef Worker head, tail
    cdef Py_ssize_t count

    cdef inline void append(self, Worker worker) noexcept
    cdef inline void remove(self, Worker worker) noexcept
    cdef list members(self)


@cython.final
cdef class State:
    cdef public dict workers
    cdef public object on_node_join, on_node_leave, on_reject, on_drift
    cdef public Py_ssize_t event_count, dropped, joins, leaves, losses
    cdef dict _wheel          # slot -> _Bucket
    cdef list _slots          # heap of the slots in _wheel
    cdef long long _last_slot
    cdef _Bucket _last_bucket  # _wheel[_last_slot], or None
    # what apply() found, for event()
    cdef bint _created
    cdef str _subject

    cdef object _reject(self, str reason, object hostname, object detail)
    cdef Worker apply(self, dict event)
    cdef bint take(self, dict event) except -1
    cdef void apply_event(self, object event, str hostname, bint online,
                          double timestamp, double freq, double received) except *
    cdef inline Worker _entry(self, object hostname)
    cdef inline void _joined(self, Worker worker) except *
    cdef Worker _offline(self, object hostname, dict event)
    cdef inline void _heartbeat(self, Worker worker, double timestamp,
                                double received) except *
    cdef inline void _schedule(self, Worker worker) except *
    cdef inline void _unschedule(self, Worker worker) except *
