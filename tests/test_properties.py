"""Property-based tests (hypothesis) and the fuzz target of the decode and
dispatch path, for both implementations at once.

Whatever arrives (any bytes, any JSON shape, any routing key, headers,
content type or encoding), ``on_message`` never raises, the clock stays an
int in [0, 2**63), every table entry stays well formed, and the compiled core
and the fallback end in the same state with the same counters.
"""
import json
import math

import time_machine
from hypothesis import HealthCheck, given, settings, strategies as st

from gossip_fast.simulate import make_message

from .conftest import gossip_class, load_core, make_app, make_gossip

KEYS = ["hostname", "type", "clock", "timestamp", "freq", "pid", "active", "processed",
        "loadavg", "sw_ident", "utcoffset", "local_received", "event", "heartbeats", "id",
        "alive", "topic", "action", "cver", "__type__", "_hb", "x"]
HOSTS = ["a@x", "b@x", "local@test", "", "ünï@x"]
TYPES = ["worker-heartbeat", "worker-online", "worker-offline", "worker-custom", "worker",
         "task-sent", "task-succeeded", "worker-elect", "worker-elect-ack", "foo-bar", ""]
ROUTING_KEYS = ["worker.heartbeat", "worker.online", "worker.offline", "worker.elect",
                "worker.elect.ack", "worker.custom", "task.sent", "task", "worker.#", "x"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(HOSTS + TYPES), st.sampled_from([1.0e9, 1.8e9, 2.0, 0.0, 2 ** 62]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
                      max_leaves=6)
bodies = st.one_of(
    st.fixed_dictionaries(
        {"hostname": st.sampled_from(HOSTS), "type": st.sampled_from(TYPES),
         "timestamp": st.sampled_from([1.8e9, 1.8e9 - 30, 0, "abc"]) | scalars},
        optional={key: values for key in KEYS
                  if key not in ("hostname", "type", "timestamp")}),
    st.dictionaries(st.sampled_from(KEYS), values, max_size=6),
    values)


def encode(body, style):
    if style == "json" and not isinstance(body, bytes):
        return json.dumps(body, allow_nan=True).encode()
    if style == "kombu-type":  # kombu's own encoding of objects
        return json.dumps({"hostname": "a@x", "type": "worker-heartbeat", "timestamp": 1.8e9,
                           "clock": 3, "when": {"__type__": "datetime",
                                                "__value__": "2026-01-01T00:00:00"}}).encode()
    return body if isinstance(body, bytes) else repr(body).encode()


messages = st.tuples(
    st.sampled_from(["redis", "amqp"]),
    st.sampled_from(ROUTING_KEYS),
    bodies | st.binary(max_size=40),
    st.sampled_from(["json", "json", "json", "raw", "kombu-type"]),
    st.sampled_from([None, {}, {"hostname": "a@x"}, {"hostname": "local@test"},
                     {"hostname": 5}, {"compression": "application/x-gzip"}]),
    st.sampled_from([("application/json", "utf-8"), ("application/json", "latin-1"),
                     ("application/x-python-serialize", "binary"),
                     ("application/data", "binary"), ("text/plain", "utf-8")]),
)
steps = st.lists(st.one_of(messages, st.sampled_from(["sweep", "tick", "jump"])),
                 min_size=1, max_size=25)


def check_well_formed(gossip):
    value = gossip.clock.value
    assert type(value) is int and 0 <= value < 2 ** 63
    for hostname, worker in gossip.state.workers.items():
        assert type(hostname) is str and hostname and worker.hostname == hostname
        beats = worker.heartbeats
        assert 1 <= len(beats) <= 4 and beats == sorted(beats)
        assert all(math.isfinite(b) for b in beats)
        assert isinstance(worker.alive, bool)
        assert math.isfinite(worker.heartbeat_expires)


def snapshot(gossip):
    table = {h: (repr(sorted((k, repr(v)) for k, v in _fields(w).items())),
                 w.heartbeats, w.alive) for h, w in gossip.state.workers.items()}
    stats = gossip.stats()
    stats.pop("implementation")
    return table, stats, gossip.clock.value, dict(gossip.consensus_requests)


def _fields(worker):
    names = set(vars(worker)) | {"hostname", "pid", "freq", "clock", "active", "processed",
                                 "loadavg", "sw_ident", "sw_ver", "sw_sys", "type",
                                 "timestamp", "utcoffset", "local_received"}
    return {name: getattr(worker, name, "<unset>") for name in names}


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps)
def test_fuzz_decode_and_dispatch_both_implementations(steps):
    with time_machine.travel(1.8e9, tick=False) as traveller:
        gossips = [make_gossip(gossip_class(load_core(name)), make_app())
                   for name in ("cython", "python")]
        now = 1.8e9
        for step in steps:
            if step == "sweep":
                for gossip in gossips:
                    gossip.periodic()
                continue
            if step in ("tick", "jump"):
                now += 0.7 if step == "tick" else 9.0
                traveller.move_to(now)
                continue
            transport, key, body, style, headers, (ctype, cenc) = step
            raw = encode(body, style)
            for gossip in gossips:
                message = make_message(transport, key, raw, content_type=ctype,
                                       content_encoding=cenc,
                                       headers=dict(headers) if headers is not None else {})
                gossip.on_message(gossip._receiver.fast_prepare, message)
                check_well_formed(gossip)
            assert snapshot(gossips[0]) == snapshot(gossips[1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.floats(0, 3), st.sampled_from([0.5, 2.0, 5.0]),
                          st.booleans()), min_size=1, max_size=60))
def test_sweep_reports_exactly_the_expired(plan):
    """Whatever the order of heartbeats and sweeps, a sweep at time t reports
    exactly the workers whose last heartbeat + 2 * freq <= t (stock's rule)."""
    for name in ("cython", "python"):
        core = load_core(name)
        state = core.State()
        now = 1000.0
        for index, advance, freq, sweep in plan:
            now += advance
            if sweep:
                expected = {h for h, w in state.workers.items()
                            if not now < max(w.heartbeats) + w._freq * 2} \
                    if name == "python" else None
                lost = {w.hostname for w in state.sweep(now)}
                if expected is not None:
                    assert lost == expected
                assert all(now < max(w.heartbeats) + 2 * float(w.freq)
                           for w in state.workers.values())
            else:
                state.event({"hostname": f"w{index}", "type": "worker-heartbeat",
                             "timestamp": now, "local_received": now, "freq": freq})
