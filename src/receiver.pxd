# The receiver (receiver.pyx).

from libc.string cimport memcmp

cdef extern from "Python.h":
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)


@cython.final
cdef class Receiver:
    cdef public object gossip
    cdef public object state
    cdef public object clock
    cdef object _accept
    cdef bint _json_accepted
    cdef public object state_event
    cdef public object fast_prepare
    cdef public Py_ssize_t received, applied, own, skipped_tasks, decode_fallbacks
    cdef State _state  # state, if it is our State (else None)
    cdef object _message_type  # the last kombu Message class read by slots
    cdef _HostIndex _hosts
    # The bootstep's swappable attributes, cached; Gossip.__setattr__ calls
    # refresh() whenever one of them is set, so a swap takes effect at once.
    cdef object _hostname, _clock, _update_state, _event_handlers

    cdef object raw_json(self, object body, object content_type,
                         object content_encoding, object headers)
    cdef inline bint slotted(self, object message) except -1
    cpdef object _message_raw(self, object message)
    cdef object body_of(self, object message, object raw)
    cdef bint fast_lane(self, object raw, dict headers) except -1
    cdef bint scanned_lane(self, bytes raw, const char* p, Scan* scan,
                           dict headers) except -1
    cdef object _reject(self, str reason, object hostname, object detail)
    cdef dict prepare_c(self, dict body)
    cdef object _on_raw(self, object routing_key, object headers, object body,
                        object content_type, object content_encoding, object exchange)
    cdef object _handle(self, object prepare, object routing_key, object message,
                        object raw, object headers)
