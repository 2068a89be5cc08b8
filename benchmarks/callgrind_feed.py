"""Feed heartbeats through ``Gossip.on_message`` for an instruction count
(run by ``scripts/callgrind.sh``, under valgrind --tool=callgrind).

``python benchmarks/callgrind_feed.py IMPLEMENTATION LOOPS [TRANSPORT]``:
2,000 workers join, then LOOPS x 2,000 heartbeats (real kombu messages,
built fresh 250 at a time so their timestamps stay within the drift limit
however slowly valgrind runs) are fed under ``itertools.starmap``, which is
what ``--toggle-collect=starmap_next`` counts: on_message and nothing else.
"""
import sys
from collections import deque
from itertools import repeat, starmap

from gossip_fast import bench

WORKERS = 2000
BATCH = 250


def main(implementation, loops, transport='redis'):
    gossip, prepare = bench.make_gossip(implementation)
    for start in range(0, WORKERS, BATCH):
        bench.feed(gossip, prepare,
                   bench.heartbeat_messages(transport, range(start, start + BATCH)))
    on_message = gossip.on_message
    clock = WORKERS + 1
    for _ in range(loops):
        for start in range(0, WORKERS, BATCH):
            messages = bench.heartbeat_messages(
                transport, range(start, start + BATCH), clock=clock)
            clock += BATCH
            deque(starmap(on_message, zip(repeat(prepare), messages)), 0)
    assert len(gossip.state.workers) == WORKERS


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
