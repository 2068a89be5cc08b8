"""Digest-mode wire format (gossip_fast/digest/codec.py, docs/digest-mode.md)."""
import json
import logging
import math
import zlib

import pytest

from gossip_fast.digest import codec
from gossip_fast.digest.codec import decode, encode


def host(i):
    return f'celery@worker-{i:05d}.prod.example.com'


def digest(**kw):
    fields = dict(hostname='relay@a', pid=11, clock=1234, time=1_700_000_000.5,
                  term=3, seq=8, base_term=3, base=7, count=2, hash=0xDEADBEEF01234567,
                  relays=('relay@a', 'relay@b'), interval=1.0,
                  joined=(codec.Member('w1@x', 101, 2.0, 3, 1_700_000_000_123),),
                  left=('w2@x',), lost=('w3@x',))
    fields.update(kw)
    return codec.Digest(**fields)


def snapshot(n=3, **kw):
    members = tuple(codec.Member(host(i), 1000 + i, 2.0, 3 if i % 2 else 0, 0) for i in range(n))
    fields = tuple(codec.PeerFields(i, 10 * i, (0.1, 0.2, 0.3), 'py-celery', '5.7.0', 'Linux')
                   for i in range(n))
    vh = codec.ViewHash((m.hostname, m.pid) for m in members)
    base = dict(hostname='relay@a', pid=11, clock=99, time=1_700_000_000.0, term=1, seq=5,
                count=vh.count, hash=vh.value, relays=('relay@a',), interval=1.0,
                members=members, fields=fields, request='req-1')
    base.update(kw)
    return codec.Snapshot(**base)


def test_digest_round_trip():
    msg = digest()
    body = encode(msg)
    assert body.startswith(b'{')
    back, reason = decode(body)
    assert reason is None
    assert back == msg
    assert isinstance(back, codec.Digest) and back.kind == 'd'


def test_snapshot_round_trip_compressed():
    msg = snapshot(200)
    body = encode(msg)
    assert body[:1] == b'x'  # over COMPRESS_ABOVE: zlib
    back, reason = decode(body)
    assert reason is None
    assert back == msg
    assert back.fields[3].sw_ver == '5.7.0'
    # the software triple is stored once, not per member
    assert json.loads(zlib.decompress(body))['w'] == [['py-celery', '5.7.0', 'Linux']]


def test_snapshot_without_fields_and_request():
    msg = snapshot(2, fields=(), request=None)
    back, reason = decode(encode(msg))
    assert reason is None
    assert back.fields == (codec.PeerFields(),) * 2 and back.request is None


def test_announce_round_trip():
    msg = codec.Announce('w9@x', 77, 5, 1_700_000_001.0, flags=3, term=2, seq=40, count=10,
                   hash=2 ** 64 - 1, request='r1')
    back, reason = decode(encode(msg))
    assert reason is None and back == msg
    plain = msg._replace(request=None)
    assert 'q' not in json.loads(encode(plain))
    assert decode(encode(plain))[0] == plain


def test_pulse_round_trip():
    msg = codec.Pulse('relay@a', 11, 5, 1_700_000_000.0, 2, 9, 100, 12345, ('relay@a', 's@b'), 1.0)
    body = encode(msg)
    assert len(body) < 200
    back, reason = decode(body)
    assert reason is None and back == msg and back.kind == 'p'
    assert decode(_mutated(msg, r=[])) == (None, 'bad_field:r')


def test_non_ascii_and_odd_hostnames_round_trip():
    for name in ('célery@hôte', 'a*b#c@x', 'x' * 255, 'lone\udc80surrogate@x'):
        msg = digest(joined=(codec.Member(name, 1, 2.0),), left=(), lost=())
        back, reason = decode(encode(msg))
        assert reason is None and back.joined[0].hostname == name


def test_sizes_are_small():
    # the numbers docs/digest-mode.md quotes: a quiet digest, one change,
    # and a 10,000-worker snapshot
    quiet = encode(digest(joined=(), left=(), lost=()))
    assert len(quiet) < 220, len(quiet)
    per_join = len(encode(digest(left=(), lost=()))) - len(quiet)
    assert per_join < 80, per_join
    big = encode(snapshot(10_000))
    assert len(big) < 200_000, len(big)


@pytest.mark.parametrize('body, reason', [
    (b'', 'not_json'),
    (b'not json', 'not_json'),
    (b'{"v": 1', 'not_json'),
    (b'[1, 2]', 'not_json'),
    (b'\xff\xfe{', 'not_json'),
    (b'x\x9c garbage', 'bad_zlib'),
    (b'{}', 'version'),
    (b'{"v": 2, "k": "d"}', 'version'),
    (b'{"v": true, "k": "d"}', 'version'),
    (12, 'not_bytes'),
    (None, 'not_bytes'),
])
def test_garbage_is_rejected_with_a_reason(body, reason):
    assert decode(body) == (None, reason)


def _mutated(msg, **changes):
    obj = json.loads(encode(msg, compress=False))
    for key, value in changes.items():
        if value is KeyError:
            obj.pop(key, None)
        else:
            obj[key] = value
    return json.dumps(obj).encode()


@pytest.mark.parametrize('changes, reason', [
    ({'k': 'z'}, 'kind'),
    ({'h': ''}, 'bad_field:h'),
    ({'h': 'x' * 256}, 'bad_field:h'),
    ({'h': 5}, 'bad_field:h'),
    ({'p': -1}, 'bad_field:p'),
    ({'p': 2 ** 31}, 'bad_field:p'),
    ({'p': True}, 'bad_field:p'),
    ({'c': 2 ** 63}, 'bad_field:c'),
    ({'c': 1.5}, 'bad_field:c'),
    ({'c': KeyError}, 'bad_field:c'),
    ({'ts': 'abc'}, 'bad_field:ts'),
    ({'ts': -1}, 'bad_field:ts'),
    ({'g': -1}, 'bad_field:g'),
    ({'s': 0}, 'bad_field:s'),
    ({'b': 8}, 'bad_field:b'),        # base must precede (term, seq)
    ({'bg': 4}, 'bad_field:b'),
    ({'n': 10 ** 9}, 'bad_field:n'),
    ({'x': 'zz'}, 'bad_field:x'),
    ({'x': 'g' * 16}, 'bad_field:x'),
    ({'r': []}, 'bad_field:r'),
    ({'r': ['a'] * 17}, 'bad_field:r'),
    ({'r': ['a', 'a']}, 'duplicate:r'),
    ({'i': 0}, 'bad_field:i'),
    ({'j': [['w@x', 1, 2.0, 3]]}, 'bad_field:j'),
    ({'j': [['w@x', 1, 'fast', 3, 0]]}, 'bad_field:j.freq'),
    ({'j': [['w@x', 1, 0, 3, 0]]}, 'bad_field:j.freq'),
    ({'j': [['w@x', 1, 2.0, -1, 0]]}, 'bad_field:j.flags'),
    ({'j': [['w@x', 1, 2.0, 3, 1.5]]}, 'bad_field:j.inc'),
    ({'j': [['w@x', -5, 2.0, 3, 0]]}, 'bad_field:j.pid'),
    ({'j': {'w@x': 1}}, 'bad_field:j'),
    ({'l': ['w1@x']}, 'duplicate:host'),  # joined and left at once
    ({'o': 'w3@x'}, 'bad_field:o'),
    ({'o': ['w3@x', 'w3@x']}, 'duplicate:o'),
])
def test_bad_digest_fields(changes, reason):
    assert decode(_mutated(digest(), **changes)) == (None, reason)


def test_nan_and_infinity_are_not_json():
    body = _mutated(digest()).replace(b'"i": 1.0', b'"i": NaN')
    assert decode(body) == (None, 'not_json')
    body = _mutated(digest()).replace(b'"ts": 1700000000.5', b'"ts": Infinity')
    assert decode(body) == (None, 'not_json')


@pytest.mark.parametrize('changes, reason', [
    ({'m': [['w@x', 1, 2.0, 3, 0, None, None, None]]}, 'bad_field:m'),
    ({'m': [['w@x', 1, 2.0, 3, 0, -1, None, None, -1]]}, 'bad_field:m.active'),
    ({'m': [['w@x', 1, 2.0, 3, 0, None, None, [1, 2], -1]]}, 'bad_field:m.loadavg'),
    ({'m': [['w@x', 1, 2.0, 3, 0, None, None, [1, 2, math.inf], -1]]}, 'not_json'),
    ({'m': [['w@x', 1, 2.0, 3, 0, None, None, None, 5]]}, 'bad_field:m.sw'),
    ({'m': [['w@x', 1, 2.0, 3, 0, None, None, None, -1]] * 2}, 'duplicate:m'),
    ({'w': [['a', 'b']]}, 'bad_field:w'),
    ({'w': [[1, 'b', 'c']]}, 'bad_field:w'),
    ({'q': 5}, 'bad_field:q'),
])
def test_bad_snapshot_fields(changes, reason):
    assert decode(_mutated(snapshot(2), **changes)) == (None, reason)


@pytest.mark.parametrize('changes, reason', [
    ({'f': 2 ** 16}, 'bad_field:f'),
    ({'q': ''}, 'bad_field:q'),
    ({'q': 'x' * 65}, 'bad_field:q'),
    ({'s': -1}, 'bad_field:s'),
])
def test_bad_announce_fields(changes, reason):
    msg = codec.Announce('w@x', 1, 2, 3.0, request='r')
    assert decode(_mutated(msg, **changes)) == (None, reason)


def test_zip_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(codec, 'MAX_BYTES', 10_000)
    bomb = zlib.compress(b'{"v":1,' + b' ' * 100_000 + b'}')
    assert len(bomb) < 10_000
    assert decode(bomb) == (None, 'too_large')
    assert decode(b'{' + b' ' * 10_001) == (None, 'too_large')


def test_truncated_zlib_is_refused():
    body = encode(snapshot(100))
    assert decode(body[:len(body) // 2]) == (None, 'bad_zlib')


def test_deeply_nested_json_does_not_raise():
    assert decode(b'{"v":' + b'[' * 100_000 + b']' * 100_000 + b'}')[0] is None


def test_random_bytes_never_raise():
    import random
    rng = random.Random(7)
    good = encode(digest())
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        msg, reason = decode(bytes(data))
        assert (msg is None) != (reason is None)


def test_decoder_counts_and_rate_limits_its_log():
    lines = []
    now = [100.0]
    dec = codec.DigestDecoder(log_interval=10.0, log=lambda *a: lines.append(a[0] % a[1:]),
                        clock=lambda: now[0])
    assert dec(encode(digest())) == digest()
    for _ in range(3):
        assert dec(b'junk', sender='bad@x') is None
    assert dec.decoded == 1 and dec.dropped == {'not_json': 3}
    assert len(lines) == 1 and 'bad@x' in lines[0] and 'not_json' in lines[0]
    now[0] += 11
    dec(b'junk')
    assert len(lines) == 2 and '2 more like it' in lines[1]


def test_decoder_logs_through_the_module_logger(caplog):
    with caplog.at_level(logging.WARNING, logger=codec.logger.name):
        codec.DigestDecoder()(b'{}', sender='w@x')
    assert 'dropped a message from w@x: version' in caplog.text


def test_view_hash_is_order_independent_and_incremental():
    members = [(host(i), 100 + i) for i in range(50)]
    a = codec.ViewHash(members)
    b = codec.ViewHash(reversed(members))
    assert a.value == b.value and len(a) == 50
    b.discard(host(3))
    assert b.value != a.value and len(b) == 49 and host(3) not in b
    b.add(host(3), 103)
    assert b.value == a.value
    b.add(host(3), 103)  # again: no change
    assert b.value == a.value and len(b) == 50
    b.add(host(3), 999)  # restarted with a new pid
    assert b.value == a.value ^ codec.member_hash(host(3), 103) ^ codec.member_hash(host(3), 999)
    assert len(b) == 50
    b.discard('nobody@x')
    assert len(b) == 50


def test_member_hash_is_stable():
    # a fixed value: the hash must not change between releases, platforms or runs
    assert codec.member_hash('w@x', 1) == int.from_bytes(
        __import__('hashlib').blake2b(b'w@x\x001', digest_size=8, person=b'gf-view1').digest(),
        'big')
