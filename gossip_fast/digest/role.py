"""The role state machine of a digest-mode worker (docs/digest-mode.md, 6-7).

Pure: no broker, no timers.  The caller (:mod:`.mode`) tells it what it
heard and asks it what to do; times are ``time.monotonic()`` seconds.

Roles: ``member`` -> ``successor`` (listed in the relay list ``r`` after
the publisher: it gets the pulses) -> ``relay`` (the publisher), and back.

* **Takeover** (:meth:`Role.should_promote`): a successor at position ``p``
  of ``r`` publishes once nobody ahead of it has been heard for
  ``P + (p - 1) * G`` seconds; a member beyond the successors once nobody
  ahead of it in the whole succession order (``r``, then every other
  eligible member by rank) has been heard for ``Q + (p - len(r)) * G``.
  Silence is counted from the worker's own (re)subscription at the
  earliest: its own outage is not the relays' silence.
* **Bootstrap**: a worker that has heard no relay message ``B + U[0, J)``
  after it subscribed promotes itself.
* **Terms**: each promotion takes the highest term known + 1.  A relay that
  hears another publisher of a higher term, or of the same term and a
  better rank, steps down; one that hears the same term from a worse-ranked
  publisher stays and moves to a new term (members then follow one stream,
  the one of the higher term).
* **Which publisher a member follows** (:meth:`Role.current`): messages of
  an older term, and messages of the same term from another publisher that
  ranks worse than the one it follows, are stale (that publisher is about
  to step down).
"""
import random

from .relays import rank, should_publish, succession

__all__ = ('Role', 'MEMBER', 'SUCCESSOR', 'RELAY', 'STEP_DOWN', 'NEW_TERM', 'key')

MEMBER, SUCCESSOR, RELAY = 'member', 'successor', 'relay'
#: what :meth:`Role.heard` asks a relay to do
STEP_DOWN, NEW_TERM = 'step_down', 'new_term'
#: publishers whose last message time is remembered
_HEARD_MAX = 64


def key(hostname):
    """Relay order of *hostname* (lower first): its rank, then its name."""
    return rank(hostname), hostname


class Role:
    """Where this worker stands in the succession, and when it moves."""

    def __init__(self, me, eligible, timing, rng=random.random):
        self.me = me
        self.eligible = eligible
        self.timing = timing
        self._rng = rng
        self.role = MEMBER
        #: the highest term known (ours while we relay)
        self.term = 0
        #: the publisher followed (its last current message) and its term
        self.publisher = None
        #: the relay list ``r`` of the last current relay message
        self.relays = ()
        #: publisher -> monotonic time of its last current message
        self.last_heard = {}
        self.heard_any = False
        #: when we could first have heard the relays (subscription)
        self.since = None
        self.bootstrap_at = None
        self.counts = {'takeovers': 0, 'bootstraps': 0, 'step_downs': 0,
                       'new_terms': 0}

    # -- what we hear -------------------------------------------------------------

    def subscribed(self, now):
        """Our digest subscription is (again) in place at *now*."""
        self.since = now
        if self.bootstrap_at is None:
            t = self.timing
            self.bootstrap_at = now + t.bootstrap + self._rng() * t.bootstrap_jitter

    def current(self, sender, term):
        """True if a relay message of *term* from *sender* is from the
        stream to follow (see the module docstring); a relay's own echo is."""
        if term < self.term:
            return False
        if term > self.term or self.publisher is None or sender == self.publisher:
            return True
        return key(sender) < key(self.publisher)

    def heard(self, sender, term, now, relays=None):
        """A relay message (digest, pulse or snapshot) of *term* from
        *sender*, listing *relays*.

        A member follows it if it is :meth:`current`.  Returns
        :data:`STEP_DOWN` or :data:`NEW_TERM` for a relay that must act, else
        None."""
        if sender == self.me:
            return None
        if self.role == RELAY:
            if term > self.term or (term == self.term and key(sender) < key(self.me)):
                return STEP_DOWN
            if term == self.term:
                return NEW_TERM
            return None  # an older publisher: it steps down once it hears us
        if not self.current(sender, term):
            return None
        self.heard_any = True
        self.term = term
        self.publisher = sender
        if relays is not None:
            self.relays = tuple(relays)
        heard = self.last_heard
        heard.pop(sender, None)
        heard[sender] = now
        if len(heard) > _HEARD_MAX:
            del heard[next(iter(heard))]
        return None

    def last_heard_from(self, hostname):
        return self.last_heard.get(hostname)

    # -- the role -------------------------------------------------------------------

    def member_role(self, relays):
        """``successor`` if *relays* lists us after the publisher, else
        ``member`` (for a worker that does not relay)."""
        return SUCCESSOR if self.me in tuple(relays)[1:] else MEMBER

    def settle(self):
        """Update the role of a non-relay from :attr:`relays`; True if it
        changed."""
        if self.role == RELAY:
            return False
        role = self.member_role(self.relays)
        changed, self.role = role != self.role, role
        return changed

    def should_promote(self, now, candidates):
        """``'bootstrap'``, ``'takeover'`` or None.  *candidates*: a callable
        returning the eligible hostnames of the view (called only once the
        whole succession order is needed)."""
        if self.role == RELAY or not self.eligible or self.since is None:
            return None
        t = self.timing
        if not self.heard_any:
            return 'bootstrap' if now >= self.bootstrap_at else None
        relays = self.relays
        if self.me in relays[:1]:
            return 'takeover'  # listed as publisher (a restart): publish again
        if self.me in relays[1:]:
            if should_publish(self.me, relays, self.last_heard, now, t.pulse_timeout,
                              t.stagger, self.since, first=1):
                return 'takeover'
            return None
        latest = max(self.last_heard.values(), default=self.since)
        if now - max(latest, self.since) < t.digest_timeout:
            return None  # the cheap test first: the order is O(N log N)
        order = succession(relays, candidates())
        if should_publish(self.me, order, self.last_heard, now, t.digest_timeout,
                          t.stagger, self.since, first=max(1, len(relays))):
            return 'takeover'
        return None

    def promote(self, reason):
        """We publish now: returns our term."""
        self.role = RELAY
        self.heard_any = True
        self.term += 1
        self.publisher = self.me
        self.counts['bootstraps' if reason == 'bootstrap' else 'takeovers'] += 1
        return self.term

    def new_term(self):
        """Same term as a worse-ranked publisher: move past it."""
        self.term += 1
        self.counts['new_terms'] += 1
        return self.term

    def step_down(self, now):
        """Another publisher wins: back to member (the caller then lets
        :meth:`heard` take the winner's message)."""
        self.role = MEMBER
        self.publisher = None
        self.relays = ()
        self.counts['step_downs'] += 1
        self.since = now  # count the new publisher's silence from now
