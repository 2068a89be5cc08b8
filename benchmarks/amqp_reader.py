"""CPU of the RabbitMQ fast reader next to kombu's consumer, in process.

One process consumes byte-realistic heartbeats that another publishes at a
fixed rate, with our Gossip step built as the tests build it
(``tests.test_fastpath_amqp.Node``): the fast reader drained every
``max_delay`` as under load, or kombu's consumer with ``drain_events``.
Prints the CPU seconds of the consuming process per heartbeat, for both
implementations::

    python -m benchmarks.amqp_reader [AMQP_URL] [--workers N] [--total N] [--rate R]

Without a URL it starts its own RabbitMQ (tests/brokers.py).  The real
worker's cost is measured by the cluster benchmark (benchmarks/cluster).
"""
import os
import socket
import subprocess
import sys
import time

import amqp
from kombu import Connection

from gossip_fast.simulate import heartbeat_body
from tests.conftest import load_core
from tests.test_fastpath_amqp import Node

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def publish_heartbeats(url, workers, total, rate):
    """Byte-realistic heartbeats of *workers* simulated workers, *rate* per
    second (py-amqp; run in its own process)."""
    conn = Connection(url)
    conn.connect()
    channel = conn.connection.channel()
    names = [f"sim{i}@node{i % 64}" for i in range(workers)]
    started = time.monotonic()
    for n in range(total):
        i = n % workers
        message = amqp.Message(
            heartbeat_body(names[i], n + 1, time.time(), pid=10_000 + i),
            content_type="application/json", content_encoding="utf-8",
            application_headers={"hostname": names[i]}, delivery_mode=1, priority=0)
        channel.basic_publish(message, exchange="celeryev", routing_key="worker.heartbeat")
        delay = started + (n + 1) / rate - time.monotonic()
        if delay > 0.002:
            time.sleep(delay)
    conn.release()


def measure(core, url, classic, workers, total, rate):
    """CPU seconds of this process per heartbeat received, while another
    process publishes them: the reader drained every 0.1 s as the worker's
    timer does, or kombu's consumer with ``drain_events``."""
    node = Node(core, url, classic=classic)
    try:
        publisher = subprocess.Popen(
            [sys.executable, "-c",
             "from benchmarks.amqp_reader import publish_heartbeats as p; "
             f"p({url!r}, {workers}, {total}, {rate})"], cwd=ROOT)
        reader = node.reader
        limit = time.monotonic() + total / rate + 30
        cpu = time.process_time()
        if classic:
            while node.received < total and time.monotonic() < limit:
                try:
                    node.connection.drain_events(timeout=0.1)
                except socket.timeout:
                    pass
        else:
            while node.received + reader.shed < total and time.monotonic() < limit:
                reader.drain()
                time.sleep(reader.max_delay)
        cpu = time.process_time() - cpu
        publisher.wait(30)
        assert node.received > 0.9 * total, node.gossip.stats()
        return cpu / node.received, node.gossip.stats()
    finally:
        node.close()


def main(argv):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="AMQP URL (default: start a broker)")
    parser.add_argument("--workers", type=int, default=2000)
    parser.add_argument("--total", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args(argv)
    server = None
    if args.url is None:
        from tests.brokers import RabbitMQServer
        server = RabbitMQServer().start()
        args.url = server.url
    try:
        print(f"{args.total} heartbeats of {args.workers} workers at {args.rate:g}/s, "
              f"CPU of the receiving process per heartbeat:")
        for name in ("cython", "python"):
            core = load_core(name)
            fast, stats = measure(core, args.url, False, args.workers, args.total, args.rate)
            classic, _ = measure(core, args.url, True, args.workers, args.total, args.rate)
            print(f"  {name:6}: fast reader {fast * 1e6:6.1f} us   kombu consumer "
                  f"{classic * 1e6:6.1f} us   ({classic / fast:.1f}x)   "
                  f"shed {stats['receive']['shed']}", flush=True)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
