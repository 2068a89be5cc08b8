# Constants and module-level values (included by _core.pyx).
#
# The limits are gossip_fast/_common.py's, which both cores share: exported
# under the same names as the fallback exports them, and copied into C
# globals, which the hot path reads without a lookup.

from ._common import (CLOCK_CEILING, DEFAULT_FIELDS, DRIFT_MAX, EXPIRE_FACTOR,
                      MAX_FREQ, MAX_PEER_CLOCK, MAX_TIME, REJECTED, RESERVED_FIELDS,
                      SLOTS_PER_SECOND)

__all__ = _common.CORE_ALL

cdef long long _MAX_PEER_CLOCK = MAX_PEER_CLOCK
cdef long long _CLOCK_CEILING = CLOCK_CEILING
cdef double _MAX_FREQ = MAX_FREQ
cdef double _MAX_TIME = MAX_TIME
cdef double _EXPIRE_FACTOR = EXPIRE_FACTOR
cdef long long _DRIFT_MAX = DRIFT_MAX
cdef double _SLOTS_PER_SECOND = SLOTS_PER_SECOND
# _HB_MAX sizes a C array, so it is a constant of the C code (table.pxd)
if _HB_MAX != _common.HEARTBEAT_MAX:
    raise ImportError(f'gossip_fast._core was built for {_HB_MAX} heartbeats per worker, '
                      f'gossip_fast._common keeps {_common.HEARTBEAT_MAX}: rebuild it')

cdef str JSON = _common.JSON
cdef object _time = time.time
cdef object _heappush = heapq.heappush
cdef object _heappop = heapq.heappop

# The bytes a string of the subset both scanners read without decoding may
# hold (scanner.pyx: event bodies; pubsub.pyx: kombu's Redis envelopes):
# printable ASCII but '"' and '\\'.
cdef bint _PLAIN[256]
for _c in range(256):
    _PLAIN[_c] = 32 <= _c <= 126 and _c != 34 and _c != 92
