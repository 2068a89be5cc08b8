"""Encode and decode digest-mode messages (format v1, docs/digest-mode.md).

Four kinds of message, each one JSON object (compact separators) sent as
the body of a kombu message on the digest exchange, content type
``application/x-gossip-fast-digest``; a body over :data:`COMPRESS_ABOVE`
bytes is zlib-compressed (the first byte tells: ``{`` JSON, ``x`` zlib).

Every message::

    v   format version (1)             k   kind: "d", "s", "p" or "a"
    h   sender hostname                p   sender pid
    c   sender's Lamport clock         ts  sender's wall time (unix seconds)

Relay messages (``d`` digest, ``s`` snapshot, ``p`` pulse) add::

    g   term: +1 at every takeover     s   sequence number in this term (>= 1)
    n   members after applying         x   membership hash, 16 hex digits
    r   relays, in succession order (r[0] is the publisher)
    i   digest interval of the publisher (seconds)

A digest (``d``) carries the changes since (``bg``, ``b``), the term and
sequence number they apply to (normally the previous digest), as the final
state of each changed host: applied to any state between its base and
itself it gives the same view, so a relay can repeat changes whose digest
may have been lost by making the next one cumulative::

    j   [[host, pid, freq, flags, inc], ...]   present: joined or changed
    l   [host, ...]                            left (worker-offline)
    o   [host, ...]                            lost (missed heartbeats)

A snapshot (``s``) carries every member and the per-peer heartbeat fields
(they reach members only this way)::

    m   [[host, pid, freq, flags, inc, active, processed, loadavg, sw], ...]
    w   [[sw_ident, sw_ver, sw_sys], ...]      sw is an index in this table
    q   the request it answers (null: unrequested)

A pulse (``p``, relay -> its successors, every second) has only the
relay header: it says the relay is alive and where its stream is.

An announce (``a``, member -> relays)::

    f   flags (FLAG_DIGEST | FLAG_ELIGIBLE)
    g, s, n, x   the digest stream position and view the member has
    q   a snapshot request id (absent: no snapshot wanted)

``decode`` validates everything it returns (types, ranges, sizes,
duplicates) and returns ``(message, None)`` or ``(None, reason)``; it never
raises.  :class:`DigestDecoder` wraps it with a counter per reason and a
rate-limited log line, as the rest of gossip_fast treats bad input.
"""
import json
import math
import time
import zlib
from collections import Counter
from hashlib import blake2b
from typing import NamedTuple, Optional, Tuple

from celery.utils.log import get_logger

__all__ = ('VERSION', 'CONTENT_TYPE', 'FLAG_DIGEST', 'FLAG_ELIGIBLE',
           'Member', 'PeerFields', 'Digest', 'Snapshot', 'Pulse', 'Announce',
           'member_hash', 'ViewHash', 'encode', 'decode', 'DigestDecoder')

logger = get_logger(__name__)

VERSION = 1
CONTENT_TYPE = 'application/x-gossip-fast-digest'
CONTENT_ENCODING = 'binary'

#: member flags: runs digest mode (sends announces); may be chosen as relay
FLAG_DIGEST = 1
FLAG_ELIGIBLE = 2
_FLAGS_MAX = 0xFFFF

#: bodies longer than this are compressed (a digest rarely is; a snapshot is)
COMPRESS_ABOVE = 1024
#: no message may be (or inflate to) more than this
MAX_BYTES = 64 * 1024 * 1024
MAX_HOSTNAME = 255
MAX_RELAYS = 16
MAX_SW = 4096
_INT63 = 2 ** 63
_INT64 = 2 ** 64
_PID_MAX = 2 ** 31
_MAX_FREQ = 86400.0
_MAX_REQUEST = 64
#: JSON whitespace-free separators: ~8% smaller than json.dumps' default
_SEPARATORS = (',', ':')


class Member(NamedTuple):
    """One cluster member as a relay publishes it."""
    hostname: str
    pid: int
    freq: float          # its heartbeat interval (alive while < 2 * freq silent)
    flags: int = 0       # FLAG_DIGEST | FLAG_ELIGIBLE (0: stock or non-digest)
    inc: int = 0         # ms timestamp of the last worker-online seen (0: none)


class PeerFields(NamedTuple):
    """A peer's heartbeat fields; members get them with snapshots only."""
    active: Optional[int] = None
    processed: Optional[int] = None
    loadavg: Optional[Tuple[float, float, float]] = None
    sw_ident: Optional[str] = None
    sw_ver: Optional[str] = None
    sw_sys: Optional[str] = None


class Digest(NamedTuple):
    hostname: str
    pid: int
    clock: int
    time: float
    term: int
    seq: int
    base_term: int
    base: int
    count: int
    hash: int
    relays: Tuple[str, ...]
    interval: float
    joined: Tuple[Member, ...] = ()
    left: Tuple[str, ...] = ()
    lost: Tuple[str, ...] = ()
    kind = 'd'


class Snapshot(NamedTuple):
    hostname: str
    pid: int
    clock: int
    time: float
    term: int
    seq: int
    count: int
    hash: int
    relays: Tuple[str, ...]
    interval: float
    members: Tuple[Member, ...] = ()
    fields: Tuple[PeerFields, ...] = ()   # one per member, same order
    request: Optional[str] = None
    kind = 's'


class Pulse(NamedTuple):
    hostname: str
    pid: int
    clock: int
    time: float
    term: int
    seq: int
    count: int
    hash: int
    relays: Tuple[str, ...]
    interval: float
    kind = 'p'


class Announce(NamedTuple):
    hostname: str
    pid: int
    clock: int
    time: float
    flags: int = FLAG_DIGEST | FLAG_ELIGIBLE
    term: int = 0
    seq: int = 0
    count: int = 0
    hash: int = 0
    request: Optional[str] = None
    kind = 'a'


# -- membership hash --------------------------------------------------------------------

def member_hash(hostname, pid):
    """64-bit hash of one member (the same on every platform and run)."""
    data = f'{hostname}\0{pid}'.encode('utf-8', 'surrogatepass')
    return int.from_bytes(blake2b(data, digest_size=8, person=b'gf-view1').digest(), 'big')


class ViewHash:
    """Order-independent hash of a membership: the XOR of :func:`member_hash`
    of every (hostname, pid), kept up to date in O(1) per change."""

    __slots__ = ('value', 'count', '_members')

    def __init__(self, members=()):
        self.value = 0
        self.count = 0
        self._members = {}
        for hostname, pid in members:
            self.add(hostname, pid)

    def add(self, hostname, pid):
        """Add or re-add (a new pid replaces the old one)."""
        old = self._members.get(hostname)
        if old == pid:
            return
        if old is not None:
            self.value ^= member_hash(hostname, old)
        else:
            self.count += 1
        self._members[hostname] = pid
        self.value ^= member_hash(hostname, pid)

    def discard(self, hostname):
        pid = self._members.pop(hostname, None)
        if pid is not None:
            self.value ^= member_hash(hostname, pid)
            self.count -= 1

    def __contains__(self, hostname):
        return hostname in self._members

    def __len__(self):
        return self.count


# -- encoding ------------------------------------------------------------------------------

def _header(msg):
    return {'v': VERSION, 'k': msg.kind, 'h': msg.hostname, 'p': msg.pid,
            'c': msg.clock, 'ts': msg.time}


def _relay_header(msg):
    out = _header(msg)
    out.update(g=msg.term, s=msg.seq, n=msg.count, x=f'{msg.hash:016x}',
               r=list(msg.relays), i=msg.interval)
    return out


def _member_list(m):
    return [m.hostname, m.pid, m.freq, m.flags, m.inc]


def encode(msg, compress=None):
    """The message body (bytes).  *compress*: None = when over
    :data:`COMPRESS_ABOVE` bytes, True/False = always/never."""
    if msg.kind == 'd':
        out = _relay_header(msg)
        out.update(bg=msg.base_term, b=msg.base,
                   j=[_member_list(m) for m in msg.joined],
                   l=list(msg.left), o=list(msg.lost))
    elif msg.kind == 's':
        out = _relay_header(msg)
        table, index, rows = [], {}, []
        fields = msg.fields or (PeerFields(),) * len(msg.members)
        for m, f in zip(msg.members, fields, strict=True):
            sw = -1
            if f.sw_ident is not None or f.sw_ver is not None or f.sw_sys is not None:
                key = (f.sw_ident, f.sw_ver, f.sw_sys)
                sw = index.get(key)
                if sw is None:
                    sw = index[key] = len(table)
                    table.append(list(key))
            rows.append([m.hostname, m.pid, m.freq, m.flags, m.inc, f.active,
                         f.processed, list(f.loadavg) if f.loadavg is not None else None,
                         sw])
        out.update(m=rows, w=table, q=msg.request)
    elif msg.kind == 'p':
        out = _relay_header(msg)
    elif msg.kind == 'a':
        out = _header(msg)
        out.update(f=msg.flags, g=msg.term, s=msg.seq, n=msg.count,
                   x=f'{msg.hash:016x}')
        if msg.request is not None:
            out['q'] = msg.request
    else:
        raise ValueError(f'not a digest-mode message: {msg!r}')
    # ensure_ascii: a hostname learned from a peer may hold anything (even a
    # lone surrogate); escaped, it always encodes and decodes back the same
    body = json.dumps(out, separators=_SEPARATORS, ensure_ascii=True,
                      allow_nan=False).encode('ascii')
    if compress or (compress is None and len(body) > COMPRESS_ABOVE):
        body = zlib.compress(body, 6)
    return body


# -- decoding --------------------------------------------------------------------------------

class _Bad(Exception):
    """Internal: validation failed (never leaves this module)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def _int(obj, key, low=0, high=_INT63):
    value = obj.get(key)
    if type(value) is not int or not low <= value < high:
        raise _Bad(f'bad_field:{key}')
    return value


def _real(value, key, low, high):
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        raise _Bad(f'bad_field:{key}')
    return float(value)


def _host(value, key='h'):
    if type(value) is not str or not 0 < len(value) <= MAX_HOSTNAME:
        raise _Bad(f'bad_field:{key}')
    return value


def _hosts(obj, key, limit):
    value = obj.get(key, [])
    if type(value) is not list or len(value) > limit:
        raise _Bad(f'bad_field:{key}')
    hosts = tuple(_host(h, key) for h in value)
    if len(set(hosts)) != len(hosts):
        raise _Bad(f'duplicate:{key}')
    return hosts


def _hash(obj):
    value = obj.get('x')
    if type(value) is not str or len(value) != 16:
        raise _Bad('bad_field:x')
    try:
        return int(value, 16)
    except ValueError:
        raise _Bad('bad_field:x') from None


def _member(row, key):
    if type(row) is not list or len(row) < 5:
        raise _Bad(f'bad_field:{key}')
    hostname, pid, freq, flags, inc = row[:5]
    _host(hostname, key)
    if type(pid) is not int or not 0 <= pid < _PID_MAX:
        raise _Bad(f'bad_field:{key}.pid')
    freq = _real(freq, f'{key}.freq', 0.001, _MAX_FREQ)
    if type(flags) is not int or not 0 <= flags <= _FLAGS_MAX:
        raise _Bad(f'bad_field:{key}.flags')
    if type(inc) is not int or not 0 <= inc < _INT63:
        raise _Bad(f'bad_field:{key}.inc')
    return Member(hostname, pid, freq, flags, inc)


def _count(value, key):
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < _INT63:
        raise _Bad(f'bad_field:{key}')
    return value


def _fields(row, table):
    if len(row) < 9:
        raise _Bad('bad_field:m')
    active, processed, loadavg, sw = row[5:9]
    active = _count(active, 'm.active')
    processed = _count(processed, 'm.processed')
    if loadavg is not None:
        if type(loadavg) is not list or len(loadavg) != 3:
            raise _Bad('bad_field:m.loadavg')
        loadavg = tuple(_real(v, 'm.loadavg', 0.0, 1e9) for v in loadavg)
    if type(sw) is not int or not -1 <= sw < len(table):
        raise _Bad('bad_field:m.sw')
    ident = ver = system = None
    if sw >= 0:
        ident, ver, system = table[sw]
    return PeerFields(active, processed, loadavg, ident, ver, system)


def _sw_table(obj):
    table = obj.get('w', [])
    if type(table) is not list or len(table) > MAX_SW:
        raise _Bad('bad_field:w')
    for row in table:
        if (type(row) is not list or len(row) != 3
                or any(v is not None and (type(v) is not str or len(v) > 255) for v in row)):
            raise _Bad('bad_field:w')
    return table


def _relay_common(obj):
    term = _int(obj, 'g')
    seq = _int(obj, 's', 1)
    count = _int(obj, 'n', 0, 10 ** 8)
    relays = _hosts(obj, 'r', MAX_RELAYS)
    if not relays:
        raise _Bad('bad_field:r')
    interval = _real(obj.get('i'), 'i', 0.01, 3600.0)
    return term, seq, count, _hash(obj), relays, interval


def _parse(obj):
    if type(obj) is not dict:
        raise _Bad('not_an_object')
    version = obj.get('v')
    if version != VERSION or type(version) is not int:
        raise _Bad('version')
    kind = obj.get('k')
    hostname = _host(obj.get('h'))
    pid = _int(obj, 'p', 0, _PID_MAX)
    clock = _int(obj, 'c')
    stamp = _real(obj.get('ts'), 'ts', 0.0, 1e11)
    if kind == 'd':
        term, seq, count, digest, relays, interval = _relay_common(obj)
        base_term = _int(obj, 'bg')
        base = _int(obj, 'b')
        if (base_term, base) >= (term, seq):
            raise _Bad('bad_field:b')
        joined = obj.get('j', [])
        if type(joined) is not list or len(joined) > 10 ** 7:
            raise _Bad('bad_field:j')
        joined = tuple(_member(row, 'j') for row in joined)
        left = _hosts(obj, 'l', 10 ** 7)
        lost = _hosts(obj, 'o', 10 ** 7)
        named = [m.hostname for m in joined] + list(left) + list(lost)
        if len(set(named)) != len(named):
            raise _Bad('duplicate:host')  # one final state per host
        return Digest(hostname, pid, clock, stamp, term, seq, base_term, base,
                      count, digest, relays, interval, joined, left, lost)
    if kind == 's':
        term, seq, count, digest, relays, interval = _relay_common(obj)
        table = _sw_table(obj)
        rows = obj.get('m', [])
        if type(rows) is not list or len(rows) > 10 ** 7:
            raise _Bad('bad_field:m')
        members = tuple(_member(row, 'm') for row in rows)
        fields = tuple(_fields(row, table) for row in rows)
        if len({m.hostname for m in members}) != len(members):
            raise _Bad('duplicate:m')
        request = obj.get('q')
        if request is not None and (type(request) is not str or len(request) > _MAX_REQUEST):
            raise _Bad('bad_field:q')
        return Snapshot(hostname, pid, clock, stamp, term, seq, count, digest,
                        relays, interval, members, fields, request)
    if kind == 'p':
        term, seq, count, digest, relays, interval = _relay_common(obj)
        return Pulse(hostname, pid, clock, stamp, term, seq, count, digest, relays, interval)
    if kind == 'a':
        flags = _int(obj, 'f', 0, _FLAGS_MAX + 1)
        term = _int(obj, 'g')
        seq = _int(obj, 's')
        count = _int(obj, 'n', 0, 10 ** 8)
        request = obj.get('q')
        if request is not None and (type(request) is not str or not 0 < len(request) <= _MAX_REQUEST):
            raise _Bad('bad_field:q')
        return Announce(hostname, pid, clock, stamp, flags, term, seq, count,
                        _hash(obj), request)
    raise _Bad('kind')


def _reject_constant(name):
    raise ValueError(name)  # NaN / Infinity are not JSON


def decode(body):
    """``(message, None)`` for a valid body, else ``(None, reason)``."""
    try:
        if isinstance(body, str):
            body = body.encode('utf-8', 'surrogatepass')
        elif not isinstance(body, (bytes, bytearray, memoryview)):
            return None, 'not_bytes'
        body = bytes(body)
        if len(body) > MAX_BYTES:
            return None, 'too_large'
        if body[:1] == b'x':
            inflater = zlib.decompressobj()
            try:
                data = inflater.decompress(body, MAX_BYTES)
            except zlib.error:
                return None, 'bad_zlib'
            if inflater.unconsumed_tail:
                return None, 'too_large'
            if not inflater.eof:
                return None, 'bad_zlib'
            body = data
        if body[:1] != b'{':
            return None, 'not_json'
        try:
            obj = json.loads(body.decode('utf-8'), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None, 'not_json'
        return _parse(obj), None
    except _Bad as bad:
        return None, bad.reason
    except Exception as exc:  # pylint: disable=broad-except
        # Bad input must never take the worker down; this is a bug if seen.
        return None, f'error:{type(exc).__name__}'


class DigestDecoder:
    """:func:`decode` with a counter per reason (``dropped``) and a log line
    per reason at most every *log_interval* seconds."""

    def __init__(self, log_interval=10.0, log=None, clock=time.monotonic):
        self.dropped = Counter()
        self.decoded = 0
        self.log_interval = log_interval
        self._log = log
        self._clock = clock
        self._logged = {}
        self._suppressed = Counter()

    def __call__(self, body, sender=None):
        msg, reason = decode(body)
        if msg is not None:
            self.decoded += 1
            return msg
        self.dropped[reason] += 1
        now = self._clock()
        last = self._logged.get(reason)
        if last is not None and now - last < self.log_interval:
            self._suppressed[reason] += 1
            return None
        self._logged[reason] = now
        more = self._suppressed.pop(reason, 0)
        (self._log or logger.warning)(
            'gossip_fast digest: dropped a message from %s: %s%s',
            sender if isinstance(sender, str) else 'unknown sender', reason,
            f' ({more} more like it since the last report)' if more else '')
        return None
