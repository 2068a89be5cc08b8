# The Lamport clock (included by _core.pyx; declarations in clock.pxd).


cdef class Clock:
    """Lamport clock with the API of :class:`kombu.clocks.LamportClock`.

    Only integers in ``[0, 2**62]`` are taken from peers; anything else
    forwards the clock and is counted in :attr:`rejected`.  The value is a
    C int64 that stays in ``[0, 2**63)``.  ``adjust`` and ``forward`` run
    without releasing the GIL, so they are atomic; ``mutex`` exists for API
    compatibility.
    """

    def __init__(self, initial_value=0, Lock=threading.Lock):
        self.mutex = Lock()
        self.value = initial_value  # (rejected, a C field, starts at 0)

    value = _common.clock_value  # checks, then sets _value

    cdef inline long long adjust_c(self, long long other):
        cdef long long value = self._value
        if other > value:
            value = other
        if value < _CLOCK_CEILING:
            value += 1
        self._value = value
        return value

    cdef inline long long forward_c(self):
        if self._value < _CLOCK_CEILING:
            self._value += 1
        return self._value

    def adjust(self, other):
        if not valid_peer_clock_c(other):
            self.rejected += 1
            return self.forward_c()
        return self.adjust_c(other)

    def forward(self):
        return self.forward_c()

    sort_heap = _common.sort_heap

    def __str__(self):
        return str(self._value)

    def __repr__(self):
        return f'<{type(self).__name__}: {self._value}>'


cdef inline bint valid_peer_clock_c(object value):
    """_common.valid_peer_clock, without a call."""
    return type(value) is int and 0 <= value <= _MAX_PEER_CLOCK


def valid_peer_clock(value):
    """Return True if *value* may be adjusted to (an int in range)."""
    return valid_peer_clock_c(value)
