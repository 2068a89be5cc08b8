"""CONTRACT.md, item by item: what a drop-in must keep (``Keep``) and the
stock bugs it must fix (``Fix``).  Every test runs on both implementations
(the ``core`` fixture), fed real kombu messages built as Celery sends them."""
import inspect
import logging
import time
from unittest.mock import patch

import pytest
from celery.worker.consumer.gossip import Gossip as StockGossip
from celery.worker.consumer.mingle import Mingle
from kombu import Connection

from gossip_fast import bootstep, elections
from gossip_fast.simulate import SimulatedConsumer

from . import wire
from .conftest import make_app

# -- Keep 1-3: construction ---------------------------------------------------


def test_class_attributes_match_stock(GossipClass):
    assert GossipClass.name == StockGossip.name == "celery.worker.consumer.gossip.Gossip"
    assert GossipClass.label == "Gossip"
    assert tuple(GossipClass.requires) == (Mingle,)
    assert GossipClass.compatible_transports == {"amqp", "redis"}
    assert (inspect.signature(GossipClass.__init__)
            == inspect.signature(StockGossip.__init__))


def test_every_stock_member_exists(gossip, app):
    stock = StockGossip(SimulatedConsumer(app))
    for name in set(dir(stock)) - {"__weakref__"}:
        assert hasattr(gossip, name), name


@pytest.mark.parametrize("enabled", [True, False])
def test_always_set_attributes(GossipClass, app, enabled):
    consumer = SimulatedConsumer(app, hostname="me@host", pid=77)
    g = GossipClass(consumer, without_gossip=not enabled, interval=3.0,
                    heartbeat_interval=None, unrelated_cli_option=1)
    assert consumer.gossip is g
    assert g.app is app and g.Receiver is app.events.Receiver
    assert g.hostname == "me@host" and g.full_hostname == "me@host.77"
    assert set(vars(g.on)) == {"node_join", "node_leave", "node_lost"}
    assert all(isinstance(handlers, set) for handlers in vars(g.on).values())
    assert g.timer is consumer.timer and g.interval == 3.0
    assert g.heartbeat_interval is None and g._tref is None
    assert g.consensus_requests["x"] == [] and g.consensus_replies == {}
    assert set(g.event_handlers) == {"worker.elect", "worker.elect.ack"}
    assert set(g.election_handlers) == {"task"}
    assert g.clock is app.clock
    assert g.enabled is enabled
    assert hasattr(g, "state") is enabled and hasattr(g, "update_state") is enabled


def test_disabled_on_incompatible_transport(GossipClass):
    from celery import Celery
    app = Celery(broker="memory://", set_as_current=False)
    assert not GossipClass(SimulatedConsumer(app)).enabled


def test_state_has_stock_interface(gossip):
    gossip.on_message(gossip._receiver.fast_prepare, wire.heartbeat("a@x"))
    worker = gossip.state.workers["a@x"]
    assert [w.hostname for w in gossip.state.alive_workers()] == ["a@x"]
    for attr in ("hostname", "pid", "freq", "heartbeats", "clock", "active", "processed",
                 "loadavg", "sw_ident", "sw_ver", "sw_sys", "alive", "heartbeat_expires",
                 "id", "utcoffset", "timestamp", "local_received", "type"):
        getattr(worker, attr)
    assert worker.id == "a@x.4242" and worker.sw_ident == "py-celery"
    assert repr(worker).startswith("<Worker: a@x (ONLINE clock:")


# -- Keep 4: start and get_consumers --------------------------------------------


def test_start_and_get_consumers(gossip):
    consumer = SimulatedConsumer(gossip.app)
    with Connection("memory://") as conn:
        consumer.connection = conn
        registered = []
        gossip.timer = type("T", (), {"call_repeatedly": lambda s, *a: registered.append(a)})()
        gossip.start(consumer)
        assert gossip.dispatcher is consumer.event_dispatcher
        assert registered == [(gossip.interval, gossip.periodic)]
        [kconsumer] = gossip.consumers
        [queue] = kconsumer.queues
        assert queue.routing_key == "worker.#"
        assert queue.exchange.name == "celeryev"
        assert queue.message_ttl == gossip.heartbeat_interval
        assert kconsumer.no_ack is True
        assert kconsumer.accept == {"application/json"}


def test_get_consumers_feeds_the_fast_path(gossip):
    with Connection("memory://") as conn:
        gossip.timer = type("T", (), {"call_repeatedly": lambda s, *a: None})()
        [kconsumer] = gossip.get_consumers(conn.default_channel)
        kconsumer.consume()
        body = wire.captured("redis")["worker.heartbeat"][0]
        producer = conn.Producer(serializer="json")
        producer.publish(body, exchange=kconsumer.queues[0].exchange,
                         routing_key="worker.heartbeat", content_type="application/json",
                         content_encoding="utf-8", headers={"hostname": "w1@capture"},
                         declare=kconsumer.queues)
        conn.drain_events(timeout=1)
    assert "w1@capture" in gossip.state.workers
    assert gossip._receiver.stats()["applied"] == 1


# -- Keep 5: on_message routing ------------------------------------------------


def test_task_events_dropped_undecoded(gossip, fast_prepare):
    gossip.on_message(fast_prepare, wire.raw("task.succeeded", b"not json at all"))
    gossip.on_message(fast_prepare, wire.raw("task", b"{"))
    assert gossip.dropped == {} and gossip.state.workers == {}
    assert gossip._receiver.stats()["skipped_tasks"] == 2


def test_event_handlers_get_the_payload(gossip, fast_prepare):
    seen = []
    gossip.event_handlers["worker.custom"] = seen.append
    gossip.on_message(fast_prepare, wire.event("worker-custom", "a@x", clock=5, x=1))
    assert seen[0]["x"] == 1 and seen[0]["hostname"] == "a@x"
    assert gossip.state.workers == {}


def test_hostname_from_header_else_body(gossip, fast_prepare):
    before = gossip.clock.value
    gossip.on_message(fast_prepare, wire.heartbeat(gossip.hostname))
    assert gossip.state.workers == {} and gossip.clock.value == before + 1
    proto1 = wire.heartbeat("b@x")
    proto1.headers.clear()  # proto1: hostname only in the body
    gossip.on_message(fast_prepare, proto1)
    assert "b@x" in gossip.state.workers


def test_own_events_only_forward_the_clock(gossip, fast_prepare):
    gossip.clock.value = 10
    gossip.on_message(fast_prepare, wire.heartbeat(gossip.hostname, clock=500))
    assert gossip.clock.value == 11 and gossip.state.workers == {}


# -- Keep 6: the clock rules ----------------------------------------------------


@pytest.mark.parametrize("transport", wire.TRANSPORTS)
def test_clock_rules(gossip, fast_prepare, transport):
    gossip.clock.value = 10
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=50, transport=transport))
    assert gossip.clock.value == 51
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=3, transport=transport))
    assert gossip.clock.value == 52
    no_clock = wire.raw("worker.heartbeat", b'{"hostname": "a@x", "timestamp": %f, '
                        b'"type": "worker-heartbeat"}' % time.time(), transport, "a@x")
    gossip.on_message(fast_prepare, no_clock)
    assert gossip.clock.value == 53
    assert gossip.state.workers["a@x"].clock == 53  # stock stores the forwarded value
    gossip.on_message(fast_prepare, wire.event("task-sent", "client@x", clock=999,
                                               routing_key="worker.sent", uuid="u"))
    assert gossip.clock.value == 54  # (value or 1) - 1, then adjusted: +1


def test_clock_adjusted_before_state_update(gossip, fast_prepare):
    seen = []
    gossip.on.node_join.add(lambda w: seen.append(gossip.clock.value))
    gossip.clock.value = 1
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=40))
    assert seen == [41]


def test_prepare_matches_event_from_message(gossip, app):
    gossip.clock.value = 5
    type_, event = gossip._receiver.fast_prepare({"type": "worker-x", "clock": 9})
    assert type_ == "worker-x" and event["clock"] == 9 and gossip.clock.value == 10
    assert abs(event["local_received"] - time.time()) < 5


@pytest.mark.parametrize("kind", ["dict", "UserDict", "OrderedDict"])
def test_prepare_stamps_the_mapping_in_place_as_stock(gossip, app, kind):
    """event_from_message edits the body it is given and returns that very
    object, whatever mutable mapping it is; so do both cores (the compiled
    one used to stamp a copy of anything but a dict)."""
    from collections import OrderedDict, UserDict

    make = {"dict": dict, "UserDict": UserDict, "OrderedDict": OrderedDict}[kind]
    stock = make_app().events.Receiver(None)  # a clock of its own
    assert stock.clock is not gossip.clock
    stock.clock.value = 5
    gossip.clock.value = 5
    for body, prepare in ((make({"type": "worker-x", "clock": 9}), gossip._receiver.fast_prepare),
                          (make({"type": "worker-x", "clock": 9}),
                           lambda body: stock.event_from_message(body, localize=False))):
        type_, event = prepare(body)
        assert type_ == "worker-x" and event is body
        assert body["clock"] == 9 and "local_received" in body
    assert gossip.clock.value == stock.clock.value == 10
    no_clock = make({"type": "worker-x"})
    assert gossip._receiver.fast_prepare(no_clock)[1] is no_clock
    assert no_clock["clock"] == 11


# -- Keep 7-8: worker events, heartbeats, alive --------------------------------------


def test_join_online_offline_lifecycle(gossip, fast_prepare):
    log = []
    for kind in ("node_join", "node_leave", "node_lost"):
        getattr(gossip.on, kind).add(lambda w, kind=kind: log.append((kind, w.hostname)))
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", type_="worker-online"))
    gossip.on_message(fast_prepare, wire.heartbeat("a@x"))
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", type_="worker-online"))
    assert log == [("node_join", "a@x"), ("node_join", "a@x")]
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", type_="worker-offline"))
    assert log[-1] == ("node_leave", "a@x") and "a@x" not in gossip.state.workers
    gossip.on_message(fast_prepare, wire.heartbeat("ghost@x", type_="worker-offline"))
    assert log[-1] == ("node_leave", "ghost@x") and gossip.state.workers == {}


def test_every_body_field_lands_on_the_entry(gossip, fast_prepare):
    gossip.on_message(fast_prepare, wire.event("worker-custom", "a@x", clock=3, extra=[1],
                                               freq=2.0))
    worker = gossip.state.workers["a@x"]
    assert worker.extra == [1] and worker.type == "worker-custom"
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", active=7))
    assert worker.extra == [1] and worker.active == 7 and worker.type == "worker-heartbeat"
    worker.active = 99  # user code may set attributes
    assert worker.active == 99
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", active=8))
    assert worker.active == 8


def test_heartbeats_ring_of_four_like_stock(gossip, fast_prepare):
    import time_machine
    from celery.events.state import Worker as StockWorker
    stock = StockWorker("a@x")
    with time_machine.travel(1000.0, tick=False) as traveller:
        for moment in (5.0, 1.0, 3.0, 2.0, 9.0, 0.5, 7.0):
            traveller.move_to(1000.0 + moment)
            gossip.on_message(fast_prepare, wire.heartbeat("a@x", timestamp=1000.0 + moment))
            stock.event("heartbeat", 1000.0 + moment, 1000.0 + moment)
            worker = gossip.state.workers["a@x"]
            assert worker.heartbeats == stock.heartbeats
        assert len(worker.heartbeats) == 4
        assert worker.heartbeat_expires == max(worker.heartbeats) + 2.0 * 2
        traveller.move_to(worker.heartbeat_expires - 0.001)
        assert worker.alive
        traveller.move_to(worker.heartbeat_expires)
        assert not worker.alive


def test_drift_warned_once_per_host(gossip, fast_prepare, caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            gossip.on_message(fast_prepare, wire.heartbeat("a@x", timestamp=time.time() - 60))
    assert sum("Substantial drift from a@x" in r.getMessage() for r in caplog.records) == 1
    assert "a@x" in gossip.state.workers


# -- Keep 9: the sweep -----------------------------------------------------------


def test_periodic_reports_lost_and_removes(gossip, fast_prepare, caplog):
    import time_machine
    lost = []
    gossip.on.node_lost.add(lambda w: lost.append(w.hostname))
    gossip.on.node_lost.add(lambda w: 1 / 0)
    with time_machine.travel(5000.0, tick=False) as traveller:
        gossip.on_message(fast_prepare, wire.heartbeat("a@x", timestamp=5000.0, freq=2.0))
        gossip.on_message(fast_prepare, wire.heartbeat("b@x", timestamp=5000.0, freq=10.0))
        traveller.move_to(5003.9)
        gossip.periodic()
        assert lost == []
        traveller.move_to(5004.0)
        with caplog.at_level(logging.INFO):
            gossip.periodic()
    assert lost == ["a@x"] and list(gossip.state.workers) == ["b@x"]
    messages = [r.getMessage() for r in caplog.records]
    assert "missed heartbeat from a@x" in messages
    assert any(m.startswith("Ignored error from handler") for m in messages)


# -- Keep 10: elections ------------------------------------------------------------


def elect(gossip, fast_prepare, id_, host, clock, pid=1, topic="task", action=None):
    gossip.on_message(fast_prepare, wire.event(
        "worker-elect", host, clock=clock, pid=pid, id=id_, topic=topic, action=action,
        cver=1))


def ack(gossip, fast_prepare, id_, host):
    gossip.on_message(fast_prepare, wire.event("worker-elect-ack", host, id=id_))


def test_election_sends_request(gossip):
    gossip.election("e1", "task", {"x": 1})
    assert gossip.consensus_replies["e1"] == []
    assert gossip.dispatcher.sent == [
        ("worker-elect", {"id": "e1", "topic": "task", "action": {"x": 1}, "cver": 1})]


def test_election_lowest_clock_wins_and_runs_handler(gossip, fast_prepare):
    won = []
    gossip.election_handlers["record"] = won.append
    for host in ("a@x", "b@x"):
        gossip.on_message(fast_prepare, wire.heartbeat(host))
    gossip.election("e1", "record", "act")
    elect(gossip, fast_prepare, "e1", "a@x", clock=9)
    elect(gossip, fast_prepare, "e1", "local@test", clock=5, pid=1000, topic="record",
          action="act")
    elect(gossip, fast_prepare, "e1", "b@x", clock=7)
    assert [t for t, _ in gossip.dispatcher.sent].count("worker-elect-ack") == 3
    for host in ("a@x", "a@x"):
        ack(gossip, fast_prepare, "e1", host)
    assert won == []  # duplicate acks count once: 1 of 2 alive peers
    ack(gossip, fast_prepare, "e1", "b@x")
    assert won == ["act"] and "e1" not in gossip.consensus_replies
    assert gossip.elections["won"] == 1


def test_election_waits_for_every_alive_workers_request(gossip, fast_prepare):
    won = []
    gossip.election_handlers["record"] = won.append
    for host in ("a@x", "b@x"):
        gossip.on_message(fast_prepare, wire.heartbeat(host))
    gossip.election("e2", "record", "act")
    elect(gossip, fast_prepare, "e2", "local@test", clock=5, pid=1000, topic="record",
          action="act")
    elect(gossip, fast_prepare, "e2", "a@x", clock=9)
    for host in ("a@x", "b@x", "local@test"):
        ack(gossip, fast_prepare, "e2", host)
    assert won == [] and "e2" in gossip.consensus_replies  # b@x's request missing
    elect(gossip, fast_prepare, "e2", "b@x", clock=1)  # b@x has the lowest clock
    ack(gossip, fast_prepare, "e2", "b@x")
    assert won == [] and "e2" not in gossip.consensus_replies  # b@x won, not us


def test_stale_elections_expire(gossip, fast_prepare):
    gossip.on_message(fast_prepare, wire.heartbeat("a@x"))
    gossip.election("e3", "record", None)
    elect(gossip, fast_prepare, "late", "a@x", clock=1)  # a request after the result
    later = time.monotonic() + elections.ELECTION_TIMEOUT + 1
    with patch.object(bootstep, "monotonic", lambda: later):
        gossip.periodic()
    assert gossip.consensus_requests == {} and gossip.consensus_replies == {}
    assert gossip.elections["timed_out"] == 1


def test_odd_election_fields_never_raise(gossip, fast_prepare):
    for fields in ({"id": "x", "clock": "1", "pid": 1, "topic": "t", "action": None, "cver": 1},
                   {"id": "x", "clock": 1, "pid": 1, "topic": None, "action": {}, "cver": 1},
                   {"id": ["x"], "clock": 1, "pid": 1, "topic": "t", "action": {}, "cver": 1},
                   {"clock": 1}):
        gossip.on_message(fast_prepare, wire.event("worker-elect", "a@x", **fields))
    gossip.consensus_replies["x"] = []
    for host in ("a@x", "a@x", None, 5):
        gossip.on_message(fast_prepare, wire.event("worker-elect-ack", host or "z@x", id="x"))
    gossip.on_message(fast_prepare, wire.event("worker-elect-ack", "a@x", id={"x": 1}))
    # ties on the clock: lowest id wins, actions never compared
    gossip.consensus_requests["t"] = [(1, "b.1", "task", {"a": 1}), (1, "a.1", "task", {"b": 2})]
    gossip.consensus_replies["t"] = []
    gossip._maybe_decide("t")


def test_control_command_reaches_gossip(gossip):
    from celery.worker import control
    state = type("S", (), {"consumer": type("C", (), {"gossip": gossip})()})()
    control.election(state, "e9", "task", None)
    assert gossip.dispatcher.sent[-1][0] == "worker-elect"


# -- Keep 11: swaps at run time and module-level logger ---------------------------------


def test_swapped_update_state_gets_prepared_event(gossip, fast_prepare):
    seen = []
    gossip.update_state = seen.append
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=3))
    assert seen[0]["hostname"] == "a@x" and "local_received" in seen[0]
    assert gossip.state.workers == {}


def test_swapped_prepare_clock_handlers_dispatcher(gossip):
    from kombu.clocks import LamportClock
    gossip.clock = LamportClock(100)
    prepared = []

    def prepare(body):
        prepared.append(body)
        return body["type"], dict(body, local_received=time.time())
    gossip.on_message(prepare, wire.heartbeat("a@x", clock=3))
    assert prepared and "a@x" in gossip.state.workers
    gossip.on_message(gossip._receiver.fast_prepare, wire.heartbeat("b@x", clock=300))
    assert gossip.clock.value == 301
    handled = []
    gossip.event_handlers = {"worker.elect": handled.append}
    elect(gossip, gossip._receiver.fast_prepare, "e", "a@x", 1)
    assert handled and handled[0]["id"] == "e"


def test_swapped_on_node_callbacks(gossip, fast_prepare):
    seen = []
    gossip.on_node_join = lambda worker: seen.append(worker.hostname)
    gossip.on_message(fast_prepare, wire.heartbeat("a@x"))
    assert seen == ["a@x"]


def test_swapped_state_uses_stock_sweep(gossip):
    class W:
        hostname = "foo"
        alive = False
    lost = []
    gossip.on_node_lost = lost.append
    gossip.state = type("S", (), {"workers": {"foo": W()}})()
    gossip.periodic()
    assert len(lost) == 1 and gossip.state.workers == {}


def test_module_level_logger_is_looked_up(gossip, fast_prepare):
    with patch.object(bootstep, "debug") as debug:
        gossip.on_message(fast_prepare, wire.heartbeat("a@x"))
    debug.assert_called_with("%s joined the party", "a@x")


# -- Fix list ----------------------------------------------------------------------


def test_single_request_election_does_not_crash(gossip, fast_prepare):
    won = []
    gossip.election_handlers["record"] = won.append
    gossip.election("solo", "record", 1)
    elect(gossip, fast_prepare, "solo", "local@test", clock=3, pid=1000, topic="record",
          action=1)
    ack(gossip, fast_prepare, "solo", "local@test")
    assert won == [1]


@pytest.mark.parametrize("body", [
    b'{"type": "worker-heartbeat", "timestamp": 1.0, "clock": 1}',      # no hostname
    b'{"hostname": "a@x", "type": "worker-heartbeat", "clock": 1, "timestamp": "abc"}',
    b'{"hostname": "a@x", "type": "worker-heartbeat", "clock": 1, "timestamp": NaN}',
    b'{"hostname": "a@x", "type": "worker-heartbeat", "clock": 1, "timestamp": Infinity}',
    b'{"hostname": "a@x", "type": "worker-heartbeat", "clock": 1, "timestamp": 0}',
    b'{"hostname": "a@x", "type": "worker-heartbeat", "clock": 1}',
    b'{"hostname": "a@x", "clock": 1, "timestamp": 5.0}',
    b'[1, 2, 3]', b'not json', b'"text"', b'{"hostname": 5, "type": "worker-x"}',
])
def test_bad_input_is_counted_not_raised(gossip, fast_prepare, body, caplog):
    with caplog.at_level(logging.WARNING):
        gossip.on_message(fast_prepare, wire.raw("worker.heartbeat", body))
    assert gossip.state.workers == {}
    assert sum(gossip.dropped.values()) == 1
    assert any("dropped" in r.getMessage() for r in caplog.records)


def test_disallowed_content_type_never_decoded(gossip, fast_prepare):
    import pickle
    evil = pickle.dumps({"hostname": "a@x"})
    for key in ("worker.elect", "worker.heartbeat"):
        gossip.on_message(fast_prepare, wire.raw(
            key, evil, content_type="application/x-python-serialize",
            content_encoding="binary"))
    assert gossip.dropped["decode_error"] == 2 and gossip.consensus_requests == {}


@pytest.mark.parametrize("poison", [10 ** 30, 2 ** 63, 2 ** 62 + 1, -5, 1e30, 5.0,
                                    "12", None, True, [1], {"a": 1}])
def test_clock_poisoning_is_refused(gossip, fast_prepare, poison):
    import json
    gossip.clock.value = 7
    body = json.dumps({"hostname": "a@x", "clock": poison, "timestamp": time.time(),
                       "freq": 2.0, "type": "worker-heartbeat"}).encode()
    gossip.on_message(fast_prepare, wire.raw("worker.heartbeat", body))
    assert gossip.clock.value == 8 and type(gossip.clock.value) is int
    assert gossip.sanitized["bad_clock"] == 1
    assert gossip.state.workers["a@x"].clock == 8
    gossip.on_message(fast_prepare, wire.raw("worker.heartbeat", body.replace(
        b'"clock"', b'"c"').replace(b'"freq"', b'"clock": 1e999, "freq"')))
    assert gossip.clock.value == 9


def test_clock_poisoning_via_adjust_and_decimal(core):
    from decimal import Decimal
    clock = core.Clock(5)
    for poison in (Decimal("1e30"), float("inf"), 1e30, 2 ** 64, -1, "x"):
        clock.adjust(poison)
    assert clock.value == 11 and clock.rejected == 6
    with pytest.raises(ValueError):
        clock.value = 2 ** 63


@pytest.mark.parametrize("key", ["event", "heartbeats", "alive", "id", "heartbeat_expires",
                                 "_hb", "update"])
def test_attribute_injection_is_cleaned(gossip, fast_prepare, key):
    gossip.on_message(fast_prepare, wire.event("worker-heartbeat", "a@x", freq=2.0,
                                               **{key: "boom"}))
    worker = gossip.state.workers["a@x"]
    assert worker.alive and isinstance(worker.heartbeats, list) and worker.id == "a@x.4242"
    assert gossip.sanitized["reserved_field"] == 1
    gossip.periodic()
    assert "a@x" in gossip.state.workers


@pytest.mark.parametrize("freq", ["2", None, [], float("nan"), 0, -1, 1e9])
def test_bad_freq_never_breaks_the_sweep(gossip, fast_prepare, freq):
    import json
    lost = []
    gossip.on.node_lost.add(lost.append)
    body = json.dumps({"hostname": "a@x", "clock": 1, "timestamp": time.time(),
                       "freq": freq, "type": "worker-heartbeat"}).encode()
    for _ in range(3):
        gossip.on_message(fast_prepare, wire.raw("worker.heartbeat", body))
        gossip.periodic()
    assert lost == [] and gossip.dropped["bad_freq"] == 3


def test_zero_timestamp_does_not_flap(gossip, fast_prepare):
    joins = []
    gossip.on.node_join.add(joins.append)
    for _ in range(3):
        gossip.on_message(fast_prepare, wire.heartbeat("a@x", timestamp=0))
        gossip.periodic()
    assert joins == [] and gossip.state.workers == {}


def test_more_than_5000_workers_without_eviction(gossip, fast_prepare):
    joins = []
    gossip.on.node_join.add(lambda w: joins.append(w.hostname))
    now = time.time()
    for _round in range(2):
        for i in range(6000):
            gossip.on_message(fast_prepare, wire.heartbeat(f"w{i}@x", timestamp=now))
    assert len(gossip.state.workers) == 6000 and len(joins) == 6000
    assert gossip.state.alive_count() == 6000


def test_header_body_mismatch_never_adds_ourselves(gossip, fast_prepare):
    message = wire.heartbeat(gossip.hostname)
    message.headers["hostname"] = "peer@x"
    gossip.on_message(fast_prepare, message)
    assert gossip.state.workers == {} and gossip.dropped["hostname_mismatch"] == 1


def test_bad_input_logging_is_rate_limited(gossip, fast_prepare, caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(500):
            gossip.on_message(fast_prepare, wire.raw("worker.heartbeat", b"[1]"))
    assert gossip.dropped["bad_body"] == 500
    assert sum("bad_body" in r.getMessage() for r in caplog.records) == 1


def test_stop_after_celery_dropped_the_connection(gossip):
    """Celery 5.7 sets c.connection = None before restarting the steps after
    a connection loss; stopping must not raise or log an error."""
    consumer = SimulatedConsumer(gossip.app)
    with Connection("memory://") as conn:
        gossip.timer = type("T", (), {"call_repeatedly": lambda s, *a: None})()
        gossip.consumers = gossip.get_consumers(conn.channel())
        consumer.connection = None
        gossip.stop(consumer)
        gossip.shutdown(consumer)


def test_undecompressable_message_on_the_classic_consumer(gossip):
    """kombu re-raises a message it cannot decompress out of the consumer
    unless on_decode_error is given: counted and dropped instead."""
    with Connection("memory://") as conn:
        gossip.timer = type("T", (), {"call_repeatedly": lambda s, *a: None})()
        [kconsumer] = gossip.get_consumers(conn.channel())
        kconsumer.consume()
        producer = conn.Producer()
        producer.publish(b"not zlib", exchange=kconsumer.queues[0].exchange,
                         routing_key="worker.heartbeat", content_type="application/json",
                         content_encoding="utf-8", declare=kconsumer.queues,
                         headers={"compression": "application/x-gzip", "hostname": "a@x"})
        conn.drain_events(timeout=1)
    assert gossip.dropped["decode_error"] == 1
    assert gossip.stats()["events"]["received"] == 1  # and counted as received


@pytest.mark.parametrize("routing_key", ["worker.heartbeat", "worker.elect"])
def test_null_and_scalar_bodies_are_counted(gossip, fast_prepare, routing_key):
    """A JSON ``null`` body is bad input like a list or a number: dropped,
    counted as ``bad_body``, never mistaken for an earlier rejection."""
    for body in (b"null", b"3", b'"text"'):
        gossip.on_message(fast_prepare, wire.raw(routing_key, body, hostname="a@x"))
    assert gossip.dropped["bad_body"] == 3
    assert "a@x" not in gossip.state.workers


def test_applied_counts_only_events_the_state_took(gossip, fast_prepare):
    """``events.applied`` leaves out events the table drops as bad input,
    so received = applied + own + skipped + dropped adds up."""
    gossip.on_message(fast_prepare, wire.heartbeat("a@x"))
    gossip.on_message(fast_prepare, wire.heartbeat("b@x", freq="fast"))
    gossip.on_message(fast_prepare, wire.event("worker-heartbeat", "c@x", clock=3,
                                               timestamp="abc"))
    stats = gossip.stats()
    assert stats["events"]["received"] == 3 and stats["events"]["applied"] == 1
    assert stats["dropped"] == {"bad_freq": 1, "bad_timestamp": 1}
