"""The digest stream's two ends (gossip_fast/digest/view.py): a relay's
ChangeLog and members' MemberView, through the real codec."""
import random

from gossip_fast.digest.codec import Member, PeerFields, decode, encode
from gossip_fast.digest.view import ChangeLog, MemberView

RELAYS = ('relay@r', 's1@a', 's2@b')


def m(i, pid=None, inc=0):
    return Member(f'w{i}@node{i % 5}', 1000 + i if pid is None else pid, 2.0, 3, inc)


def wire(msg):
    """Through encode/decode, as it travels."""
    back, reason = decode(encode(msg))
    assert reason is None, reason
    return back


def names(members):
    return sorted(x.hostname for x in members)


def test_first_digest_and_snapshot_bring_a_member_in_sync():
    log = ChangeLog('relay@r', 1, interval=2.0)
    for i in range(5):
        log.joined(m(i))
    assert log.due(0.0)
    d = wire(log.build(0.0, 10, RELAYS))
    assert (d.term, d.seq, d.base_term, d.base) == (1, 1, 1, 0)
    view = MemberView(me='w3@node3')
    got = view.apply_digest(d)
    assert names(got.joined) == ['w0@node0', 'w1@node1', 'w2@node2', 'w4@node4']  # not me
    assert not got.snapshot_needed and view.synced
    assert view.position == (1, 1) and view.relays == RELAYS and view.publisher == 'relay@r'


def test_changes_are_coalesced_and_timed():
    log = ChangeLog('relay@r', 1, interval=2.0, keepalive=10.0)
    log.joined(m(1))
    log.build(0.0, 1, RELAYS)
    log.came_back(1, 1)
    assert not log.due(1.0)           # nothing pending, no keepalive yet
    log.lost('w1@node1')
    assert not log.due(1.0)           # pending, but less than D since the last
    assert log.due(2.0)
    log.joined(m(1, pid=5))           # lost and back within one D: its final state
    d = log.build(2.0, 2, RELAYS)
    assert d.joined == (m(1, pid=5),) and d.lost == () and d.left == ()
    log.came_back(1, 2)
    assert not log.due(11.9)
    assert log.due(12.0)              # keepalive
    keep = log.build(12.0, 3, RELAYS)
    assert keep.joined == keep.left == keep.lost == ()
    assert (keep.base_term, keep.base) == (1, 2)


def test_a_digest_that_never_came_back_is_included_in_the_next():
    log = ChangeLog('relay@r', 1)
    log.joined(m(1))
    d1 = log.build(0.0, 1, RELAYS)     # lost in a broker outage: never comes back
    log.joined(m(2))
    log.left('w1@node1')
    d2 = log.build(2.0, 2, RELAYS)
    assert (d2.base_term, d2.base) == (1, 0)  # cumulative from the last echoed
    assert d2.joined == (m(2),) and d2.left == ('w1@node1',)
    view = MemberView()
    got = view.apply_digest(wire(d2))  # a member that never saw d1
    assert not got.snapshot_needed and names(view.members.values()) == ['w2@node2']
    # one that did see d1 applies d2 as well (final states: idempotent)
    other = MemberView()
    other.apply_digest(wire(d1))
    got = other.apply_digest(wire(d2))
    assert not got.snapshot_needed and names(got.left) == ['w1@node1']
    assert other.members == view.members


def test_gap_and_mismatch_ask_for_a_snapshot_which_reconciles():
    log = ChangeLog('relay@r', 1)
    for i in range(4):
        log.joined(m(i))
    view = MemberView()
    view.apply_digest(wire(log.build(0.0, 1, RELAYS)))
    log.came_back(1, 1)
    log.lost('w0@node0')
    log.build(2.0, 2, RELAYS)          # the member misses this one
    log.came_back(1, 2)
    log.joined(m(9))
    got = view.apply_digest(wire(log.build(4.0, 3, RELAYS)))
    assert got.snapshot_needed         # a gap: base (1, 2) > its position (1, 1)
    assert 'w0@node0' in view.members  # what it missed
    fields = {'w9@node4': PeerFields(3, 42, (0.5, 0.25, 0.125), 'py-celery', '5.7.0', 'Linux')}
    snap = wire(log.snapshot(4.1, 4, RELAYS, fields, request='q1'))
    got = view.apply_snapshot(snap)
    assert names(got.lost) == ['w0@node0'] and got.joined == ()
    assert not got.snapshot_needed and view.synced
    assert view.fields['w9@node4'].processed == 42
    assert view.matches(log.hash.count, log.hash.value)


def test_restart_fires_join_again_but_a_repeat_does_not():
    view = MemberView()
    log = ChangeLog('relay@r', 1)
    log.joined(m(1))
    d = wire(log.build(0.0, 1, RELAYS))
    assert len(view.apply_digest(d).joined) == 1
    assert view.apply_digest(d).stale               # the same digest again
    log.came_back(1, 1)
    log.joined(m(1, inc=1234))                      # worker-online again, same pid
    assert len(view.apply_digest(wire(log.build(2.0, 2, RELAYS))).joined) == 1
    log.came_back(1, 2)
    log.joined(m(1, pid=77, inc=1234))              # a new process
    assert len(view.apply_digest(wire(log.build(4.0, 3, RELAYS))).joined) == 1


def test_takeover_continues_the_stream_without_snapshots():
    old = ChangeLog('relay@r', 1)
    for i in range(6):
        old.joined(m(i))
    members = [MemberView(me=f'w{i}@node{i % 5}') for i in range(6)]
    first = wire(old.build(0.0, 1, RELAYS))
    for view in members:
        view.apply_digest(first)
    # the relay dies; successor s1 takes over from its member view
    successor = members[1]
    new = ChangeLog('s1@a', 2, term=successor.term + 1,
                    members=successor.members.values(), base=successor.position)
    new.lost('w5@node0')               # found dead after the takeover's grace
    d = wire(new.build(5.0, 20, ('s1@a', 's2@b', 's3@c')))
    assert (d.term, d.seq, d.base_term, d.base) == (2, 1, 1, 1)
    for view in members:
        got = view.apply_digest(d)
        assert not got.snapshot_needed and view.position == (2, 1)
        assert view.relays[0] == 's1@a'
        if view.me != 'w5@node0':
            assert names(got.lost) == ['w5@node0']
    # the old relay comes back with an outdated view and publishes once more
    # (before it hears term 2 and steps down): ignored
    old.came_back(1, 1)
    old.joined(m(7))
    late = wire(old.build(6.0, 3, RELAYS))
    before = dict(members[0].members)
    got = members[0].apply_digest(late)
    assert got.stale and members[0].position == (2, 1) and members[0].members == before


def test_old_snapshot_is_ignored_unless_asked_for():
    log = ChangeLog('relay@r', 1)
    log.joined(m(1))
    snap = wire(log.snapshot(0.0, 1, RELAYS))
    view = MemberView()
    view.apply_digest(wire(log.build(0.0, 1, RELAYS)))
    log.came_back(1, 1)
    log.joined(m(2))
    view.apply_digest(wire(log.build(2.0, 2, RELAYS)))
    assert view.apply_snapshot(snap, needed=False).stale
    assert 'w2@node2' in view.members


def test_random_streams_converge():
    """A relay's random changes, digests dropped, duplicated and delivered
    late: with snapshots when asked for, every member ends equal to the
    relay's view."""
    rng = random.Random(5)
    log = ChangeLog('relay@r', 1)
    alive = {}
    views = [MemberView(me=f'w{i}@node{i % 5}') for i in range(8)]
    reliable = MemberView()
    held = []
    now = 0.0
    for step in range(400):
        now += 1.0
        for _ in range(rng.randint(0, 3)):
            i = rng.randrange(30)
            host = m(i).hostname
            if host in alive and rng.random() < 0.5:
                (log.lost if rng.random() < 0.5 else log.left)(host)
                alive.pop(host)
            else:
                alive[host] = m(i, pid=rng.randrange(1, 9), inc=rng.randrange(3))
                log.joined(alive[host])
        if not log.due(now):
            continue
        body = encode(log.build(now, step, RELAYS))
        if rng.random() < 0.9:
            log.came_back(1, log.seq)
        # a member that gets every digest, in order, never needs a snapshot
        got = reliable.apply_digest(decode(body)[0])
        assert not got.snapshot_needed and reliable.members == log.view
        for view in views:
            r = rng.random()
            if r < 0.1:
                continue                  # lost
            if r < 0.2:
                held.append((view, body))  # late
                continue
            got = view.apply_digest(decode(body)[0])
            if not got.snapshot_needed:   # in step: equal to the relay's view
                assert view.members == log.view
            if rng.random() < 0.3 and held:
                late_view, late = held.pop(0)
                late_view.apply_digest(decode(late)[0])
            if got.snapshot_needed and rng.random() < 0.5:
                view.apply_snapshot(decode(encode(log.snapshot(now, step, RELAYS)))[0])
    final = decode(encode(log.snapshot(now, 999, RELAYS)))[0]
    for view in views:
        view.apply_snapshot(final)
        assert view.members == log.view
        assert view.matches(log.hash.count, log.hash.value)
    assert set(log.view) == set(alive)
