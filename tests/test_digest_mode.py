"""Digest mode in the Gossip step (gossip_fast/digest/mode.py), in process,
against both cores: the setting's default, the fallbacks, a member applying
the relay's messages, a relay publishing what its (core) table sees, the
takeover, the step-down, elections on the view, and bad input.  No broker:
what would be published is captured, and fed back where the broker would
deliver it.  (tests/cluster/test_digest_cluster.py runs real workers.)"""
import time
import types

import pytest
from kombu.asynchronous import Hub
from kombu.asynchronous.timer import Timer

from gossip_fast.digest.codec import (
    CONTENT_TYPE,
    Announce,
    Member,
    PeerFields,
    Pulse,
    decode,
    encode,
)
from gossip_fast.digest.names import DigestNames, snapshot_suffix
from gossip_fast.digest.readers import Dispatch
from gossip_fast.digest.view import ChangeLog
from gossip_fast.simulate import heartbeat_body, make_message

from .conftest import make_gossip

ME = 'me@x'
RELAY = 'relay@r'


class FakeProducer:
    def __init__(self):
        self.sent = []

    def publish(self, body, routing_key, **kwargs):
        self.sent.append((routing_key, body, kwargs))

    def take(self, prefix=''):
        out = [(k, decode(b)[0]) for k, b, _ in self.sent if k.startswith(prefix)]
        self.sent = [s for s in self.sent if not s[0].startswith(prefix)]
        return out


class Events(list):
    def __init__(self, gossip):
        super().__init__()
        for kind in ('node_join', 'node_leave', 'node_lost'):
            getattr(gossip.on, kind).add(
                lambda worker, kind=kind: self.append((kind, worker.hostname)))


def digest_step(GossipClass, app, hostname=ME, **conf):
    app.conf.gossip_fast_digest = True
    app.conf.update(conf)
    gossip = make_gossip(GossipClass, app, hostname=hostname, hub=Hub(Timer()))
    mode = gossip._digest
    assert mode is not None and mode.active
    # what get_consumers() sets up, without a broker
    mode.names, mode.transport = DigestNames(), 'redis'
    mode._producer = FakeProducer()
    mode._start_stream = lambda hold: None
    mode._stop_stream = lambda: None
    mode._resubscribe = lambda: None
    mode.role.subscribed(time.monotonic())
    return gossip, mode


def deliver(mode, msg, key='digest'):
    mode.on_message(key, {'hostname': msg.hostname}, encode(msg), CONTENT_TYPE)


def member(host, pid, flags=3, inc=0):
    return Member(host, pid, 2.0, flags, inc)


def relay_log(*members):
    log = ChangeLog(RELAY, 7, interval=2.0)
    for m in members:
        log.joined(m)
    return log


# -- the setting and the fallbacks ---------------------------------------------------------

def test_off_by_default_nothing_changes(core, GossipClass, app):
    gossip = make_gossip(GossipClass, app, hub=Hub(Timer()))
    assert gossip._digest is None
    assert type(gossip.state) is core.State
    assert gossip.state.on_node_join is not None
    assert 'digest' not in gossip.stats()


@pytest.mark.parametrize('why, setup', [
    ('no event loop', lambda app: None),
    ('classic', lambda app: app.conf.update(gossip_fast_receive='classic')),
])
def test_without_a_hub_or_the_fast_reader_it_is_normal_gossip(core, GossipClass, app,
                                                              why, setup):
    app.conf.gossip_fast_digest = True
    setup(app)
    hub = None if why == 'no event loop' else Hub(Timer())
    gossip = make_gossip(GossipClass, app, hub=hub)
    assert gossip._digest is None
    assert type(gossip.state) is core.State
    stats = gossip.stats()['digest']
    assert stats['active'] is False and why in stats['why'], stats
    from gossip_fast.cli import _summary
    assert 'digest mode off: ' in _summary(gossip.stats())


def test_a_broker_without_digest_support_falls_back_at_connect(core, GossipClass, app):
    gossip, mode = digest_step(GossipClass, app)
    transport = types.SimpleNamespace(driver_type='sqs')
    channel = types.SimpleNamespace(connection=types.SimpleNamespace(
        client=types.SimpleNamespace(transport=transport)))
    assert mode.get_consumers(channel) is None
    assert not mode.active and 'sqs' in mode.why
    assert type(gossip.state) is core.State
    assert gossip.stats()['digest']['active'] is False


def test_dispatch_routes_by_exchange():
    got = []
    receiver = types.SimpleNamespace(on_raw=lambda *a: got.append(('receiver', a)))
    dispatch = Dispatch(receiver, 'celeryev.digest', lambda *a: got.append(('digest', a)))
    dispatch.on_raw('digest', {}, b'x', CONTENT_TYPE, 'binary', 'celeryev.digest')
    dispatch.on_raw('worker.elect', {}, b'{}', 'application/json', 'utf-8', 'celeryev')
    assert [g[0] for g in got] == ['digest', 'receiver']


# -- a member -------------------------------------------------------------------------------------

def test_member_applies_digests_and_fires_callbacks(core, GossipClass, app):
    gossip, mode = digest_step(GossipClass, app)
    events = Events(gossip)
    log = relay_log(member(RELAY, 7), member('a@x', 11), member(ME, 1000))
    deliver(mode, log.build(time.time(), 500, (RELAY,)))
    assert sorted(events) == [('node_join', 'a@x'), ('node_join', RELAY)]
    assert sorted(gossip.state.workers) == ['a@x', RELAY]
    assert gossip.state.alive_count() == 2 and gossip.state.workers['a@x'].alive
    assert gossip.state.workers['a@x'].pid == 11
    assert gossip.clock.value > 500
    log.came_back(1, 1)
    log.lost('a@x')
    d = log.build(time.time(), 600, (RELAY,))
    deliver(mode, d)
    deliver(mode, d)                                  # a repeat: stale
    assert events[-1] == ('node_lost', 'a@x')
    stats = gossip.stats()
    assert stats['alive_workers'] == 1 and stats['losses'] == 1
    digest = stats['digest']
    assert (digest['role'], digest['publisher'], digest['synced']) == ('member', RELAY, True)
    assert digest['digests_applied'] == 2 and digest['digests_stale'] == 1
    assert digest['term'] == 1 and digest['seq'] == 2 and digest['view_size'] == 2
    from gossip_fast.cli import _summary
    assert '(member, term 1); 1 of 1 peers alive' in _summary(stats)


def test_bad_digest_input_is_counted_and_logged_never_raised(core, GossipClass, app):
    gossip, mode = digest_step(GossipClass, app)
    mode.on_message('digest', {'hostname': 'evil@x'}, b'{"v":1', CONTENT_TYPE)
    mode.on_message('digest', {'hostname': 'evil@x'}, b'{}', 'application/json')
    mode.on_message('digest', None, b'x\x00\x01', CONTENT_TYPE)
    good = relay_log(member(RELAY, 7)).build(time.time(), 1, (RELAY,))
    mode.on_message('digest', {'hostname': 'other@x'}, encode(good), CONTENT_TYPE)
    forged = good._replace(relays=('someone@else',))
    mode.on_message('digest', {'hostname': RELAY}, encode(forged), CONTENT_TYPE)
    stats = gossip.stats()
    assert stats['dropped'] == {'bad_digest': 5}
    assert stats['digest']['bad_digests'] == 5
    assert stats['digest']['bad_digest_reasons'] == {
        'not_json': 1, 'content_type': 1, 'bad_zlib': 1, 'sender': 1, 'publisher': 1}
    assert gossip.state.workers == {}


def test_a_gap_asks_for_a_snapshot_which_reconciles(core, GossipClass, app):
    gossip, mode = digest_step(GossipClass, app)
    events = Events(gossip)
    log = relay_log(member(RELAY, 7), member('a@x', 11), member('b@x', 12), member(ME, 1000))
    log.build(time.time(), 1, (RELAY,))             # this member misses it
    log.came_back(1, 1)
    log.lost('b@x')
    log.joined(member('c@x', 13))
    deliver(mode, log.build(time.time(), 2, (RELAY,)))
    assert mode._snapshot_tref is not None           # jittered request
    mode._snapshot_tref.cancel()
    mode._request_snapshot()
    [(key, announce)] = mode._producer.take('announce')
    assert announce.kind == 'a' and announce.request == mode._requested
    fields = {'a@x': PeerFields(1, 42, (0.5, 0.25, 0.0), 'py-celery', '5.7.0', 'Linux')}
    snap = log.snapshot(time.time(), 3, (RELAY,), fields, request=announce.request)
    deliver(mode, snap, key='snapshot.' + snapshot_suffix(ME))
    assert sorted(gossip.state.workers) == ['a@x', 'c@x', RELAY]
    assert ('node_join', 'c@x') in events and ('node_lost', 'b@x') not in events
    assert gossip.state.workers['a@x'].processed == 42
    assert mode.view.synced and mode._requested is None


def test_elections_count_the_view(core, GossipClass, app):
    gossip, mode = digest_step(GossipClass, app)
    log = relay_log(member(RELAY, 7), member('a@x', 11), member(ME, 1000))
    deliver(mode, log.build(time.time(), 1, (RELAY,)))
    won = []
    gossip.election_handlers['t'] = won.append
    for clock, host, pid in ((5, ME, 1000), (3, 'a@x', 11), (9, RELAY, 7)):
        gossip.on_elect({'id': 'e', 'clock': clock, 'hostname': host, 'pid': pid,
                         'topic': 't', 'action': host, 'cver': 1})
    gossip.consensus_replies['e'] = []
    for host in ('a@x', RELAY):
        gossip.on_elect_ack({'id': 'e', 'hostname': host})
    assert gossip.elections['decided'] == 1 and won == []   # a@x won (clock 3)


# -- the relay ----------------------------------------------------------------------------------

def heartbeat(gossip, host, pid, type_='worker-heartbeat', when=None):
    body = heartbeat_body(host, 1, when or time.time(), pid=pid, type_=type_)
    receiver = gossip._receiver
    receiver.on_message(receiver.fast_prepare,
                        make_message('redis', type_.replace('-', '.'), body, host))


def test_relay_publishes_what_its_table_sees(core, GossipClass, app):
    gossip, mode = digest_step(GossipClass, app)
    events = Events(gossip)
    mode._promote('bootstrap', time.monotonic())
    assert mode.role.role == 'relay' and gossip.stats()['digest']['bootstraps'] == 1
    producer = mode._producer
    [(_, first)] = producer.take('digest')
    assert [m.hostname for m in first.joined] == [ME] and first.relays == (ME,)
    assert producer.take('pulse')
    heartbeat(gossip, 'a@x', 11)
    heartbeat(gossip, 'b@x', 12, 'worker-online')
    assert set(mode.table.workers) == {'a@x', 'b@x'}
    mode.on_message('announce', {'hostname': 'a@x'}, encode(Announce(
        'a@x', 11, 40, time.time(), request='req1')), CONTENT_TYPE)
    mode.relay.log.last_published -= 10
    mode.tick()
    [(_, d)] = producer.take('digest')
    joined = {m.hostname: m for m in d.joined}
    # cumulative from the last digest that came back (none yet): us too
    assert set(joined) == {ME, 'a@x', 'b@x'} and joined['b@x'].inc > 0
    assert joined['a@x'].flags == 3 and joined['b@x'].flags == 0
    assert d.relays == (ME, 'a@x')                   # the only eligible peer
    [(key, snap)] = producer.take('snapshot.')
    assert key == 'snapshot.' + snapshot_suffix('a@x') and snap.request == 'req1'
    assert {m.hostname for m in snap.members} == {ME, 'a@x', 'b@x'}
    # our digest comes back from the broker: the view (and callbacks) follow it
    deliver(mode, d)
    assert sorted(events) == [('node_join', 'a@x'), ('node_join', 'b@x')]
    assert gossip.state.alive_count() == 2
    assert mode.relay.log.echoed == (d.term, d.seq)
    # they stop beating: the sweep (stock's rule: 2 x freq) loses them
    assert mode.relay.sweep(time.time() + 3.5) == []
    assert sorted(mode.relay.sweep(time.time() + 4.5)) == ['a@x', 'b@x']
    mode.relay.log.last_published -= 10
    mode.tick()
    [(_, d)] = producer.take('digest')
    assert set(d.lost) == {'a@x', 'b@x'}
    deliver(mode, d)
    assert ('node_lost', 'b@x') in events and gossip.state.alive_count() == 0


def test_relay_holds_the_sweep_while_its_stream_is_untrusted(core, GossipClass, app):
    gossip, mode = digest_step(GossipClass, app)
    mode._promote('bootstrap', time.monotonic())
    heartbeat(gossip, 'a@x', 11)
    reader = types.SimpleNamespace(reconnects=1, retry_at=None, caught_up_at=time.time(),
                                   backlog=lambda: False)
    mode._stream = types.SimpleNamespace(reader=reader)
    mode._stream_reconnects = 0
    mode._judge(time.time() + 4.5)          # it reconnected: 2F of grace
    assert 'a@x' in mode.table.workers
    reader.retry_at = 1.0                    # disconnected: no judgement
    mode._judge(time.time() + 60)
    assert 'a@x' in mode.table.workers
    reader.retry_at = None
    mode._judge(time.time() + 60)
    assert 'a@x' not in mode.table.workers


def test_takeover_seeds_the_table_and_continues_the_stream(core, GossipClass, app):
    gossip, mode = digest_step(GossipClass, app)
    events = Events(gossip)
    log = relay_log(member(RELAY, 7), member('a@x', 11), member(ME, 1000))
    relays = (RELAY, ME)
    deliver(mode, log.build(time.time(), 1, relays))
    assert mode.role.role == 'successor'
    for name in list(mode.role.last_heard):
        mode.role.last_heard[name] -= 10     # the relay went silent ...
    mode.role.since -= 10                    # ... 10 s ago, we listened
    mode.tick()
    assert mode.role.role == 'relay' and mode.role.term == 2
    assert set(mode.table.workers) == {'a@x', RELAY}
    assert mode.table.is_alive('a@x')
    [(_, d)] = mode._producer.take('digest')
    assert (d.term, d.seq, d.base_term, d.base) == (2, 1, 1, 1)
    assert d.relays[0] == ME
    deliver(mode, d)                         # back from the broker
    assert mode.view.matches(d.count, d.hash) and mode.view.position == (2, 1)
    # the silent relay was seeded as of its last message (10 s ago): lost
    # at once; the others have 2F from the takeover
    assert mode.relay.sweep(time.time() + 1.0) == [RELAY]
    assert 'a@x' in mode.table.workers
    assert ('node_join', 'a@x') in events and gossip.stats()['digest']['takeovers'] == 1


def test_a_relay_steps_down_for_a_higher_term(core, GossipClass, app):
    gossip, mode = digest_step(GossipClass, app)
    mode._promote('bootstrap', time.monotonic())
    heartbeat(gossip, 'a@x', 11)
    other = ChangeLog('other@y', 5, term=7)
    other.joined(member('other@y', 5))
    other.joined(member(ME, 1000))
    deliver(mode, other.build(time.time(), 9, ('other@y',)))
    assert mode.role.role == 'member' and mode.relay is None
    assert mode.table.workers == {}
    assert mode.role.publisher == 'other@y' and mode.view.position == (7, 1)
    stats = gossip.stats()['digest']
    assert stats['step_downs'] == 1 and stats['publisher'] == 'other@y'
    # a pulse of an older term from someone else: ignored
    pulse = Pulse('old@z', 3, 1, time.time(), 2, 5, 0, 0, ('old@z',), 2.0)
    deliver(mode, pulse, key='pulse')
    assert mode.role.publisher == 'other@y' and stats['stale_publisher'] == 0
    assert gossip.stats()['digest']['stale_publisher'] == 1


def test_the_tick_reads_what_waits_before_judging_silence(core, GossipClass, app):
    """After the event loop was held up (a long task in the solo pool), the
    relay's pulses wait unread: they count before a takeover is decided."""
    gossip, mode = digest_step(GossipClass, app)
    log = relay_log(member(RELAY, 7), member(ME, 1000))
    deliver(mode, log.build(time.time(), 1, (RELAY, ME)))
    assert mode.role.role == 'successor'
    for name in list(mode.role.last_heard):
        mode.role.last_heard[name] -= 10
    mode.role.since -= 10
    waiting = [Pulse(RELAY, 7, 2, time.time(), 1, 1, log.hash.count, log.hash.value,
                     (RELAY, ME), 2.0)]

    def drain():
        while waiting:
            deliver(mode, waiting.pop(), key='pulse')

    mode._digest_driver = types.SimpleNamespace(reader=types.SimpleNamespace(
        retry_at=None, reconnects=0, drain=drain))
    mode.tick()
    assert mode.role.role == 'successor' and mode.relay is None
    mode._digest_driver.reader.retry_at = 1.0     # disconnected: no judgement
    for name in list(mode.role.last_heard):
        mode.role.last_heard[name] -= 10
    mode.tick()
    assert mode.role.role == 'successor'
    mode._digest_driver.reader.retry_at = None
    mode.tick()
    assert mode.role.role == 'relay'              # silent for real: takeover
