# Hostname strs by their bytes (included by _core.pyx; declarations in
# hosts.pxd).


cdef inline size_t _fnv1a(const char* p, Py_ssize_t n) noexcept nogil:
    cdef unsigned long long h = 14695981039346656037ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <unsigned char>p[i]) * 1099511628211ULL
    # the low bits, which pick the slot, depend on the low bits only: mix
    # the high ones in
    return <size_t>(h ^ (h >> 32))


cdef class _HostIndex:
    """Hostname strs by their ASCII bytes, so that a scanned body finds the
    str its worker is filed under instead of creating, hashing and freeing
    one per message.

    Open addressing, at most _HOST_PROBES probes per name (so a flood of
    colliding names costs misses, not time) and at most half full: when an
    addition would make it fuller it starts over, empty, with at least
    twice as many slots as the table it serves has workers.  A str it
    returns has exactly the bytes asked for, so an entry left by a worker
    that is gone is still right.
    """

    def __dealloc__(self):
        self.reset(0)

    cdef str find(self, const char* name, Py_ssize_t n):
        cdef size_t i, probe
        cdef PyObject* entry
        if self.size == 0:
            return None
        i = _fnv1a(name, n)
        for probe in range(_HOST_PROBES):
            entry = self.slots[(i + probe) & (self.size - 1)]
            if entry == NULL:
                return None
            if (PyUnicode_GET_LENGTH(<object>entry) == n
                    and memcmp(PyUnicode_DATA(<object>entry), name, n) == 0):
                return <str>entry
        return None

    cdef int add(self, str hostname, Py_ssize_t served) except -1:
        """Index *hostname* (ignored unless compact ASCII); *served*: the
        size of the table of workers."""
        cdef size_t i, probe, size = _HOST_MIN_SIZE
        cdef PyObject** slot
        if not PyUnicode_IS_COMPACT_ASCII(hostname):
            return 0
        if (self.used + 1) * 2 > <Py_ssize_t>self.size:
            while size < <size_t>served * 2:
                size *= 2
            self.reset(size)
        i = _fnv1a(<const char*>PyUnicode_DATA(hostname), PyUnicode_GET_LENGTH(hostname))
        for probe in range(_HOST_PROBES):
            slot = &self.slots[(i + probe) & (self.size - 1)]
            if slot[0] == NULL:
                Py_INCREF(hostname)
                slot[0] = <PyObject*>hostname
                self.used += 1
                return 0
        return 0  # no free slot near: this name is not indexed

    cdef int reset(self, size_t size) except -1:
        """Drop every entry; then hold *size* (a power of two, or 0) slots."""
        cdef size_t i
        if self.slots != NULL:
            for i in range(self.size):
                if self.slots[i] != NULL:
                    Py_DECREF(<object>self.slots[i])
            PyMem_Free(self.slots)
            self.slots, self.size, self.used = NULL, 0, 0
        if size:
            self.slots = <PyObject**>PyMem_Calloc(size, sizeof(PyObject*))
            if self.slots == NULL:
                raise MemoryError()
            self.size = size
        return 0
