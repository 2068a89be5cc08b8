"""Feed RabbitMQ deliveries through the AMQP fast reader for an instruction
count (under valgrind --tool=callgrind; ``scripts/callgrind.sh`` does the
same for ``Gossip.on_message``).

``python benchmarks/callgrind_amqp.py IMPLEMENTATION LOOPS [MODE]``:
2,000 workers join, then LOOPS x 2,000 heartbeat deliveries (the frames
RabbitMQ sends for kombu's event messages: ``basic.deliver``, content header,
one body frame; the properties of the captured messages of tests/data/wire,
one ``hostname`` header per sender) are read by ``AMQPReader.fill()`` from a
fake socket that hands out 128 KiB per ``recv()`` (so deliveries are split
between reads, as on the wire), 250 deliveries per drain, built fresh so
their timestamps stay within the drift limit however slowly valgrind runs.
MODE ``read`` (the default) counts ``fill()`` and ``apply_pending()``
(parse + on_raw), ``parse`` only ``fill()``.  What runs under
``itertools.starmap`` is what ``--toggle-collect=starmap_next`` counts::

    valgrind --tool=callgrind --toggle-collect=starmap_next \\
        .venv/bin/python benchmarks/callgrind_amqp.py cython 5 read

With ``GOSSIP_FAST_AMQP_PY_PARSE=1`` the reader keeps its Python splitter
even with the compiled core (to compare the two in one tree).
"""
import os
import sys
import time
import types
from collections import deque
from itertools import starmap
from struct import pack

import amqp
from amqp.serialization import dumps

from gossip_fast import bench
from gossip_fast.fastpath.amqp import AMQPReader

WORKERS = 2000
BATCH = 250
PIECE = 1 << 17
CONSUMER_TAG = 'amq.ctag-3bN0e5wLvv3OQ9kQ8XzM2A'   # RabbitMQ's shape


def delivery(index, clock, now, tag):
    """The frames of one heartbeat delivery of worker *index*."""
    name = bench.hostname(index)
    body = bench.heartbeat_body(name, clock, now, pid=10_000 + index, freq=bench.FREQ)
    args = dumps('sLbss', [CONSUMER_TAG, tag, False, 'celeryev', 'worker.heartbeat'])
    method = pack('>HH', 60, 60) + args
    message = amqp.Message(body, application_headers={'hostname': name},
                           content_type='application/json', content_encoding='utf-8',
                           delivery_mode=1, priority=0)
    header = pack('>HHQ', 60, 0, len(body)) + message._serialize_properties()
    return b''.join((pack('>BHI', 1, 1, len(method)), method, b'\xce',
                     pack('>BHI', 2, 1, len(header)), header, b'\xce',
                     pack('>BHI', 3, 1, len(body)), body, b'\xce'))


def make_reader(implementation):
    gossip, _ = bench.make_gossip(implementation)
    channel = types.SimpleNamespace(connection=types.SimpleNamespace(client=None))
    reader = AMQPReader(gossip, channel, None)
    pieces = []

    def recv(size):
        if not pieces:
            raise BlockingIOError
        return pieces.pop(0)

    sock = types.SimpleNamespace(recv=recv, send=len)
    reader._attach(sock, 1)
    if os.environ.get('GOSSIP_FAST_AMQP_PY_PARSE'):
        reader._scanner = None
    return gossip, reader, pieces


def drain(reader, apply):
    reader.fill(0.0)
    if apply:
        reader.apply_pending(time.monotonic() + 3600)


def main(implementation, loops, mode='read'):
    gossip, reader, pieces = make_reader(implementation)
    tag = 0
    stream = b''
    clock = 1
    for loop in range(loops + 1):   # the first pass: the workers join (not counted)
        for start in range(0, WORKERS, BATCH):
            now = time.time()
            for index in range(start, start + BATCH):
                tag += 1
                stream += delivery(index, clock, now, tag)
                clock += 1
            # whole pieces (a delivery may straddle two drains) but for the
            # last drain of a loop: each loop counts its own deliveries
            last = start + BATCH >= WORKERS
            cut = len(stream) if last else len(stream) - len(stream) % PIECE
            pieces.extend(stream[i:i + PIECE] for i in range(0, cut, PIECE))
            stream = stream[cut:]
            if loop == 0:
                drain(reader, True)
            else:
                deque(starmap(drain, [(reader, mode == 'read')]), 0)
                if mode != 'read':
                    reader.apply_pending(time.monotonic() + 3600)
    assert not reader.pending and not reader._buf, (len(reader.pending), len(reader._buf))
    assert gossip._receiver.stats()['received'] == WORKERS * (loops + 1), gossip._receiver.stats()
    assert len(gossip.state.workers) == WORKERS


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
