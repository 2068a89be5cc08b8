"""Relay selection and naming of digest mode (gossip_fast/digest/relays.py, names.py)."""
import random

import pytest

from gossip_fast.digest import names, relays
from gossip_fast.digest.codec import FLAG_DIGEST, FLAG_ELIGIBLE, Member
from gossip_fast.digest.names import DigestNames, snapshot_suffix
from gossip_fast.digest.relays import (
    choose_relays,
    eligible,
    rank,
    ranked,
    should_publish,
    succession,
    takeover_after,
)

BOTH = FLAG_DIGEST | FLAG_ELIGIBLE


def hosts(n):
    return [f'w{i}@node{i % 7}' for i in range(n)]


def test_rank_is_stable_and_spread():
    assert rank('w1@x') == rank('w1@x')
    values = {rank(h) for h in hosts(1000)}
    assert len(values) == 1000
    assert all(0 <= v < 2 ** 64 for v in values)


def test_ranked_is_a_total_order_independent_of_input_order():
    names_ = hosts(100)
    shuffled = names_[:]
    random.Random(1).shuffle(shuffled)
    assert ranked(names_) == ranked(shuffled) == ranked(set(names_) | {names_[0]})


def test_eligible_needs_both_flags():
    members = {'a@x': BOTH, 'b@x': FLAG_DIGEST, 'c@x': 0, 'd@x': FLAG_ELIGIBLE}
    assert eligible(members) == {'a@x'}
    assert eligible([Member('a@x', 1, 2.0, BOTH), Member('b@x', 2, 2.0, 0)]) == {'a@x'}


def test_choose_relays_fills_by_rank():
    candidates = [f'w{i}@node{i}' for i in range(20)]  # one per machine
    assert choose_relays(candidates, 2) == tuple(ranked(candidates)[:2])
    assert choose_relays(candidates[:1], 3) == (candidates[0],)
    assert choose_relays([], 2) == ()


def test_choose_relays_is_sticky():
    candidates = hosts(20)
    best = ranked(candidates)
    current = (best[5], best[9])
    # current relays keep their place even though better-ranked hosts exist
    assert choose_relays(candidates, 2, current) == current
    # a dead relay is replaced by the best-ranked other candidate
    alive = set(candidates) - {best[5]}
    assert choose_relays(alive, 2, current) == (best[9], best[0])
    # a newcomer with the best rank of all does not displace anyone
    newcomer = min((f'new{i}@x' for i in range(200)), key=rank)
    assert choose_relays(set(candidates) | {newcomer}, 2, current) == current
    # k shrinks: the first in order stay
    assert choose_relays(candidates, 1, current) == (best[5],)


def test_choose_relays_spreads_over_machines():
    candidates = [f'w{i}@a' for i in range(10)] + ['x@b', 'y@b', 'z@c']
    chosen = choose_relays(candidates, 3)
    assert {relays.node_of(h) for h in chosen} == {'a', 'b', 'c'}
    # the best-ranked of each machine, in rank order
    best = {}
    for h in ranked(candidates):
        best.setdefault(relays.node_of(h), h)
    assert chosen == tuple(ranked(best.values()))
    # more relays than machines: the rest by rank
    five = choose_relays(candidates, 5)
    assert five[:3] == chosen and len(set(five)) == 5
    # sticky relays keep their place even if on one machine
    assert choose_relays(candidates, 2, ('w1@a', 'w2@a')) == ('w1@a', 'w2@a')
    assert choose_relays(candidates, 3, ('w1@a',))[1:] == tuple(
        h for h in ranked(candidates) if relays.node_of(h) != 'a'
        and h == best[relays.node_of(h)])[:2]
    assert relays.node_of('plain') == 'plain'


def test_succession_puts_relays_first():
    candidates = hosts(10)
    order = succession(('w3@node3', 'w7@node0'), candidates)
    assert order[:2] == ('w3@node3', 'w7@node0')
    assert set(order) == set(candidates) and len(order) == 10
    assert list(order[2:]) == ranked(set(candidates) - {'w3@node3', 'w7@node0'})


def test_takeover_after():
    assert takeover_after(0, 2.5, 1.5) is None
    assert takeover_after(1, 2.5, 1.5) == 2.5
    assert takeover_after(3, 2.5, 1.5) == 5.5


def test_should_publish_positions():
    order = ('p@x', 's@x', 'm1@x', 'm2@x')
    fail, stagger = 2.5, 1.5
    heard = {'p@x': 100.0}
    since = 0.0
    assert should_publish('p@x', order, heard, 100.1, fail, stagger, since)
    assert not should_publish('zz@x', order, heard, 999.0, fail, stagger, since)
    # the standby waits fail_after of silence from the primary
    assert not should_publish('s@x', order, heard, 102.4, fail, stagger, since)
    assert should_publish('s@x', order, heard, 102.5, fail, stagger, since)
    # the next one waits one stagger longer
    assert not should_publish('m1@x', order, heard, 103.9, fail, stagger, since)
    assert should_publish('m1@x', order, heard, 104.0, fail, stagger, since)
    # ... unless it heard the standby take over in between
    heard['s@x'] = 102.6
    assert not should_publish('m1@x', order, heard, 104.0, fail, stagger, since)
    assert not should_publish('m2@x', order, heard, 106.0, fail, stagger, since)


def test_members_beyond_the_successors_wait_longer():
    order = ('p@x', 's1@x', 's2@x', 's3@x', 'm4@x', 'm5@x')
    assert takeover_after(4, 25.0, 1.5, first=4) == 25.0
    assert takeover_after(5, 25.0, 1.5, first=4) == 26.5
    heard = {'p@x': 0.0}
    assert not should_publish('m4@x', order, heard, 24.9, 25.0, 1.5, 0.0, first=4)
    assert should_publish('m4@x', order, heard, 25.0, 25.0, 1.5, 0.0, first=4)
    assert not should_publish('m5@x', order, heard, 26.4, 25.0, 1.5, 0.0, first=4)
    # a successor that took over is heard: the members stay quiet
    heard['s2@x'] = 5.0
    assert not should_publish('m4@x', order, heard, 25.0, 25.0, 1.5, 0.0, first=4)


def test_own_outage_is_not_the_relays_silence():
    order = ('p@x', 's@x')
    # last heard long ago, but we reconnected only 1 s ago: wait
    assert not should_publish('s@x', order, {'p@x': 10.0}, 101.0, 2.5, 1.5, since=100.0)
    assert should_publish('s@x', order, {'p@x': 10.0}, 102.5, 2.5, 1.5, since=100.0)


def test_takeover_chain_is_one_at_a_time():
    """Simulated members with the same view: after the two relays die, the
    first in line takes over, the others hear it and stay quiet."""
    order = tuple(['r0@x', 'r1@x'] + [f'm{i}@x' for i in range(50)])
    fail, stagger, tick, transit = 2.5, 1.5, 1.0, 0.1
    rng = random.Random(3)
    phase = {h: rng.uniform(0, tick) for h in order}   # each worker's own tick
    heard = {h: {'r0@x': 0.0} for h in order}            # r0 last heard at t=0
    publishers = []
    t = 0.0
    while t < 20.0:
        t = round(t + 0.01, 2)
        for h in order[2:]:
            due = (t - phase[h]) % tick < 0.01          # this worker's tick
            if h in publishers:
                if due:                                 # a digest every tick
                    for other in order:
                        heard[other][h] = t + transit
                continue
            if due and should_publish(h, order, heard[h], t, fail, stagger, 0.0):
                publishers.append(h)
                for other in order:                     # its first digest, at once
                    heard[other][h] = t + transit
    assert publishers == ['m0@x']


# -- names ---------------------------------------------------------------------------------

def test_snapshot_key_is_safe_for_any_hostname():
    for hostname in ('w@x', 'a*b#c@x', 'x' * 255, 'ünï@x'):
        key = DigestNames.snapshot_key(hostname)
        assert key.startswith('snapshot.') and len(key) == 25
        assert all(c in '0123456789abcdef' for c in key[9:])
    assert snapshot_suffix('a@x') != snapshot_suffix('b@x')


def test_redis_names_follow_kombu():
    n = DigestNames()
    assert n.exchange == 'celeryev.digest'
    assert n.redis_channel('celeryev', 'worker.heartbeat') == '/0.celeryev/worker.heartbeat'
    assert n.redis_pattern('celeryev', 'worker.#') == '/0.celeryev/worker.*'
    assert n.redis_channel(n.exchange, 'digest') == '/0.celeryev.digest/digest'
    p = DigestNames('myev', db=3, global_keyprefix='tenant1:')
    assert p.redis_channel('myev', 'worker.elect') == 'tenant1:/3.myev/worker.elect'
    assert p.exchange == 'myev.digest'
    assert DigestNames(fanout_prefix=False).redis_channel('e', 'k') == 'e/k'
    assert DigestNames(db=2, fanout_prefix='/{db}|').redis_channel('e', 'k') == '/2|e/k'


def test_digest_channels_are_invisible_to_monitors_and_stock_workers():
    """Flower / celery events PSUBSCRIBE /{db}.celeryev/* and stock workers
    /{db}.celeryev/worker.*: neither pattern may match a digest channel."""
    from fnmatch import fnmatchcase  # Redis glob semantics for * and literal text
    n = DigestNames()
    monitor = n.redis_pattern('celeryev', '#')
    worker = n.redis_pattern('celeryev', 'worker.#')
    for key in ('digest', 'announce', n.snapshot_key('w@x')):
        channel = n.redis_channel(n.exchange, key)
        assert not fnmatchcase(channel, monitor) and not fnmatchcase(channel, worker)
    # while a member's exact channels are the ones kombu publishes elections to
    patterns, channels = n.redis_subscriptions('member', 'w@x')
    assert patterns == []
    assert '/0.celeryev/worker.elect' in channels and '/0.celeryev/worker.elect.ack' in channels
    assert all(not fnmatchcase('/0.celeryev/worker.heartbeat', c) for c in channels)


def test_subscriptions_by_role():
    n = DigestNames()
    patterns, channels = n.redis_subscriptions('relay', 'r@x')
    assert patterns == ['/0.celeryev/worker.*']
    assert set(channels) == {'/0.celeryev.digest/digest', '/0.celeryev.digest/announce',
                             '/0.celeryev.digest/pulse',
                             '/0.celeryev.digest/' + n.snapshot_key('r@x')}
    _, successor = n.redis_subscriptions('successor', 'w@x')
    _, member = n.redis_subscriptions('member', 'w@x')
    assert set(successor) - set(member) == {'/0.celeryev.digest/pulse'}
    assert ('celeryev.digest', 'pulse') in n.amqp_bindings('successor', 'w@x')
    assert ('celeryev.digest', 'pulse') not in n.amqp_bindings('member', 'w@x')
    member = n.amqp_bindings('member', 'w@x')
    assert ('celeryev', 'worker.#') not in member
    assert ('celeryev', 'worker.elect') in member and ('celeryev', 'worker.elect.ack') in member
    assert ('celeryev.digest', 'digest') in member
    assert ('celeryev.digest', n.snapshot_key('w@x')) in member
    relay = n.amqp_bindings('relay', 'r@x')
    assert ('celeryev', 'worker.#') in relay and ('celeryev.digest', 'announce') in relay
    with pytest.raises(ValueError):
        n.amqp_bindings('monitor', 'x')


def test_unsupported_configurations():
    assert DigestNames().unsupported_reason('redis') is None
    assert DigestNames().unsupported_reason('amqp') is None
    assert 'fanout_patterns' in DigestNames(fanout_patterns=False).unsupported_reason('redis')
    assert DigestNames().unsupported_reason('sqs')


def test_from_kombu_channel():
    from kombu import Connection
    conn = Connection('redis://127.0.0.1:1/5', transport_options={'global_keyprefix': 'pfx:'})
    channel_cls = conn.transport.Channel

    class FakePool:
        connection_kwargs = {'db': 5}

    fake = channel_cls.__new__(channel_cls)
    fake.keyprefix_fanout = '/5.'
    fake.fanout_patterns = True
    fake.global_keyprefix = 'pfx:'
    fake._pool = FakePool()
    n = DigestNames.from_kombu_channel(fake)
    assert n.redis_channel(n.exchange, 'digest') == 'pfx:/5.celeryev.digest/digest'
    assert names.ELECT_KEYS == ('worker.elect', 'worker.elect.ack')
    assert relays.rank  # the package exports
