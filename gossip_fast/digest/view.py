"""The two ends of the digest stream, as pure state machines (no broker, no
timers, no callbacks: the caller fires what they return).

``ChangeLog`` (relay side)
    collects the final state of each host that changed, builds a digest
    when one is due (at most one per ``interval``, an empty keepalive after
    ``keepalive``), and -- since the relay also receives its own digests --
    makes the next digest cumulative from the last one that came back, so a
    digest lost in a broker outage never forces members into snapshots.

``MemberView`` (member side)
    applies digests and snapshots to a membership (with its
    :class:`~gossip_fast.digest.codec.ViewHash`), tracks the stream
    position (term, seq), and reports the joins / leaves / losses to fire
    and whether a snapshot is needed (a gap, or a view that does not match
    the relay's count and hash).

Both follow docs/digest-mode.md, section 7.
"""
from typing import List, NamedTuple, Optional, Tuple

from .codec import Digest, Member, PeerFields, Snapshot, ViewHash

__all__ = ('ChangeLog', 'MemberView', 'Applied')

_LEFT = 'left'
_LOST = 'lost'


class ChangeLog:
    """What the publishing relay has to tell the members."""

    def __init__(self, hostname, pid, interval=2.0, keepalive=10.0, term=1,
                 members=(), seq=0, base=None):
        """*members*: the view to start from (a successor taking over: its
        member view, which is what the members hold); *base*: the stream
        position that view is at (term, seq) -- the first digest applies
        to it, so members need no snapshot after a takeover."""
        self.hostname = hostname
        self.pid = pid
        self.interval = interval
        self.keepalive = keepalive
        self.term = term
        self.seq = seq
        #: the view as the relay's digests describe it (what members hold)
        self.view = {m.hostname: m for m in members}
        self.hash = ViewHash((m.hostname, m.pid) for m in self.view.values())
        #: changes not yet published: {hostname: Member | 'left' | 'lost'}
        self.pending = {}
        #: published but not seen back: [(seq, {hostname: state})]
        self.inflight = []
        #: the base of the next digest: the last one of ours that came back
        #: from the broker (at first: the position the view is at)
        self.echoed = tuple(base) if base is not None else (term, seq)
        self.last_published = None

    # -- changes, from the relay's state --------------------------------------------

    def joined(self, member):
        """*member* is present (new, restarted, or changed freq/flags)."""
        old = self.view.get(member.hostname)
        if old == member and member.hostname not in self.pending:
            return
        self.view[member.hostname] = member
        self.hash.add(member.hostname, member.pid)
        self.pending[member.hostname] = member

    def left(self, hostname):
        self._remove(hostname, _LEFT)

    def lost(self, hostname):
        self._remove(hostname, _LOST)

    def _remove(self, hostname, how):
        if hostname not in self.view:
            return
        del self.view[hostname]
        self.hash.discard(hostname)
        self.pending[hostname] = how

    # -- publishing -----------------------------------------------------------------

    def due(self, now):
        """True if a digest should go out at this tick."""
        if self.last_published is None:
            return True
        since = now - self.last_published
        if self.pending:
            return since >= self.interval - 1e-9
        return since >= self.keepalive - 1e-9

    def build(self, now, clock, relays):
        """The next digest; the pending changes move in flight."""
        changes = {}
        base_term, base = self.echoed
        for _, states in self.inflight:   # not seen back (yet): send again
            changes.update(states)
        changes.update(self.pending)      # later states win
        self.seq += 1
        self.inflight.append((self.seq, dict(self.pending)))
        self.pending = {}
        self.last_published = now
        joined = tuple(v for v in changes.values() if isinstance(v, Member))
        left = tuple(h for h, v in changes.items() if v == _LEFT)
        lost = tuple(h for h, v in changes.items() if v == _LOST)
        return Digest(self.hostname, self.pid, clock, now, self.term, self.seq, base_term,
                      base, self.hash.count, self.hash.value, tuple(relays),
                      float(self.interval), joined, left, lost)

    def came_back(self, term, seq):
        """Our digest (*term*, *seq*) was received from the broker."""
        if term != self.term:
            return
        self.inflight = [(s, c) for s, c in self.inflight if s > seq]
        if (term, seq) > self.echoed:
            self.echoed = (term, seq)

    def snapshot(self, now, clock, relays, fields=None, request=None):
        """A snapshot of the view; *fields*: ``{hostname: PeerFields}``."""
        members = tuple(self.view.values())
        peer = tuple((fields or {}).get(m.hostname, PeerFields()) for m in members)
        return Snapshot(self.hostname, self.pid, clock, now, self.term, max(1, self.seq),
                        self.hash.count, self.hash.value, tuple(relays),
                        float(self.interval), members, peer, request)


class Applied(NamedTuple):
    """What applying a relay message changed, for the caller to fire."""
    joined: Tuple[Member, ...] = ()      # node_join (new, or restarted)
    left: Tuple[Member, ...] = ()        # node_leave
    lost: Tuple[Member, ...] = ()        # node_lost
    snapshot_needed: bool = False        # gap or mismatch: ask (jittered)
    stale: bool = False                  # older than the position: ignored


class MemberView:
    """A member's view of the cluster, from the relay's digests/snapshots.

    The view holds every member, the local worker too (the relay's count
    and hash cover it); the events returned never name *me* (a stock
    worker's state never holds itself either)."""

    def __init__(self, me=None):
        self.me = me
        self.members = {}
        self.fields = {}
        self.hash = ViewHash()
        self.term = 0
        self.seq = 0
        self.relays: Tuple[str, ...] = ()
        self.publisher: Optional[str] = None
        self.interval = None
        self.synced = False      # a snapshot applied, or a matching digest seen

    @property
    def position(self):
        return self.term, self.seq

    def matches(self, count, digest_hash):
        return self.hash.count == count and self.hash.value == digest_hash

    def _put(self, member, events):
        old = self.members.get(member.hostname)
        self.members[member.hostname] = member
        self.hash.add(member.hostname, member.pid)
        if member.hostname == self.me:
            return
        if old is None or old.pid != member.pid or member.inc > old.inc:
            events.append(member)

    def _drop(self, hostname, events):
        old = self.members.pop(hostname, None)
        if old is None:
            return
        self.hash.discard(hostname)
        self.fields.pop(hostname, None)
        if hostname != self.me:
            events.append(old)

    def apply_digest(self, digest: Digest) -> Applied:
        if (digest.term, digest.seq) <= (self.term, self.seq):
            # a repeat, a late one (older than what we applied: its final
            # states are out of date), or an old publisher still talking
            # before it hears the newer term and steps down: ignored
            return Applied(stale=True)
        # base seq 0: the changes since the empty view at the start of that
        # term (a relay that started with nothing) -- a fresh member has it
        fresh = digest.base == 0 and self.seq == 0 and not self.members
        gap = (self.term, self.seq) < (digest.base_term, digest.base) and not fresh
        joined: List[Member] = []
        left: List[Member] = []
        lost: List[Member] = []
        for member in digest.joined:
            self._put(member, joined)
        for hostname in digest.left:
            self._drop(hostname, left)
        for hostname in digest.lost:
            self._drop(hostname, lost)
        self.term, self.seq = digest.term, digest.seq
        self.relays = digest.relays
        self.publisher = digest.hostname
        self.interval = digest.interval
        match = self.matches(digest.count, digest.hash)
        if match and not gap:
            self.synced = True
        return Applied(tuple(joined), tuple(left), tuple(lost), gap or not match, False)

    def apply_snapshot(self, snap: Snapshot, needed=True) -> Applied:
        """Reconcile with *snap*: entries it lacks are lost, new ones join.
        A snapshot older than the stream position is ignored unless
        *needed* (the member asked for one)."""
        if (snap.term, snap.seq) < (self.term, self.seq) and not needed:
            return Applied(stale=True)
        joined: List[Member] = []
        lost: List[Member] = []
        present = {m.hostname for m in snap.members}
        for hostname in [h for h in self.members if h not in present]:
            self._drop(hostname, lost)
        fields = snap.fields or (PeerFields(),) * len(snap.members)
        for member, peer in zip(snap.members, fields, strict=True):
            self._put(member, joined)
            self.fields[member.hostname] = peer
        self.term, self.seq = snap.term, snap.seq
        self.relays = snap.relays
        self.publisher = snap.hostname
        self.interval = snap.interval
        match = self.matches(snap.count, snap.hash)
        self.synced = match
        return Applied(tuple(joined), (), tuple(lost), not match, False)
