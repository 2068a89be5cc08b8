# Constants and module-level values (included by _core.pyx).

__all__ = ('Clock', 'Worker', 'State', 'Receiver', 'MAX_PEER_CLOCK', 'REJECTED',
           'RESERVED_FIELDS', 'SLOTS_PER_SECOND', 'MAX_FREQ')

cdef long long _MAX_PEER_CLOCK = 2 ** 62
cdef long long _CLOCK_CEILING = 2 ** 63 - 1
cdef double _MAX_FREQ = 86400.0
cdef double _MAX_TIME = 1e12
cdef double _EXPIRE_FACTOR = 2.0
cdef long long _DRIFT_MAX = 16
cdef double _SLOTS_PER_SECOND = 16.0

MAX_PEER_CLOCK = _MAX_PEER_CLOCK
CLOCK_CEILING = _CLOCK_CEILING
MAX_FREQ = _MAX_FREQ
MAX_TIME = _MAX_TIME
EXPIRE_FACTOR = _EXPIRE_FACTOR
DRIFT_MAX = _DRIFT_MAX
SLOTS_PER_SECOND = 16
RESERVED_FIELDS = frozenset((
    'heartbeats', 'event', 'alive', 'heartbeat_expires', 'id',
    'status_string', 'update', 'heartbeat_max', 'expire_window',
    '_hb', '_freq', '_expires', '_slot', '_drift_warned',
))
cdef tuple _RESERVED = tuple(RESERVED_FIELDS)
DEFAULT_FIELDS = (
    ('pid', None), ('freq', 60), ('clock', 0), ('active', None),
    ('processed', None), ('loadavg', None), ('sw_ident', None),
    ('sw_ver', None), ('sw_sys', None),
)

cdef str JSON = 'application/json'
#: What ``Receiver.decode`` returns for a message it rejected (a JSON
#: ``null`` body decodes to None, which is bad input of another kind).
REJECTED = object()
cdef object _REJECTED = REJECTED
cdef object _time = time.time
cdef object _heappush = heapq.heappush
cdef object _heappop = heapq.heappop
