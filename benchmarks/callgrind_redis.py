"""Feed Redis pub/sub messages through the Redis fast reader for an
instruction count (under valgrind --tool=callgrind; ``benchmarks/callgrind_amqp.py``
does the same for RabbitMQ, ``scripts/callgrind.sh`` for ``Gossip.on_message``).

``python benchmarks/callgrind_redis.py IMPLEMENTATION LOOPS [MODE]``:
2,000 workers join, then LOOPS x 2,000 heartbeats (pmessages of kombu's
Redis envelope, byte for byte as kombu's Redis channel publishes Celery's
events, as a pattern subscription receives them) are read by
``RedisReader.fill()`` from a fake socket that hands out one receive buffer
per ``recv_into()`` (so messages are split between reads, as on the wire),
250 messages per drain, built fresh so their timestamps stay within the
drift limit however slowly valgrind runs.  MODE ``read`` (the default)
counts ``fill()`` and ``apply_pending()`` (split + on_raw), ``parse`` only
``fill()``.  What runs under ``itertools.starmap`` is what
``--toggle-collect=starmap_next`` counts::

    valgrind --tool=callgrind --toggle-collect=starmap_next \\
        .venv/bin/python benchmarks/callgrind_redis.py cython 5 read
"""
import base64
import json
import sys
import time
import types
import uuid
from collections import deque
from itertools import starmap

from gossip_fast import bench
from gossip_fast.fastpath.redis import RedisReader

WORKERS = 2000
BATCH = 250
PATTERN = b'/0.celeryev/worker.*'
CHANNEL = b'/0.celeryev/worker.heartbeat'


def bulk(data):
    return b'$%d\r\n%s\r\n' % (len(data), data)


def pmessage(index, clock, now):
    """One heartbeat of worker *index* as the subscriber reads it."""
    name = bench.hostname(index)
    body = bench.heartbeat_body(name, clock, now, pid=10_000 + index, freq=bench.FREQ)
    envelope = json.dumps({  # kombu's Redis channel: json.dumps of this dict
        'body': base64.b64encode(body).decode(),
        'content-encoding': 'utf-8',
        'content-type': 'application/json',
        'headers': {'hostname': name},
        'properties': {
            'delivery_mode': 1,
            'delivery_info': {'exchange': 'celeryev', 'routing_key': 'worker.heartbeat'},
            'priority': 0, 'body_encoding': 'base64',
            'delivery_tag': str(uuid.uuid4()),
        },
    }).encode()
    return b'*4\r\n' + bulk(b'pmessage') + bulk(PATTERN) + bulk(CHANNEL) + bulk(envelope)


def make_reader(implementation):
    gossip, _ = bench.make_gossip(implementation)
    channel = types.SimpleNamespace(connection=types.SimpleNamespace(client=None))
    reader = RedisReader(gossip, channel, None)
    reader._new_parser()
    pieces = []

    def recv_into(buffer):
        if not pieces:
            raise BlockingIOError
        piece = pieces.pop(0)
        buffer[:len(piece)] = piece
        return len(piece)

    reader._sock = types.SimpleNamespace(recv_into=recv_into, send=len)
    return gossip, reader, pieces


def drain(reader, apply):
    reader.fill(time.monotonic() + 3600)  # reads all it is handed (< max_read_bytes)
    if apply:
        reader.apply_pending(time.monotonic() + 3600)


def main(implementation, loops, mode='read'):
    gossip, reader, pieces = make_reader(implementation)
    piece = len(reader._buf)
    stream = b''
    clock = 1
    for loop in range(loops + 1):   # the first pass: the workers join (not counted)
        for start in range(0, WORKERS, BATCH):
            now = time.time()
            for index in range(start, start + BATCH):
                stream += pmessage(index, clock, now)
                clock += 1
            # whole pieces (a message may straddle two drains) but for the
            # last drain of a loop: each loop counts its own messages
            last = start + BATCH >= WORKERS
            cut = len(stream) if last else len(stream) - len(stream) % piece
            pieces.extend(stream[i:i + piece] for i in range(0, cut, piece))
            stream = stream[cut:]
            if loop == 0:
                drain(reader, True)
            else:
                deque(starmap(drain, [(reader, mode == 'read')]), 0)
                if mode != 'read':
                    reader.apply_pending(time.monotonic() + 3600)
    assert not reader.pending and not pieces, (len(reader.pending), len(pieces))
    assert gossip._receiver.stats()['received'] == WORKERS * (loops + 1), gossip._receiver.stats()
    assert len(gossip.state.workers) == WORKERS


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
