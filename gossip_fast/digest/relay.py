"""The relay's side of digest mode: its heartbeat table's changes, as digests.

While a worker relays, it receives the full heartbeat stream through the
normal fast reader into the step's own table (the compiled or pure-Python
core's ``State``: stock's rules, the deadline wheel).  :class:`Relay` turns
what that table reports into the :class:`~gossip_fast.digest.view.ChangeLog`
it publishes:

* a peer's first heartbeat or a ``worker-online`` (the table's join
  callback) -> present, with its pid, freq, flags (from its announces) and
  ``inc`` (the time of its last ``worker-online``, ms: members fire
  ``node_join`` again when it grows, as stock does on ``worker-online``);
* ``worker-offline`` (the leave callback) -> left;
* the sweep (stock's rule: no heartbeat for 2 x its freq) -> lost.

It also keeps the relay list ``r`` (itself, then its successors:
:func:`~gossip_fast.digest.relays.choose_relays` over the eligible members),
seeds the table when it takes over (every peer of its view as if it had just
sent a heartbeat: 2F of grace; the silent publisher as of its last message),
and answers snapshot requests within a byte budget per tick.
"""
import math
from collections import deque

from .codec import FLAG_DIGEST, FLAG_ELIGIBLE, Member, PeerFields, encode
from .relays import choose_relays
from .view import ChangeLog

__all__ = ('Relay', 'peer_fields')

_BOTH = FLAG_DIGEST | FLAG_ELIGIBLE
_PID_MAX = 2 ** 31
_INT63 = 2 ** 63
#: snapshot requests waiting at most (more: the oldest are dropped, they ask again)
_QUEUE_MAX = 100000


def _count(value):
    return value if type(value) is int and 0 <= value < _INT63 else None


def _text(value):
    return value if type(value) is str and len(value) <= 255 else None


def _loadavg(value):
    if type(value) not in (list, tuple) or len(value) != 3:
        return None
    out = []
    for v in value:
        if type(v) not in (int, float) or not math.isfinite(v) or not 0.0 <= v <= 1e9:
            return None
        out.append(float(v))
    return tuple(out)


def peer_fields(worker):
    """The :class:`PeerFields` of a table entry (invalid values: None)."""
    def field(name):
        return getattr(worker, name, None)
    return PeerFields(_count(field('active')), _count(field('processed')),
                      _loadavg(field('loadavg')), _text(field('sw_ident')),
                      _text(field('sw_ver')), _text(field('sw_sys')))


def _freq(value, default=2.0):
    if type(value) in (int, float) and math.isfinite(value) and 0.001 <= value <= 86400.0:
        return float(value)
    return default


class Relay:
    """The publishing state of this worker (see the module docstring)."""

    def __init__(self, me, pid, flags, table, timing, successors, term, view):
        """*view*: the worker's :class:`~gossip_fast.digest.view.MemberView`:
        the members already hold it, so the first digest applies to it."""
        self.me = me
        self.pid = pid
        self.table = table
        self.timing = timing
        self.successors = successors
        others = [m for h, m in view.members.items() if h != me]
        self.log = ChangeLog(me, pid, interval=timing.interval, keepalive=timing.keepalive,
                             term=term, members=others, seq=0,
                             base=view.position if view.term else None)
        mine = view.members.get(me)
        self.log.joined(Member(me, pid, timing.heartbeat, flags, mine.inc if mine else 0))
        self.flags = {h: m.flags for h, m in self.log.view.items()}
        self.candidates = {h for h, f in self.flags.items() if f & _BOTH == _BOTH}
        self._relays = (me,) + tuple(h for h in view.relays[1:] if h in self.candidates)
        self._relays_dirty = True
        self.requests = deque()
        self.hold_until = 0.0
        self.served = 0
        self.served_bytes = 0
        self.dropped_requests = 0

    @property
    def term(self):
        return self.log.term

    # -- the table's callbacks ----------------------------------------------------------

    def joined(self, worker):
        """The table's join callback: a new peer, or ``worker-online``."""
        hostname = worker.hostname
        if hostname == self.me or type(hostname) is not str:
            return
        old = self.log.view.get(hostname)
        pid = getattr(worker, 'pid', None)
        if type(pid) is not int or not 0 <= pid < _PID_MAX:
            pid = old.pid if old is not None else 0
        inc = old.inc if old is not None else 0
        if getattr(worker, 'type', None) == 'worker-online':
            stamp = getattr(worker, 'timestamp', None)
            ms = (int(stamp * 1000) if type(stamp) in (int, float) and 0 < stamp < 1e11
                  else 0)
            inc = max(inc + 1, ms)
        flags = self.flags.get(hostname, 0)
        self.log.joined(Member(hostname, pid, _freq(getattr(worker, 'freq', None)),
                               flags, inc))
        self._note(hostname, flags)

    def left(self, worker):
        """The table's leave callback (``worker-offline``)."""
        if worker.hostname != self.me:
            self.log.left(worker.hostname)
            self._forget(worker.hostname)

    def sweep(self, now):
        """The table's sweep as of *now*: the lost peers' hostnames."""
        lost = [w.hostname for w in self.table.sweep(now)]
        for hostname in lost:
            self.log.lost(hostname)
            self._forget(hostname)
        return lost

    def _note(self, hostname, flags):
        if flags & _BOTH == _BOTH:
            if hostname not in self.candidates:
                self.candidates.add(hostname)
                self._relays_dirty = True
        elif hostname in self.candidates:
            self.candidates.discard(hostname)
            self._relays_dirty = True

    def _forget(self, hostname):
        self.flags.pop(hostname, None)
        if hostname in self.candidates:
            self.candidates.discard(hostname)
            self._relays_dirty = True

    # -- announces ------------------------------------------------------------------------

    def announced(self, announce):
        """An announce: the sender's flags, and maybe a snapshot request."""
        hostname = announce.hostname
        if hostname != self.me:
            self.flags[hostname] = announce.flags
            old = self.log.view.get(hostname)
            if old is not None and old.flags != announce.flags:
                self.log.joined(old._replace(flags=announce.flags))
            if old is not None:
                self._note(hostname, announce.flags)
        if announce.request is not None:
            if len(self.requests) >= _QUEUE_MAX:
                self.requests.popleft()
                self.dropped_requests += 1
            self.requests.append((hostname, announce.request))

    # -- taking over ------------------------------------------------------------------------

    def seed(self, now, fields, silent=None, silent_at=None):
        """Fill the table from the view: every peer as if it had sent a
        heartbeat at *now*, the silent publisher *silent* at *silent_at*."""
        table = self.table
        table.clear()
        for hostname, member in list(self.log.view.items()):
            if hostname == self.me:
                continue
            at = silent_at if hostname == silent and silent_at else now
            peer = fields.get(hostname) or PeerFields()
            table.event({
                'type': 'worker-heartbeat', 'hostname': hostname, 'pid': member.pid,
                'freq': member.freq, 'timestamp': at, 'local_received': at,
                'active': peer.active, 'processed': peer.processed,
                'loadavg': list(peer.loadavg) if peer.loadavg is not None else None,
                'sw_ident': peer.sw_ident, 'sw_ver': peer.sw_ver, 'sw_sys': peer.sw_sys,
            })

    def new_term(self, term):
        """Move to *term* (a worse-ranked publisher had ours): the first
        digest of the new term repeats what the old one had not seen back."""
        old = self.log
        log = ChangeLog(self.me, self.pid, interval=old.interval, keepalive=old.keepalive,
                        term=term, members=old.view.values(), seq=0, base=old.echoed)
        for _, states in old.inflight:
            log.pending.update(states)
        log.pending.update(old.pending)
        self.log = log

    # -- publishing ---------------------------------------------------------------------------

    def relays(self):
        """``r``: us, then the successors (sticky, one per machine first)."""
        if self._relays_dirty:
            others = self.candidates - {self.me}
            self._relays = (self.me,) + choose_relays(others, self.successors,
                                                      self._relays[1:])
            self._relays_dirty = False
        return self._relays

    def snapshots(self, now, clock):
        """Encoded answers ``[(hostname, body)]`` to the queued requests,
        within the byte budget of one tick."""
        if not self.requests:
            return []
        fields = {}
        table = self.table.workers
        for hostname in self.log.view:
            worker = table.get(hostname)
            if worker is not None:
                fields[hostname] = peer_fields(worker)
        out, budget = [], self.timing.snapshot_budget
        relays = self.relays()
        while self.requests and budget > 0:
            hostname, request = self.requests.popleft()
            body = encode(self.log.snapshot(now, clock(), relays, fields, request))
            budget -= len(body)
            out.append((hostname, body))
            self.served += 1
            self.served_bytes += len(body)
        return out
