"""Who relays: the selection rule, the succession order, takeover timing.

Every digest-mode worker can compute all of this from what it already has
(the relay list ``r`` of the last digest and the flags of the members in
its view), so no extra agreement round is needed:

* :func:`rank` -- a stable 64-bit hash of the hostname (blake2b, the same
  on every platform, run and implementation; Python's ``hash()`` is
  salted per process).  Lower rank = earlier in line.
* :func:`choose_relays` -- what the publisher announces in ``r``: itself
  and its successors.  The current ones that are still alive and eligible
  keep their place (sticky: a newcomer with a low rank does not displace a
  working relay, which would cost a handover); vacancies are filled by
  rank among the alive eligible members, preferring machines (the part of
  the hostname after ``@``) not in the list yet, so that one machine going
  down does not take the relay and its successors with it.
* :func:`succession` -- the takeover order: ``r`` first, then every other
  eligible member by rank.
* :func:`takeover_after` / :func:`should_publish` -- position ``p`` in
  the order publishes once nobody at positions ``< p`` has been heard for
  ``fail_after + (p - first) * stagger`` seconds (position 0 always
  publishes).  Successors (positions 1..S, they get the relay's pulses)
  use ``first=1`` and the pulse timeout; the other members (positions > S,
  they only get digests) ``first=S+1`` and the longer digest timeout.  The
  stagger is longer than a relay tick plus delivery, so the next in line
  is heard before the one after it gives up waiting: one takeover, not a
  storm.
"""
from hashlib import blake2b

from .codec import FLAG_DIGEST, FLAG_ELIGIBLE

__all__ = ('rank', 'ranked', 'eligible', 'node_of', 'choose_relays', 'succession',
           'takeover_after', 'should_publish')

_ELIGIBLE = FLAG_DIGEST | FLAG_ELIGIBLE


def rank(hostname):
    data = hostname.encode('utf-8', 'surrogatepass')
    return int.from_bytes(blake2b(data, digest_size=8, person=b'gf-rank1').digest(), 'big')


def _key(hostname):
    return rank(hostname), hostname


def ranked(hostnames):
    """*hostnames* in relay order (rank, then the name: a total order)."""
    return sorted(set(hostnames), key=_key)


def eligible(members):
    """Hostnames of *members* (``{hostname: flags}`` or ``Member``-likes
    with ``.hostname`` and ``.flags``) that may relay."""
    if hasattr(members, 'items'):
        pairs = members.items()
    else:
        pairs = ((m.hostname, m.flags) for m in members)
    return {h for h, flags in pairs if flags & _ELIGIBLE == _ELIGIBLE}


def node_of(hostname):
    """The machine part of a Celery hostname (``name@node``)."""
    return hostname.partition('@')[2] or hostname


def choose_relays(candidates, k, current=()):
    """The relay list to publish: ``current`` relays still in *candidates*
    (eligible and alive), in order, then the best-ranked other candidates
    (those on machines not in the list yet first), ``k`` at most."""
    candidates = set(candidates)
    chosen = [h for h in dict.fromkeys(current) if h in candidates][:k]
    if len(chosen) < k:
        nodes = {node_of(h) for h in chosen}
        rest = ranked(candidates - set(chosen))
        fresh = [h for h in rest if node_of(h) not in nodes]
        # one per machine first (in rank order), then the others by rank
        seen = set()
        first = []
        for h in fresh:
            node = node_of(h)
            if node not in seen:
                seen.add(node)
                first.append(h)
        picked = set(first)
        chosen += (first + [h for h in rest if h not in picked])[:k - len(chosen)]
    return tuple(chosen)


def succession(relays, candidates):
    """Takeover order: the relays as published, then the other candidates
    by rank."""
    relays = tuple(dict.fromkeys(relays))
    return relays + tuple(ranked(set(candidates) - set(relays)))


def takeover_after(position, fail_after, stagger, first=1):
    """Seconds of silence from everyone ahead after which *position*
    publishes (None for position 0: it always does)."""
    if position <= 0:
        return None
    return fail_after + max(0, position - first) * stagger


def should_publish(me, order, last_heard, now, fail_after, stagger, since, first=1):
    """True if *me* should publish digests now.

    *order*: the succession order; *last_heard*: ``{hostname: time}`` of
    the last digest received from each publisher; *since*: when this
    worker could first have heard them (its subscription start or last
    reconnect: its own outage is not the relays' silence).  A worker not
    in *order* never publishes.  *first*: the first position that
    *fail_after* applies to (see the module docstring).
    """
    try:
        position = order.index(me)
    except ValueError:
        return False
    wait = takeover_after(position, fail_after, stagger, first)
    if wait is None:
        return True
    heard = since
    for hostname in order[:position]:
        t = last_heard.get(hostname)
        if t is not None and t > heard:
            heard = t
    return now - heard >= wait
