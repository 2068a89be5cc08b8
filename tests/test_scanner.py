"""The compiled core's scanner of standard event bodies (a strict subset of
JSON read without decoding): what it takes it must read exactly as a JSON
decoder would, and anything outside the subset it must leave to the general
path.  Compiled-only: imports gossip_fast._core explicitly."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import wire
from .conftest import load_core

STANDARD = ("hostname", "utcoffset", "pid", "clock", "freq", "active", "processed",
            "loadavg", "sw_ident", "sw_ver", "sw_sys", "timestamp", "type")


@pytest.fixture(scope="module")
def scan():
    return load_core("cython").scan_body


def standard(**changes):
    body = json.loads(wire.captured("amqp")["worker.heartbeat"][0])
    body.update(changes)
    return body


@pytest.mark.parametrize("transport", wire.TRANSPORTS)
def test_captured_celery_bodies_are_standard(scan, transport):
    for key, (body, _) in wire.captured(transport).items():
        result = scan(body)
        if key in ("worker.elect", "worker.elect.ack"):
            assert result is None  # other keys: the general path
        else:
            event = json.loads(body)
            assert result == (event["hostname"], event["type"], event["clock"],
                              event["timestamp"], event["freq"])


@pytest.mark.parametrize("body", [
    json.dumps(standard(extra=1)),                       # an extra key
    json.dumps(standard()).replace('"pid"', '"pid", "pid": 1, "x"'),
    json.dumps({k: v for k, v in standard().items() if k != "pid"}),
    json.dumps(standard(hostname="h\u00e9@x")),          # escapes / non-ASCII
    json.dumps(standard(hostname="h\\@x")),
    json.dumps(standard(timestamp=1.5e9)).replace("1500000000.0", "1.5e9"),
    json.dumps(standard(loadavg=[[1]])),                 # nesting
    json.dumps(standard(active={"a": 1})),
    json.dumps(standard(clock=-1)), json.dumps(standard(clock=1.0)),
    json.dumps(standard(clock=10 ** 19)), json.dumps(standard(clock="1")),
    json.dumps(standard(timestamp="1")), json.dumps(standard(freq=None)),
    json.dumps(standard()) + " x", "{" + json.dumps(standard())[1:-1] + ",}",
    json.dumps(standard()).replace(": 0,", ": 00,"), json.dumps(standard())[:-1],
    json.dumps(standard(pid=float("nan"))),
])
def test_outside_the_subset_is_left_alone(scan, body):
    assert scan(body.encode()) is None


numbers = st.one_of(st.integers(0, 10 ** 17), st.floats(0.001, 1e12, allow_nan=False),
                    st.integers(-5, 5))
plain = st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"\\')
values = st.one_of(numbers, st.text(plain, max_size=12),
                   st.none(), st.booleans(), st.lists(numbers, max_size=3))


text = st.text(plain, min_size=1, max_size=12)  # escapes are outside the subset
LOGIC = {"hostname": text, "type": text, "clock": st.integers(0, 10 ** 17),
         "timestamp": numbers, "freq": numbers}


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({key: LOGIC.get(key, values) for key in STANDARD}),
       st.sampled_from([(", ", ": "), (",", ":")]), st.randoms())
def test_what_it_takes_it_reads_like_json(scan, body, separators, rng):
    keys = list(body)
    rng.shuffle(keys)
    raw = json.dumps({k: body[k] for k in keys}, separators=separators).encode()
    result = scan(raw)
    if result is None:  # only exponents (1e-05, 1e+16) fall outside here
        assert b"e-" in raw or b"e+" in raw
        return
    decoded = json.loads(raw)
    assert result[0] == decoded["hostname"] and result[1] == decoded["type"]
    assert result[2] == decoded["clock"] and type(decoded["clock"]) is int
    assert result[3] == float(decoded["timestamp"]) and result[4] == float(decoded["freq"])
