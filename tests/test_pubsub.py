"""The compiled splitter of Redis pub/sub streams (``PubSubScanner`` of
``src/pubsub.pyx``) against the pure-Python way the Redis reader does the
same (hiredis, then ``envelope_parts``: msgspec): the same events and the
same other replies, from the same bytes however they are split.

The compiled core is imported explicitly (it is what is tested); with the
fallback forced (``GOSSIP_FAST_NO_EXTENSIONS=1``) the file is skipped, as is
every compiled-only test."""
import base64
import json
import random
import time
import uuid

import pytest

hiredis = pytest.importorskip("hiredis")
pytest.importorskip("msgspec")

from gossip_fast.fastpath.redis import envelope_parts  # noqa: E402
from gossip_fast.simulate import event_body, heartbeat_body  # noqa: E402

from . import wire  # noqa: E402
from .conftest import load_core  # noqa: E402

PATTERN = b"/0.celeryev/worker.*"


@pytest.fixture(scope="module")
def Scanner():
    return load_core("cython").PubSubScanner


def fallback(data):
    """The reader's ``_envelope``, but for its counters and de-duplication;
    marked, to tell what the scanner left to it."""
    if not data:
        return None
    return ("fallback", envelope_parts(data)[0])


def bulk(data):
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pmessage(data, routing_key=b"worker.heartbeat"):
    return (b"*4\r\n" + bulk(b"pmessage") + bulk(PATTERN)
            + bulk(b"/0.celeryev/" + routing_key) + bulk(data))


def kombu_envelope(event, hostname="w1@h", routing_key="worker.heartbeat", **changes):
    """The envelope of the event body *event* as kombu's Redis channel
    writes it (key order included); *changes* replace its keys."""
    envelope = {
        "body": base64.b64encode(event).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": hostname},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    envelope.update(changes)
    return json.dumps(envelope).encode()


def reference(stream):
    """What the pure-Python path (RedisReader._parse with hiredis) makes of
    *stream*: (events, other replies)."""
    reader = hiredis.Reader()
    reader.feed(stream)
    events, others = [], []
    while True:
        reply = reader.gets()
        if reply is False:
            return events, others
        if isinstance(reply, list) and len(reply) == 4 and reply[0] == b"pmessage":
            item = fallback(reply[3])
            if item is not None:
                events.append(item[1])
        else:
            others.append(reply)


def scanned(Scanner, stream, cuts=()):
    """What the compiled scanner makes of *stream* fed in pieces:
    (events, other replies, events as marked by the fallback)."""
    scanner = Scanner(fallback)
    events, others = [], []
    start = 0
    for end in sorted(cuts) + [len(stream)]:
        scanner.feed(stream[start:end])
        others.extend(scanner.scan(events))
        start = end
    assert scanner.buffered == 0
    return [e[1] if e[0] == "fallback" else e for e in events], others, events


def same(a, b):
    """Replies compared by value (hiredis's ReplyError has no __eq__)."""
    norm = [(type(x).__name__, str(x)) if isinstance(x, Exception) else x for x in a]
    return norm == [(type(x).__name__, str(x)) if isinstance(x, Exception) else x for x in b]


def test_captured_envelopes_are_taken_without_the_fallback(Scanner):
    captured = [json.loads(line)["data"].encode()
                for line in open(wire.HERE + "/redis-events.jsonl")]
    stream = b"".join(pmessage(data) for data in captured)
    events, others, raw = scanned(Scanner, stream)
    assert others == [] and all(e[0] != "fallback" for e in raw)
    assert events == reference(stream)[0]
    assert [e[0] for e in events] == [json.loads(d)["properties"]["delivery_info"]["routing_key"]
                                      for d in captured]


def test_held_events_are_out_of_the_garbage_collectors_sight(Scanner):
    """A backlog of tracked tuples made CPython run full collections over
    the whole table while the reader caught up: the scanner's events are
    untracked, and a string field that changes is still read right."""
    import gc
    stream = b"".join(pmessage(kombu_envelope(heartbeat_body(f"w{i}@h", i + 1, time.time()),
                                              hostname=f"w{i}@h",
                                              routing_key=("worker.heartbeat" if i % 3
                                                           else "worker-custom")))
                      for i in range(12))
    events, _, _ = scanned(Scanner, stream)
    assert len(events) == 12
    assert not any(gc.is_tracked(e) for e in events)
    assert [e[0] for e in events] == ["worker-custom" if i % 3 == 0 else "worker.heartbeat"
                                      for i in range(12)]
    assert events == reference(stream)[0]
    item = ("worker.heartbeat", {"hostname": "a@b"}, b"{}", "application/json", "utf-8", "x")
    assert gc.is_tracked(item) and load_core("cython").held(item) is item
    assert not gc.is_tracked(item)


def odd_envelopes(rng):
    """Envelopes the compiled scanner must leave to the fallback, or take
    with the same result."""
    body = heartbeat_body("odd@h", 3, 1.5e9)
    b64 = base64.b64encode(body).decode()
    yield kombu_envelope(body, hostname="h\u00e9@x")                # non-ASCII
    yield kombu_envelope(body, hostname='q"uote@x')                 # escaped quote
    yield kombu_envelope(body, hostname="tab\t@x")                  # escaped control
    yield kombu_envelope(body, routing_key="worker.h\u00e9")
    yield kombu_envelope(b"")                                       # empty body
    yield kombu_envelope(b"x" * 70_000)                             # big body
    yield kombu_envelope(body, body=b64[:-4] + "QR==")              # non-zero pad bits
    yield kombu_envelope(body, body=b64 + "\n")                     # not canonical
    yield kombu_envelope(body, body=b64[:-1])                       # bad length
    yield kombu_envelope(body, body="!!!!" + b64[4:])               # bad alphabet
    yield kombu_envelope(body, body=None)
    yield kombu_envelope(body, headers={"hostname": "a@x", "extra": "1"})
    yield kombu_envelope(body, headers={})
    yield kombu_envelope(body, headers=None)
    yield kombu_envelope(body, **{"content-type": None})
    envelope = json.loads(kombu_envelope(body))
    yield json.dumps(envelope, separators=(",", ":")).encode()      # compact
    yield json.dumps(envelope, indent=1).encode()                   # spaced
    yield json.dumps(dict(reversed(list(envelope.items())))).encode()  # reordered
    for key, value in (("body_encoding", "utf-8"), ("delivery_tag", 7),
                       ("delivery_mode", "1"), ("priority", 10 ** 30), ("priority", -1),
                       ("priority", 0.5), ("delivery_mode", 2)):
        changed = json.loads(kombu_envelope(body))
        changed["properties"][key] = value
        yield json.dumps(changed).encode()
    yield b"not json at all"
    yield b"{}"
    yield b"[1, 2]"
    yield kombu_envelope(body) + b" "
    yield kombu_envelope(body)[:-1]
    data = bytearray(kombu_envelope(body))
    for _ in range(20):  # random byte flips
        flipped = bytearray(data)
        flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        yield bytes(flipped)


def test_odd_envelopes_give_what_the_python_path_gives(Scanner):
    rng = random.Random(5)
    datas = list(odd_envelopes(rng))
    stream = b"".join(pmessage(d) for d in datas)
    events, others, _ = scanned(Scanner, stream)
    assert others == []
    assert events == reference(stream)[0]
    assert len(events) == len(datas)


def test_every_byte_in_every_place_of_the_body_and_a_string(Scanner):
    """The table-driven base64 decoder and string check against the
    Python path: each of the 256 byte values at each place of a short
    body's base64 (padded by one and by two) and of the hostname, and the
    envelope cut at every length."""
    datas = []
    for body in (b'{"a": 1}', b'{"ab": 1}', b'{"abc": 1}'):
        envelope = kombu_envelope(body, hostname="w@h")
        start = envelope.index(b'"body": "') + len(b'"body": "')
        end = envelope.index(b'"', start)
        for place in range(start, end):
            for value in range(256):
                datas.append(envelope[:place] + bytes([value]) + envelope[place + 1:])
    envelope = kombu_envelope(b'{"a": 1}', hostname="w@h")
    start = envelope.index(b'"w@h"') + 1
    for place in range(start, start + 3):
        for value in range(256):
            datas.append(envelope[:place] + bytes([value]) + envelope[place + 1:])
    datas.extend(envelope[:length] for length in range(1, len(envelope)))
    stream = b"".join(pmessage(d) for d in datas)
    events, others, raw = scanned(Scanner, stream)
    assert others == []
    assert events == reference(stream)[0]
    assert len(events) == len(datas)
    taken = sum(1 for e in raw if e[0] != "fallback")
    assert 0 < taken < len(datas)  # both ways were taken


OTHER_REPLIES = [
    b"*3\r\n$10\r\npsubscribe\r\n$20\r\n/0.celeryev/worker.*\r\n:1\r\n",
    b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
    b"+PONG\r\n", b"-ERR unknown command\r\n", b":42\r\n", b"$-1\r\n", b"*-1\r\n",
    b"*0\r\n", b"$0\r\n\r\n",
    b"*4\r\n$8\r\npmessage\r\n:1\r\n$3\r\nabc\r\n$2\r\n{}\r\n",   # odd element types
    b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$-1\r\n",     # null data
    b"*3\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n",            # too short
    b"*4\r\n$7\r\nmessage\r\n$1\r\np\r\n$1\r\nc\r\n$2\r\n{}\r\n",
]


def test_random_streams_split_anywhere(Scanner):
    rng = random.Random(11)
    odd = list(odd_envelopes(rng))
    taken = 0
    for round_ in range(300):
        parts = []
        for _ in range(rng.randrange(1, 30)):
            pick = rng.random()
            if pick < 0.5:
                host = f"w{rng.randrange(50)}@n{rng.randrange(3)}"
                body = (heartbeat_body(host, rng.randrange(10 ** 6), 1.7e9 + rng.random())
                        if rng.random() < 0.8 else
                        event_body("worker-custom", host, 1, 1.7e9, blob="x" * rng.randrange(300)))
                parts.append(pmessage(kombu_envelope(body, hostname=host)))
            elif pick < 0.8:
                parts.append(pmessage(rng.choice(odd)))
            else:
                parts.append(rng.choice(OTHER_REPLIES))
        stream = b"".join(parts)
        cuts = rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(0, 12)))
        events, others, marked = scanned(Scanner, stream, cuts)
        expected_events, expected_others = reference(stream)
        assert events == expected_events, round_
        assert same(others, expected_others), round_
        taken += sum(1 for e in marked if e[0] != "fallback")
    assert taken > 1000  # most standard envelopes did not need the fallback


def test_every_split_of_a_small_stream(Scanner):
    stream = (pmessage(kombu_envelope(heartbeat_body("a@h", 1, 1.7e9), hostname="a@h"))
              + b"+OK\r\n" + pmessage(b"{}") + b":7\r\n")
    expected = scanned(Scanner, stream)[:2]
    for cut in range(1, len(stream)):
        assert scanned(Scanner, stream, [cut])[:2] == expected, cut
        assert scanned(Scanner, stream, [cut, min(cut + 3, len(stream) - 1)])[:2] == expected


def test_headers_and_strings_are_shared_and_the_caches_bounded(Scanner):
    scanner = Scanner(fallback)
    scanner.cache_size = 4
    out = []
    for i in range(10):
        host = f"w{i % 2}@h"
        scanner.feed(pmessage(kombu_envelope(heartbeat_body(host, i, 1.7e9), hostname=host)))
        scanner.scan(out)
    assert out[0][1] is out[2][1] and out[0][1] == {"hostname": "w0@h"}
    assert out[0][0] is out[1][0] == "worker.heartbeat"
    hosts = [f"n{i}@h" for i in range(12)]  # more hosts than the cache holds
    for host in hosts:
        scanner.feed(pmessage(kombu_envelope(b"{}", hostname=host)))
    scanner.scan(out)
    assert [e[1]["hostname"] for e in out[10:]] == hosts


def test_feed_offset_and_length_as_hiredis(Scanner):
    data = b"xx+OK\r\n:1\r\nyy"
    scanner = Scanner(fallback)
    scanner.feed(bytearray(data), 2, len(data) - 4)
    assert scanner.scan([]) == [b"OK", 1]
    scanner.feed(memoryview(b"+A\r\n"))
    assert scanner.scan([]) == [b"A"]
    with pytest.raises(ValueError):
        scanner.feed(b"abc", 2, 5)


def test_framing_errors_raise_as_hiredis_does(Scanner):
    for bad in (b"*2\r\n*1\r\n:1\r\n:2\r\n", b"?what\r\n", b"$abc\r\n", b":x\r\n"):
        scanner = Scanner(fallback)
        scanner.feed(bad)
        with pytest.raises(hiredis.ProtocolError):
            scanner.scan([])


def test_dedup_sends_everything_to_the_fallback(Scanner):
    seen = []
    scanner = Scanner(lambda data: seen.append(data) or ("fb",))
    scanner.dedup = True
    data = kombu_envelope(heartbeat_body("a@h", 1, 1.7e9), hostname="a@h")
    scanner.feed(pmessage(data) * 2)
    out = []
    scanner.scan(out)
    assert out == [("fb",), ("fb",)] and seen == [data, data]


def test_compiled_coalesce_matches_the_python_one():
    """The shedding pass of the compiled core (src/shedding.pyx) and
    gossip_fast.fastpath.base.coalesce give the same backlog and count."""
    from gossip_fast.fastpath.base import coalesce, heartbeat_sender
    compiled = load_core("cython").coalesce
    rng = random.Random(3)
    keys = ["worker.heartbeat"] * 6 + ["worker.online", "worker.elect", "worker.custom"]
    for round_ in range(300):
        items = []
        for i in range(rng.randrange(0, 200)):
            pick = rng.random()
            if pick < 0.85:
                headers = rng.choice([{"hostname": f"w{rng.randrange(20)}@x"}, {},
                                      {"hostname": ""}, {"hostname": 5}, None])
                items.append((rng.choice(keys), headers, b"%d" % i, "application/json",
                              "utf-8", "celeryev"))
            else:
                items.append(b"raw envelope %d" % i)
        cap = rng.choice([0, 1, 5, 50, 1000])
        assert compiled(list(items), heartbeat_sender, cap) == coalesce(
            list(items), heartbeat_sender, cap), round_
