"""Type stubs for ``gossip_fast._core``, the compiled hot path, and its
pure-Python twin ``gossip_fast._core_py``.

The extension module is built by Cython from ``src/_core.pyx`` and the files
it includes (see ``docs/internals.md``); the fallback has the same classes
and behaviour (read its docstrings for the contract), and both take their
limits and the logic that needs no C speed from ``gossip_fast/_common.py``.
Keep this file in step with both: ``tests/test_packaging.py`` checks it
against the compiled module, ``tests/test_parity.py`` against both (and the
two against each other).  The functions after :class:`Receiver` are the
compiled core's only.
"""
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Final, TypeVar, final

__all__ = ('Clock', 'Worker', 'State', 'Receiver', 'MAX_PEER_CLOCK', 'REJECTED',
           'RESERVED_FIELDS', 'SLOTS_PER_SECOND', 'MAX_FREQ')

_T = TypeVar('_T')

#: A prepared event (or a raw event body): JSON-decoded, keyed by field name.
_EventBody = dict[str, Any]
#: ``on_reject(reason, hostname, detail)``.
_RejectCallback = Callable[[str, Any, Any], object]
#: ``on_drift(worker, drift_seconds, local_received, timestamp)``.
_DriftCallback = Callable[['Worker', int, float, float], object]
#: ``prepare(body) -> (type, event)``, as ``EventReceiver.event_from_message``.
_Prepare = Callable[[_EventBody], tuple[Any, _EventBody]]

#: Highest clock value accepted from a peer (``2**62``).
MAX_PEER_CLOCK: Final[int]
#: What ``Receiver.decode`` returns for a message it rejected.
REJECTED: Final[object]
#: Our clock saturates here (``2**63 - 1``) instead of overflowing.
CLOCK_CEILING: Final[int]
#: Heartbeat periods above this many seconds (a day) are bad input.
MAX_FREQ: Final[float]
#: Timestamps must be positive and below this.
MAX_TIME: Final[float]
#: ``heartbeat_expires = last heartbeat + freq * EXPIRE_FACTOR``.
EXPIRE_FACTOR: Final[float]
#: Drift (seconds) between a peer's timestamp and our receive time above
#: which ``State.on_drift`` is called, once per peer.
DRIFT_MAX: Final[int]
#: Resolution of the deadline wheel (slots per second).
SLOTS_PER_SECOND: Final[int]
#: Body keys that would shadow or break a worker entry's own attributes.
RESERVED_FIELDS: Final[frozenset[str]]
#: The fields (and their defaults) every :class:`Worker` starts with.
DEFAULT_FIELDS: Final[tuple[tuple[str, Any], ...]]


def valid_peer_clock(value: object) -> bool:
    """Return True if *value* may be adjusted to (an int in range)."""
    ...


def as_seconds(value: object, upper: float) -> float | None:
    """*value* as a float in (0, upper], else None."""
    ...


@final
class Clock:
    """Lamport clock with the API of :class:`kombu.clocks.LamportClock`."""

    #: Exists for API compatibility: ``adjust`` and ``forward`` are atomic.
    mutex: Any
    #: How many peer values were not taken (not an int in range).
    rejected: int

    def __init__(self, initial_value: int = 0,
                 Lock: Callable[[], Any] = ...) -> None: ...
    @property
    def value(self) -> int: ...
    @value.setter
    def value(self, value: int) -> None: ...
    def adjust(self, other: object) -> int: ...
    def forward(self) -> int: ...
    def sort_heap(self, h: Sequence[_T]) -> _T: ...


@final
class Worker:
    """A tracked peer, with the attributes of ``celery.events.state.Worker``
    and any other field the peer sent."""

    heartbeat_max: ClassVar[int]
    expire_window: ClassVar[int]

    hostname: str | None
    pid: int | None
    freq: float
    clock: int
    active: int | None
    processed: int | None
    loadavg: list[float] | None
    sw_ident: str | None
    sw_ver: str | None
    sw_sys: str | None

    def __init__(self, hostname: str | None = None) -> None: ...
    @property
    def heartbeats(self) -> list[float]: ...
    @property
    def heartbeat_expires(self) -> float: ...
    @property
    def alive(self) -> bool: ...
    @property
    def status_string(self) -> str: ...
    @property
    def id(self) -> str: ...
    def update(self, fields: Mapping[str, Any], **kw: Any) -> None: ...
    # move the fields of the last event into __dict__ (the compiled core
    # serves them from the event until then; a no-op in the fallback)
    def materialize(self) -> None: ...
    # any other field of the peer's events
    def __getattr__(self, name: str) -> Any: ...


@final
class State:
    """The table of peers: ``workers`` maps hostname to :class:`Worker`."""

    workers: dict[str, Worker]
    on_node_join: Callable[[Worker], object] | None
    on_node_leave: Callable[[Worker], object] | None
    on_reject: _RejectCallback | None
    on_drift: _DriftCallback | None
    event_count: int
    joins: int
    leaves: int
    losses: int
    dropped: int

    def __init__(self,
                 on_node_join: Callable[[Worker], object] | None = None,
                 on_node_leave: Callable[[Worker], object] | None = None,
                 on_reject: _RejectCallback | None = None,
                 on_drift: _DriftCallback | None = None) -> None: ...
    def event(self, event: Mapping[str, Any]) -> tuple[tuple[Worker, bool], str] | None: ...
    def sweep(self, now: float | None = None) -> list[Worker]: ...
    def expired(self, now: float | None = None) -> list[str]: ...
    def alive_workers(self) -> Iterator[Worker]: ...
    def alive_count(self, now: float | None = None) -> int: ...
    def is_alive(self, hostname: str, now: float | None = None) -> bool: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...


@final
class Receiver:
    """``Gossip.on_message``: route, decode, prepare and apply one event."""

    #: The Gossip bootstep (its hostname, event_handlers, update_state and
    #: clock are looked up on every message).
    gossip: Any
    state: Any
    clock: Any
    accept: Collection[str] | None
    state_event: Callable[[_EventBody], object] | None
    fast_prepare: _Prepare
    received: int
    applied: int
    own: int
    skipped_tasks: int
    decode_fallbacks: int

    def __init__(self, gossip: Any, state: Any, clock: Any,
                 accept: Collection[str] | None) -> None: ...
    def refresh(self) -> None:
        """Re-read the bootstep's hostname, clock, update_state and
        event_handlers (called by ``Gossip.__setattr__``)."""
        ...
    def decode(self, message: Any, raw: bytes | None = None) -> Any: ...
    def prepare(self, body: _EventBody) -> tuple[str, _EventBody]: ...
    def on_message(self, prepare: _Prepare, message: Any) -> Any: ...
    # one event read by a transport reader (gossip_fast.fastpath): the same
    # as on_message for the kombu message of these parts
    def on_raw(self, routing_key: str, headers: dict[str, Any] | None,
               body: bytes | str, content_type: str = ...,
               content_encoding: str | None = ...,
               exchange: str = ...) -> Any: ...
    # the readers' apply loop: held on_raw argument tuples (other items to
    # *other*), oldest first, until time.monotonic() reaches *deadline*;
    # returns how many were taken
    def apply_held(self, items: list[Any], deadline: float, minimum: int,
                   other: Callable[[Any], Any],
                   error: Callable[[BaseException], Any]) -> int: ...
    def stats(self) -> dict[str, int]: ...


def scan_body(body: bytes) -> tuple[str, str, int, float, float] | None:
    """(hostname, type, clock, timestamp, freq) of a standard event body, or
    None (for tests)."""


def coalesce(items: list[Any], heartbeat_sender: Callable[[Any], str | None],
             max_pending: int) -> tuple[list[Any], int]:
    """``gossip_fast.fastpath.base.coalesce`` for held ``on_raw`` argument
    tuples, compiled (*heartbeat_sender* is base.heartbeat_sender's rule)."""
    ...


def held(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """*item*, a held event's ``on_raw`` arguments, untracked by the cyclic
    garbage collector (a backlog of them made CPython run full collections
    over the whole table); returns it."""
    ...


@final
class PubSubScanner:
    """Splits a Redis pub/sub connection's RESP2 stream: standard kombu
    envelopes into ``Receiver.on_raw``'s arguments, every other pmessage's
    data through ``fallback``; other replies returned as hiredis does."""
    fallback: Callable[[Any], Any]
    dedup: bool
    cache_size: int

    def __init__(self, fallback: Callable[[Any], Any]) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview, offset: int = 0,
             length: int = -1) -> None: ...
    @property
    def buffered(self) -> int: ...
    def scan(self, out: list[Any]) -> list[Any]: ...


@final
class DeliveryScanner:
    """Splits an AMQP consumer's byte stream: the plain deliveries on
    ``channel_id`` (``basic.deliver``, content header, one body frame) into
    ``Receiver.on_raw``'s arguments, held, appended to *out*; heartbeat
    frames skipped.  ``scan`` returns the position of the first byte it did
    not take (the end, an incomplete tail, or anything else: the RabbitMQ
    reader's Python splitter sees to that).  *keys* and *props* are the
    reader's caches, *decode_key* and *props_of* what it calls for bytes
    not in them."""
    @property
    def channel_id(self) -> int: ...

    def __init__(self, channel_id: int, keys: dict[bytes, tuple[str, str]],
                 props: dict[bytes, tuple[Any, ...]],
                 decode_key: Callable[[bytes], tuple[str, str]],
                 props_of: Callable[[bytes], tuple[Any, ...]]) -> None: ...
    def scan(self, buf: bytes, pos: int, out: list[Any]) -> int: ...
