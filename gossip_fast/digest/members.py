"""What a digest-mode worker shows as ``gossip.state``: the relay's view.

A digest-mode worker gets no heartbeats (a member), or judges liveness only
to publish it (the relay), so its ``state`` is the view the relay's digests
describe (:class:`~gossip_fast.digest.view.MemberView`), with the interface
of the step's usual state: ``workers`` (hostname -> worker),
``alive_workers()``, ``alive_count()``, ``is_alive()``, and the ``joins``,
``leaves`` and ``losses`` counters.

Every entry is alive: liveness is the relay's judgement, and an entry
leaves only when the relay says so.  Entries are :class:`ViewWorker`
objects with the attributes of ``celery.events.state.Worker``; the per-peer
heartbeat fields (``active``, ``processed``, ``loadavg``, ``sw_*``) are
those of the snapshot the worker got when it joined, ``pid`` and ``freq``
those of the latest digest entry.
"""
from .codec import PeerFields

__all__ = ('ViewWorker', 'ViewState')

_EXPIRE_FACTOR = 2.0


class ViewWorker:
    """A peer in the relay's view (the attributes of Celery's ``Worker``)."""

    heartbeat_max = 4
    expire_window = 200

    def __init__(self, member, fields=None, now=0.0):
        self.hostname = member.hostname
        self.clock = 0
        self.heartbeats = [now]
        self.set_member(member)
        self.set_fields(fields or PeerFields())

    def set_member(self, member):
        self.pid = member.pid
        self.freq = member.freq
        self.digest_flags = member.flags
        self.digest_inc = member.inc

    def set_fields(self, fields):
        self.active = fields.active
        self.processed = fields.processed
        self.loadavg = list(fields.loadavg) if fields.loadavg is not None else None
        self.sw_ident = fields.sw_ident
        self.sw_ver = fields.sw_ver
        self.sw_sys = fields.sw_sys

    def confirm(self, now):
        """Seen in a digest or snapshot at *now* (one heartbeat kept)."""
        self.heartbeats = [now]

    @property
    def alive(self):
        return True

    @property
    def heartbeat_expires(self):
        return self.heartbeats[-1] + self.freq * _EXPIRE_FACTOR

    @property
    def status_string(self):
        return 'ONLINE'

    @property
    def id(self):
        return f'{self.hostname}.{self.pid}'

    def update(self, fields, **kw):
        for name, value in dict(fields, **kw).items():
            if name not in ('alive', 'heartbeat_expires', 'status_string', 'id'):
                setattr(self, name, value)

    def __repr__(self):
        return f'<Worker: {self.hostname} (ONLINE, digest view)>'


class ViewState:
    """``gossip.state`` in digest mode (see the module docstring)."""

    #: elections use the contract's exact rule on this state too
    #: (gossip_fast/elections.py): every alive worker must have voted
    digest_view = True

    def __init__(self, me):
        self.me = me
        self.workers = {}
        self.joins = 0
        self.leaves = 0
        self.losses = 0
        self.event_count = 0

    def alive_workers(self):
        return iter(list(self.workers.values()))

    def alive_count(self, now=None):
        return len(self.workers)

    def is_alive(self, hostname, now=None):
        return hostname in self.workers

    def expired(self, now=None):
        return []

    def sweep(self, now=None):
        return []  # the relay judges, members never time peers out

    def __len__(self):
        return len(self.workers)

    def __repr__(self):
        return f'<ViewState: workers={len(self.workers)}>'

    # -- applying what the view changed -----------------------------------------------

    def apply(self, applied, view, now):
        """Apply *applied* (an :class:`~gossip_fast.digest.view.Applied` of
        *view*) and every entry it confirmed; returns ``(joined, left,
        lost)``: the :class:`ViewWorker` objects to fire callbacks for."""
        workers = self.workers
        joined, left, lost = [], [], []
        for member in applied.joined:
            worker = workers.get(member.hostname)
            if worker is None:
                worker = workers[member.hostname] = ViewWorker(
                    member, view.fields.get(member.hostname), now)
            else:
                worker.set_member(member)
                worker.confirm(now)
            joined.append(worker)
        for member in applied.left:
            worker = workers.pop(member.hostname, None)
            left.append(worker or ViewWorker(member, None, now))
        for member in applied.lost:
            worker = workers.pop(member.hostname, None)
            lost.append(worker or ViewWorker(member, None, now))
        self.joins += len(joined)
        self.leaves += len(left)
        self.losses += len(lost)
        self.event_count += 1
        return joined, left, lost

    def reconcile(self, view, now, fields=False):
        """Make :attr:`workers` hold exactly *view*'s members (without us):
        after a snapshot (*fields*: take its per-peer fields) or when the
        relay's own judgement replaces the view.  Returns ``(joined,
        lost)`` for the entries that were missing or extra."""
        workers = self.workers
        members = view.members
        joined, lost = [], []
        for hostname in [h for h in workers if h not in members]:
            lost.append(workers.pop(hostname))
        for hostname, member in members.items():
            if hostname == self.me:
                continue
            worker = workers.get(hostname)
            if worker is None:
                worker = workers[hostname] = ViewWorker(member, view.fields.get(hostname), now)
                joined.append(worker)
                continue
            restarted = worker.pid != member.pid or member.inc > worker.digest_inc
            worker.set_member(member)
            worker.confirm(now)
            if fields and hostname in view.fields:
                worker.set_fields(view.fields[hostname])
            if restarted:
                joined.append(worker)
        self.joins += len(joined)
        self.losses += len(lost)
        return joined, lost
