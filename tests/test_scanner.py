"""The compiled core's scanner of standard event bodies (a strict subset of
JSON read without decoding): what it takes it must read exactly as a JSON
decoder would, and anything outside the subset it must leave to the general
path.  Compiled-only: imports gossip_fast._core explicitly."""
import json
import math
import random
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

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


@pytest.mark.parametrize("old, new", [
    (b'"pid": ', b'"pid" : '), (b'"pid": ', b'"pid":  '), (b'"pid": ', b'"pid":'),
    (b'"pid": ', b'"pid":\n'), (b'"clock": ', b' "clock": '), (b'{"hostname"', b'{ "hostname"'),
    (b'{"hostname"', b' \n{"hostname"'), (b', "pid"', b' , "pid"'), (b', "pid"', b',"pid"'),
    (b'"}', b'" }\n'),
])
def test_celery_layout_with_other_whitespace(scan, old, new):
    body = json.dumps(standard()).encode()
    assert scan(body.replace(old, new)) == scan(body) is not None


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
       st.sampled_from([(", ", ": "), (",", ":"), (" , ", " : "), (",\n ", ":\t")]),
       st.booleans(), st.randoms())
def test_what_it_takes_it_reads_like_json(scan, body, separators, celery_order, rng):
    keys = list(body)  # STANDARD is Celery's order, which the scanner tries first
    if not celery_order:
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


# -- numbers: the scanner converts timestamp and freq itself ------------------
#
# Short literals are converted with exact integer arithmetic (or a single
# division when the digits fit a double), the rest by Python's own strtod.
# Either way the result must be float() of the literal, bit for bit.

def with_numbers(timestamp, freq=b"2.0"):
    """A standard body with these literals as timestamp and freq."""
    body = json.dumps(standard(timestamp="<t>", freq="<f>")).encode()
    return body.replace(b'"<t>"', timestamp).replace(b'"<f>"', freq)


def assert_reads_like_float(scan, literal):
    result = scan(with_numbers(literal, literal))
    if len(literal) > 24:  # too long for the scanner: the general path
        assert result is None
        return
    expected = float(literal)
    assert float(json.loads(literal)) == expected
    for value in result[3:]:
        assert (value, math.copysign(1.0, value)) == (expected, math.copysign(1.0, expected)), literal


def near_midpoints():
    """Literals of 15 to 19 significant digits around the midpoint of two
    adjacent doubles: where a conversion that rounds twice, or drops the
    remainder, gets the last bit wrong."""
    rng = random.Random(1234)
    for _ in range(3000):
        value = rng.choice([rng.uniform(1e-3, 1), rng.uniform(1, 1e4),
                            rng.uniform(1e9, 2e9), rng.uniform(1e4, 1e12),
                            float(rng.randrange(2 ** 53, 2 ** 64))])
        mid = (Decimal(value) + Decimal(math.nextafter(value, math.inf))) / 2
        digits = rng.randint(15, 19)
        exponent = mid.adjusted() - digits + 1
        for rounding in (ROUND_FLOOR, ROUND_CEILING, ROUND_HALF_EVEN):
            near = mid.quantize(Decimal(1).scaleb(min(exponent, -1)), rounding=rounding)
            yield format(near, "f").encode()


def test_numbers_near_midpoints_read_like_float(scan):
    for literal in near_midpoints():
        assert_reads_like_float(scan, literal)


@pytest.mark.parametrize("literal", [
    b"0", b"-0", b"0.0", b"-0.0", b"1", b"2.0", b"0.17", b"3600.0", b"86400.0",
    b"1796160764.591444", b"1700000000.1234567", b"999999999999.9999999",
    b"1000000000000.0000000001", b"0.0000000000000000000001",
    b"0.00000000000000000000001", b"0.1234567890123456789",  # 22 and 23 decimals
    b"9007199254740992.0", b"9007199254740993.0", b"9007199254740995.0",  # ties at 2**53
    b"4503599627370496.5", b"4503599627370497.5",                       # ties at 2**52
    b"18014398509481986.0", b"18014398509481990.0",                     # ties at 2**54
    b"9999999999999999999", b"9999999999999999999.0", b"18446744073709551615",
    b"18446744073709551616.5", b"12345678901234567890123", b"-1796160764.591444",
    b"1.7976931348623157", b"2.2250738585072014", b"0.30000000000000004",
])
def test_edge_numbers_read_like_float(scan, literal):
    assert_reads_like_float(scan, literal)


@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.booleans(), st.text("0123456789", min_size=1, max_size=20),
       st.one_of(st.none(), st.text("0123456789", min_size=1, max_size=23)))
def test_random_numbers_read_like_float(scan, negative, whole, fraction):
    whole = whole.lstrip("0") or "0"  # JSON: no leading zeros
    literal = ("-" if negative else "") + whole + ("" if fraction is None else "." + fraction)
    assert_reads_like_float(scan, literal.encode())
