"""The compiled splitter of AMQP deliveries (``DeliveryScanner`` of
``src/amqpframes.pyx``) against the RabbitMQ reader's Python splitter
(``AMQPReader._split``, what the reader runs with the pure-Python core):
from the same bytes, however they are split between reads, the same held
events in the same order, the same unparsed tail, the same exception at the
same point, the same log lines.

Both run inside ``AMQPReader._parse``: with the scanner, the reader's Python
splitter sees to whatever the scanner leaves (any frame or delivery but a
plain one on our channel), so each stream below is read by one reader with
the scanner and one without.  The compiled core is imported explicitly;
with the fallback forced (``GOSSIP_FAST_NO_EXTENSIONS=1``) the file is
skipped, as is every compiled-only test."""
import gc
import json
import random
import time
import types
from struct import pack

import amqp
import pytest
from amqp.serialization import dumps
from celery import Celery

from gossip_fast.fastpath import amqp as amqp_reader
from gossip_fast.fastpath.amqp import AMQPReader
from gossip_fast.simulate import event_body, heartbeat_body

from . import wire
from .conftest import gossip_class, load_core, make_gossip
from .test_fastpath_amqp import method_frame, random_properties

HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"
KOMBU = dict(content_type="application/json", content_encoding="utf-8", delivery_mode=1,
             priority=0)


@pytest.fixture(scope="module")
def core():
    return load_core("cython")


@pytest.fixture(scope="module")
def gossip(core):
    app = Celery("t", broker="amqp://127.0.0.1:1//", set_as_current=False)
    return make_gossip(gossip_class(core), app, hostname="local@test")


def make_reader(gossip, compiled, cache_size=16384):
    channel = types.SimpleNamespace(connection=types.SimpleNamespace(client=None))
    reader = AMQPReader(gossip, channel, None)
    reader.cache_size = cache_size
    reader._attach(types.SimpleNamespace(recv=None, send=None), 1)
    if not compiled:
        reader._scanner = None
    assert (reader._scanner is not None) == compiled
    return reader


def props_of(**properties):
    headers = properties.pop("headers", None)
    return amqp.Message(b"", application_headers=headers, **properties)._serialize_properties()


def delivery(routing_key, body, raw_props, channel=1, tag=1, ctag="amq.ctag-test",
             exchange="celeryev", frame_max=131072, body_size=None):
    """The frames of one delivery, with the raw content properties *raw_props*."""
    method = pack(">HH", 60, 60) + dumps("sLbss", [ctag, tag, False, exchange, routing_key])
    body_size = len(body) if body_size is None else body_size
    header = pack(">HHQ", 60, 0, body_size) + raw_props
    out = [pack(">BHI", 1, channel, len(method)), method, b"\xce",
           pack(">BHI", 2, channel, len(header)), header, b"\xce"]
    step = frame_max - 8
    for start in range(0, len(body), step):
        chunk = body[start:start + step]
        out += [pack(">BHI", 3, channel, len(chunk)), chunk, b"\xce"]
    return b"".join(out)


def heartbeat_delivery(hostname, clock=1, **kwargs):
    body = heartbeat_body(hostname, clock, time.time())
    return delivery("worker.heartbeat", body, props_of(headers={"hostname": hostname}, **KOMBU),
                    tag=clock, **kwargs)


def captured_deliveries():
    """The captured RabbitMQ messages of tests/data/wire, as frames."""
    out = []
    with open(wire.HERE + "/amqp-events.jsonl") as lines:
        for tag, line in enumerate(lines, 1):
            record = json.loads(line)
            props = dict(record["properties"])
            props["headers"] = props.pop("application_headers")
            out.append(delivery(record["routing_key"], record["body"].encode(),
                                props_of(**props), tag=tag, exchange=record["exchange"]))
    return out


def read(reader, stream, cuts, logged):
    """Feed *stream* to *reader* in the pieces *cuts* makes, parsing after
    each, as fill() does: what it held, the tails it kept, what it raised,
    what it logged."""
    tails = []
    start = 0
    error = None
    before = len(logged)
    for end in sorted(cuts) + [len(stream)]:
        reader._buf += stream[start:end]
        start = end
        try:
            reader._parse()
        except Exception as exc:  # pylint: disable=broad-except
            error = (type(exc), str(exc))
            break
        tails.append(reader._buf)
    held = [(item, [type(x) for x in item],
             type(item[1].get("hostname")) if type(item[1]) is dict else None)
            for item in reader.pending]
    return held, tails, error, logged[before:]


def differential(gossip, stream, cuts=(), cache_size=16384, logged=None, monkeypatch=None):
    """Both splitters on *stream*; asserts they agree and returns what the
    compiled one gave."""
    logged = [] if logged is None else logged
    compiled = read(make_reader(gossip, True, cache_size), stream, cuts, logged)
    python = read(make_reader(gossip, False, cache_size), stream, cuts, logged)
    assert compiled[2] == python[2]           # the same exception, or none
    assert compiled[0] == python[0]           # the same events, in order
    assert compiled[1] == python[1]           # the same tails
    assert compiled[3] == python[3]           # the same log lines
    return compiled


@pytest.fixture
def logged(monkeypatch):
    lines = []
    monkeypatch.setattr(amqp_reader.logger, "info", lambda *args: lines.append(args))
    return lines


def random_cuts(rng, size, count):
    return sorted(rng.randrange(size + 1) for _ in range(count))


# -- what the scanner takes itself -----------------------------------------------------


def test_captured_deliveries_are_taken_by_the_scanner(gossip, monkeypatch, logged):
    frames = captured_deliveries()
    assert len(frames) == 5
    stream = b"".join(frames) * 3
    splits = []
    split = AMQPReader._split
    monkeypatch.setattr(AMQPReader, "_split", lambda self, buf, pos, once=False: (
        splits.append((pos, once)), split(self, buf, pos, once))[1])
    held, tails, error, _ = differential(gossip, stream, logged=logged)
    assert error is None and tails == [b""]
    assert [item[0] for item, _, _ in held] == ["worker.online", "worker.heartbeat",
                                                 "worker.elect", "worker.elect.ack",
                                                 "worker.offline"] * 3
    assert held[1][0][1] == {"hostname": "w1@capture"}
    assert held[1][1] == [str, dict, bytes, str, str, str]
    # the compiled reader: the Python splitter only once, at the end
    assert splits[0] == (len(stream), True)
    assert (0, False) in splits  # and the Python reader from the start


def test_scanner_alone(core, gossip):
    reader = make_reader(gossip, True)
    scanner = reader._scanner
    assert scanner.channel_id == 1
    one = heartbeat_delivery("a@x")
    stream = HEARTBEAT_FRAME + one + HEARTBEAT_FRAME + one + method_frame(20, 40)
    out = []
    stop = scanner.scan(stream, 0, out)
    assert stop == len(stream) - len(method_frame(20, 40))  # channel.close: left to Python
    assert [item[1] for item in out] == [{"hostname": "a@x"}] * 2
    assert not any(gc.is_tracked(item) for item in out)
    assert scanner.scan(stream, stop, out) == stop and len(out) == 2
    assert scanner.scan(one[:-1], 0, out) == 0  # incomplete
    assert scanner.scan(b"", 0, out) == 0 and len(out) == 2
    with pytest.raises(ValueError):
        scanner.scan(stream, len(stream) + 1, out)
    with pytest.raises(ValueError):
        scanner.scan(stream, -1, out)
    with pytest.raises(TypeError):
        scanner.scan(bytearray(stream), 0, out)
    with pytest.raises(ValueError):
        core.DeliveryScanner(65536, {}, {}, None, None)


def test_reader_picks_the_scanner_with_the_compiled_core_only(core):
    app = Celery("t", broker="amqp://127.0.0.1:1//", set_as_current=False)
    for implementation in ("cython", "python"):
        gossip = make_gossip(gossip_class(load_core(implementation)), app, hostname="l@t")
        channel = types.SimpleNamespace(connection=types.SimpleNamespace(client=None))
        reader = AMQPReader(gossip, channel, None)
        reader._attach(types.SimpleNamespace(recv=None, send=None, close=lambda: None), 7)
        if implementation == "cython":
            assert type(reader._scanner) is core.DeliveryScanner
            assert reader._scanner.channel_id == 7
        else:
            assert reader._scanner is None
        reader.close()
        assert reader._scanner is None


# -- differential: the same results from both ------------------------------------------


def test_captured_split_anywhere(gossip, logged):
    stream = HEARTBEAT_FRAME + b"".join(captured_deliveries()) + HEARTBEAT_FRAME
    for cut in range(len(stream)):
        held, tails, error, _ = differential(gossip, stream, [cut], logged=logged)
        assert error is None and len(held) == 5 and tails[-1] == b""
    for step in (1, 7, 64):
        differential(gossip, stream, range(0, len(stream), step), logged=logged)


def random_delivery(rng, senders, frame_max):
    """Mostly standard heartbeats of a few senders; sometimes another event,
    odd properties, an empty, big or non-UTF-8 body, other keys."""
    roll = rng.random()
    host = rng.choice(senders)
    if roll < 0.6:
        return heartbeat_delivery(host, rng.randrange(1, 10**6), frame_max=frame_max)
    size = rng.choice([0, 1, 5, 300, frame_max - 9, frame_max - 8, frame_max - 7,
                       2 * frame_max + 3])
    body = rng.choice([
        event_body("worker-online", host, 3, time.time(), blob="z" * size),
        bytes(rng.randrange(256) for _ in range(min(size, 64))) * (size // 64 + 1),
        "é€".encode("latin-1", "replace") * 3,
        b"",
    ])
    props = random_properties(rng) if roll < 0.85 else props_of(
        headers={"hostname": host}, content_type=rng.choice(["application/json", "text/x"]),
        content_encoding=rng.choice(["utf-8", "latin-1", "utf-16", "binary", "nope"]),
        delivery_mode=1, priority=0)
    key = rng.choice(["worker.heartbeat", "worker.online", "task.x", "", "é" * 20,
                      "k" * 255])
    exchange = rng.choice(["celeryev", "", "other"])
    ctag = rng.choice(["amq.ctag-test", "", "t" * 255])
    return delivery(key, body, props, ctag=ctag, exchange=exchange, frame_max=frame_max)


def random_stream(rng, count, frame_max=4096):
    senders = [f"w{i}@h{i % 7}" for i in range(rng.choice([1, 5, 40]))]
    parts = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.05:
            parts.append(HEARTBEAT_FRAME)
        elif roll < 0.08:
            parts.append(method_frame(10, rng.choice([60, 61]), dumps("s", ["alarm"]),
                                      channel=0))
        else:
            parts.append(random_delivery(rng, senders, frame_max))
    return b"".join(parts)


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_split_anywhere(gossip, logged, seed):
    rng = random.Random(seed)
    stream = random_stream(rng, 60)
    cache_size = rng.choice([2, 8, 16384])
    cuts = random_cuts(rng, len(stream), rng.choice([0, 1, 5, 50, 400]))
    held, tails, error, lines = differential(gossip, stream, cuts, cache_size, logged=logged)
    assert tails[-1] == b"" and len(held) > 30, error


def short_header(size):
    """A delivery whose content header frame has *size* bytes of payload
    (12 and more for a well-formed one), and more bytes after it."""
    one = heartbeat_delivery("a@x")
    method = 7 + int.from_bytes(one[3:7], "big") + 1
    payload = (pack(">HHQ", 60, 0, 2) + b"\xff" * 30)[:size]
    return one[:method] + pack(">BHI", 2, 1, size) + payload + b"\xce" + b"\x00" * 30


#: What a consumer of one queue cannot get, at the end of a valid stream.
HOSTILE = [
    method_frame(20, 40, dumps("BsBB", [406, "PRECONDITION_FAILED - x", 0, 0])),
    method_frame(10, 50, dumps("BsBB", [320, "CONNECTION_FORCED", 0, 0]), channel=0),
    method_frame(60, 30, dumps("sb", ["amq.ctag-test", False])),       # basic.cancel
    method_frame(60, 50, dumps("BsssB", [312, "NO_ROUTE", "x", "y", 0])),  # basic.return
    method_frame(60, 61),                                               # not deliver
    b"\x01\x00\x01\x00\x00\x00\x04\x00\x3c\x00\x3c\x00",               # bad frame end
    b"\x01\x00\x01\x00\x00\x00\x04\x00\x3c\x00\x3c\xce",               # deliver, no args
    b"\x01\x00\x01\x00\x00\x00\x05\x00\x3c\x00\x3c\xff\xce" + b"\x00" * 8,  # tag overruns
    b"\x03\x00\x01\x00\x00\x00\x01x\xce" + b"\x00" * 4,                 # stray body
    b"\x02\x00\x01\x00\x00\x00\x01x\xce" + b"\x00" * 4,                 # stray header
    b"\x04\x00\x01\x00\x00\x00\x01x\xce" + b"\x00" * 4,                 # frame type 4
    b"\x08\x00\x01\x00\x00\x00\x00\xce" + b"\x00" * 4,                  # heartbeat, channel 1
    b"\x08\x00\x00\x00\x00\x00\x02ab\xce" + b"\x00" * 4,                # heartbeat with payload
    b"\x01\x00\x01\xff\xff\xff\xf0" + b"\x00" * 8,                      # absurd size
    b"\x01\x00\x01\x00\x01\xff\xf0" + b"\x00" * 8,                      # big, < frame max
    heartbeat_delivery("a@x", channel=2),                               # other channel
    delivery("worker.heartbeat", b"{}", b"\x00\x00"),                   # no properties
    delivery("worker.heartbeat", b"{}", b""),                           # empty properties
    delivery("worker.heartbeat", b"{}", b"\xff\xff\xff"),               # bad properties
    delivery("worker.heartbeat", b"{}", props_of(**KOMBU) + b"x"),      # trailing bytes
    delivery("worker.heartbeat", b"{}", props_of(**KOMBU), body_size=3),   # short body
    short_header(4),                                                    # header too short
    short_header(11),
    short_header(12),
    delivery("worker.heartbeat", b"{}", props_of(**KOMBU), body_size=1),   # long body
    delivery("worker.heartbeat", b"{}", props_of(**KOMBU), body_size=0),   # body frame after
    delivery("worker.heartbeat", b"{}" * 3000, props_of(**KOMBU), frame_max=1000,
             body_size=5000),                                           # frames overrun
    delivery(b"\xff\xfe", b"{}", props_of(**KOMBU)),                    # key not UTF-8
    delivery(b"\xed\xa0\x80", b"{}", props_of(**KOMBU)),                # a surrogate
]


@pytest.mark.parametrize("index", range(len(HOSTILE)))
def test_hostile_frames(gossip, logged, index):
    rng = random.Random(index)
    good = random_stream(rng, 10)
    stream = good + HOSTILE[index] + heartbeat_delivery("after@x")
    for cuts in ([], [len(good)], [len(good) + 1], random_cuts(rng, len(stream), 20)):
        differential(gossip, stream, cuts, logged=logged)


def test_hostile_headers_and_bodies(gossip, logged):
    """Deliveries whose header or body frame is broken in every field."""
    one = heartbeat_delivery("a@x")
    method_size = 7 + int.from_bytes(one[3:7], "big") + 1
    header_size = 7 + int.from_bytes(one[method_size + 3:method_size + 7], "big") + 1
    rng = random.Random(1)
    for at in range(len(one)):
        for value in {0, 1, 2, 3, 0x3C, 0xCE, 0xFF, one[at] ^ 1}:
            if value == one[at]:
                continue
            broken = one[:at] + bytes([value]) + one[at + 1:]
            stream = one + broken + one
            cuts = random_cuts(rng, len(stream), 3) if at % 3 else []
            differential(gossip, stream, cuts, logged=logged)
    assert method_size < header_size < len(one)


@pytest.mark.parametrize("seed", range(30))
def test_random_mutations(gossip, logged, seed):
    """Random bytes of a random stream changed, cut out or repeated."""
    rng = random.Random(1000 + seed)
    stream = bytearray(random_stream(rng, 20))
    for _ in range(rng.choice([1, 2, 5])):
        at = rng.randrange(len(stream))
        roll = rng.random()
        if roll < 0.6:
            stream[at] = rng.randrange(256)
        elif roll < 0.8:
            del stream[at:at + rng.randrange(1, 30)]
        else:
            stream[at:at] = stream[at:at + rng.randrange(1, 30)]
    stream = bytes(stream)
    differential(gossip, stream, random_cuts(rng, len(stream), rng.choice([0, 3, 30])),
                 cache_size=rng.choice([2, 16384]), logged=logged)


def test_many_senders_past_the_cache(gossip, logged):
    """More senders than the caches hold: the scanner calls the reader's
    template logic (_props_of) for what is not cached."""
    stream = b"".join(heartbeat_delivery(f"w{i}@x", i + 1) for i in range(300))
    held, tails, error, _ = differential(gossip, stream * 2, cache_size=16, logged=logged)
    assert error is None and len(held) == 600
    assert [item[1]["hostname"] for item, _, _ in held[:300]] == [
        f"w{i}@x" for i in range(300)]
