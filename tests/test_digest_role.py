"""The role state machine of digest mode (gossip_fast/digest/role.py): pure,
on a simulated clock."""
from gossip_fast.digest.relays import ranked
from gossip_fast.digest.role import MEMBER, NEW_TERM, RELAY, STEP_DOWN, SUCCESSOR, Role, key
from gossip_fast.digest.settings import Timing

T = Timing()


def role(me, eligible=True, jitter=0.0):
    return Role(me, eligible, T, rng=lambda: jitter)


def test_bootstrap_after_the_start_up_wait_only_when_eligible():
    r = role('a@x', jitter=0.5)
    assert r.should_promote(0.0, set) is None       # not subscribed yet
    r.subscribed(10.0)
    wait = T.bootstrap + 0.5 * T.bootstrap_jitter
    assert r.should_promote(10.0 + wait - 0.01, set) is None
    assert r.should_promote(10.0 + wait, set) == 'bootstrap'
    assert r.promote('bootstrap') == 1 and r.role == RELAY
    assert r.counts['bootstraps'] == 1
    never = role('b@x', eligible=False)
    never.subscribed(0.0)
    assert never.should_promote(1000.0, set) is None


def test_hearing_a_relay_cancels_bootstrap_and_sets_the_role():
    r = role('s1@x')
    r.subscribed(0.0)
    r.heard('relay@r', 1, 1.0, ('relay@r', 's1@x', 's2@y'))
    assert r.should_promote(2.0, set) is None and r.heard_any   # no bootstrap
    assert r.settle() and r.role == SUCCESSOR
    r.heard('relay@r', 1, 2.0, ('relay@r', 's2@y'))
    assert r.settle() and r.role == MEMBER


def test_successors_take_over_one_after_the_other():
    relays = ('relay@r', 's1@x', 's2@y', 's3@z')
    roles = {h: role(h) for h in relays[1:]}
    for r in roles.values():
        r.subscribed(0.0)
        r.heard('relay@r', 1, 1.0, relays)
        r.settle()
    first, second = roles['s1@x'], roles['s2@y']
    assert first.should_promote(1.0 + T.pulse_timeout - 0.01, set) is None
    assert first.should_promote(1.0 + T.pulse_timeout, set) == 'takeover'
    # the second waits a stagger longer, and not at all once it hears the first
    assert second.should_promote(1.0 + T.pulse_timeout, set) is None
    assert second.should_promote(1.0 + T.pulse_timeout + T.stagger, set) == 'takeover'
    assert first.promote('takeover') == 2
    second.heard('s1@x', 2, 1.0 + T.pulse_timeout + 0.5, ('s1@x', 's2@y', 's3@z'))
    second.settle()
    assert second.should_promote(1.0 + T.pulse_timeout + T.stagger, set) is None


def test_own_outage_is_not_the_relays_silence():
    r = role('s1@x')
    r.subscribed(0.0)
    r.heard('relay@r', 1, 1.0, ('relay@r', 's1@x'))
    r.settle()
    r.subscribed(50.0)   # reconnected after an outage of ours
    assert r.should_promote(50.0 + T.pulse_timeout - 0.1, set) is None
    assert r.should_promote(50.0 + T.pulse_timeout, set) == 'takeover'


def test_members_beyond_the_successors_wait_for_the_digest_timeout():
    members = [f'm{i}@n{i}' for i in range(10)]
    relays = ('relay@r', 's1@x')
    order = ranked(members)
    first, later = role(order[0]), role(order[1])
    for r in (first, later):
        r.subscribed(0.0)
        r.heard('relay@r', 1, 1.0, relays)
    candidates = lambda: set(members) | set(relays)  # noqa: E731
    assert first.should_promote(1.0 + T.digest_timeout - 0.1, candidates) is None
    assert first.should_promote(1.0 + T.digest_timeout, candidates) == 'takeover'
    assert later.should_promote(1.0 + T.digest_timeout, candidates) is None
    assert later.should_promote(1.0 + T.digest_timeout + T.stagger, candidates) == 'takeover'


def test_a_relay_steps_down_for_a_higher_term_or_a_better_rank():
    a, b = sorted(['a@x', 'b@x', 'c@x', 'd@x'], key=key)[:2]   # a ranks before b
    relay = role(b)
    relay.subscribed(0.0)
    relay.promote('bootstrap')                       # term 1
    assert relay.heard(a, 1, 1.0) == STEP_DOWN       # same term, better rank
    assert relay.heard(a, 2, 1.0) == STEP_DOWN       # higher term
    assert relay.heard(b, 1, 1.0) is None            # our own echo
    other = role(a)
    other.promote('bootstrap')
    assert other.heard(b, 1, 1.0) == NEW_TERM        # same term, worse rank
    assert other.new_term() == 2
    assert other.heard(b, 1, 1.0) is None            # older: it will step down
    relay.step_down(2.0)
    assert relay.role == MEMBER and relay.since == 2.0
    assert relay.current(a, 2)
    relay.heard(a, 2, 2.0, (a,))
    assert relay.publisher == a and relay.term == 2


def test_members_follow_one_stream_per_term():
    a, b = sorted(['a@x', 'b@x', 'c@x', 'd@x'], key=key)[:2]
    m = role('m@x')
    m.heard(b, 3, 1.0, (b,))
    assert not m.current(a, 2)                       # an older term
    assert not m.current('zz@x', 3) or key('zz@x') < key(b)
    assert m.current(a, 3)                           # same term, better rank
    assert m.current(b, 3) and m.current('any@x', 4)
    m.heard('any@x', 4, 2.0, ('any@x',))
    assert m.publisher == 'any@x' and not m.current(b, 3)


def test_listed_as_publisher_but_not_relaying_publishes_again():
    r = role('a@x')
    r.subscribed(0.0)
    r.heard('b@x', 1, 0.5, ('b@x',))
    r.relays = ('a@x', 'b@x')   # e.g. a restart of ours, the view still names us
    assert r.should_promote(1.0, set) == 'takeover'
