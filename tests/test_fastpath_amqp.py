"""The RabbitMQ fast receive path (gossip_fast.fastpath.amqp), on a real broker.

Each test builds our Gossip bootstep (both implementations, through the
``core`` fixture) on a real kombu connection, calls ``get_consumers`` as the
worker's consumer does, publishes real events (Celery's own
``app.events.Dispatcher``, kombu producers or py-amqp) on other connections
and drains the reader.  The reference is the same bootstep forced to kombu's
classic consumer (``gossip_fast_receive = 'classic'``), fed the same events.

The last tests work on the frame parser alone, through a socket pair.
What the reader costs next to kombu's consumer is measured by
``python -m benchmarks.amqp_reader`` (a benchmark, not a test).
"""
import json
import os
import socket
import threading
import time
import types
import zlib
from struct import pack

import amqp
import kombu
import pytest
from amqp.serialization import dumps
from celery import Celery
from celery.events.event import get_exchange
from kombu import Connection, Producer
from kombu.asynchronous import Hub
from kombu.asynchronous.timer import Timer

from gossip_fast.fastpath.amqp import AMQPClosed, AMQPFrameError, AMQPReader
from gossip_fast.simulate import event_body, heartbeat_body

from .conftest import assert_watched, gossip_class, make_gossip

ME = "local@test"
LOAD = dict(loadavg=[0.17, 0.36, 0.46], sw_ident="py-celery", sw_ver="5.7.0", sw_sys="Linux")
FIELDS = ("hostname", "pid", "freq", "clock", "active", "processed", "loadavg", "sw_ident",
          "sw_ver", "sw_sys", "utcoffset", "timestamp", "type", "blob", "seq")


# -- helpers -----------------------------------------------------------------------


class Node:
    """Our Gossip bootstep on a real consumer connection to *url*."""

    def __init__(self, core, url, classic=False, hostname=ME, conf=None,
                 connection_options=None, **gossip_options):
        self.app = Celery("t", broker=url, set_as_current=False)
        self.app.conf.gossip_fast_receive = "classic" if classic else "auto"
        self.app.conf.update(conf or {})
        self.hub = Hub(Timer())  # kombu's, as the worker's event loop
        self.gossip = make_gossip(gossip_class(core), self.app, hostname=hostname,
                                  hub=self.hub, **gossip_options)
        self.connection = Connection(url, **(connection_options or {}))
        self.channel = self.connection.channel()
        self.consumers = self.gossip.get_consumers(self.channel)
        for consumer in self.consumers:
            consumer.consume()
        self.reader = self.gossip._reader
        assert (self.reader is None) == classic

    @property
    def received(self):
        return self.gossip._receiver.received

    def drain(self, until, timeout=15.0):
        """Drain (the reader as the worker's timer does, or kombu's
        consumer) until ``until(self)`` is true."""
        deadline = time.monotonic() + timeout
        while not until(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; stats: {self.gossip.stats()}")
            if self.reader is not None:
                self.reader.drain()
                time.sleep(0.02)
            else:
                try:
                    self.connection.drain_events(timeout=0.05)
                except socket.timeout:
                    pass

    def settle(self, quiet=0.3):
        """Drain until nothing more arrives for *quiet* seconds."""
        last, since = -1, time.monotonic()
        while time.monotonic() - since < quiet:
            if self.reader is not None:
                self.reader.drain()
            else:
                try:
                    self.connection.drain_events(timeout=0.05)
                except socket.timeout:
                    pass
            if self.received != last:
                last, since = self.received, time.monotonic()
            time.sleep(0.02)

    def table(self):
        return {hostname: {field: getattr(worker, field, None) for field in FIELDS}
                for hostname, worker in self.gossip.state.workers.items()}

    def observed(self):
        """What must be the same whichever path the events took."""
        gossip = self.gossip
        return {
            "table": self.table(),
            "clock": gossip.clock.value,
            "events": gossip._receiver.stats(),
            "dropped": dict(gossip.dropped),
            "sanitized": dict(gossip.sanitized),
            "sent": list(gossip.dispatcher.sent),
            "joins": gossip.state.joins,
            "leaves": gossip.state.leaves,
        }

    def close(self):
        self.gossip._stop_reader()
        self.hub.close()
        self.connection.release()


class Publisher:
    """Publishes events on its own connection, as workers do."""

    def __init__(self, url):
        self.app = Celery("pub", broker=url, set_as_current=False)
        self.connection = Connection(url)
        self.connection.connect()
        self.dispatchers = {}
        self.count = 0

    def send(self, hostname, type_, **fields):
        dispatcher = self.dispatchers.get(hostname)
        if dispatcher is None:
            dispatcher = self.dispatchers[hostname] = self.app.events.Dispatcher(
                self.connection, hostname=hostname, enabled=True)
        dispatcher.send(type_, **fields)
        self.count += 1

    def heartbeat(self, hostname, **fields):
        self.send(hostname, "worker-heartbeat",
                  **dict(dict(LOAD, freq=2.0, active=0, processed=0), **fields))

    def producer(self):
        return Producer(self.connection.default_channel,
                        exchange=get_exchange(self.connection))

    def raw(self, routing_key, body, **properties):
        """A py-amqp message with exactly these properties."""
        channel = self.connection.default_channel
        channel.basic_publish(amqp.Message(body, **properties), exchange="celeryev",
                              routing_key=routing_key)
        self.count += 1

    def close(self):
        self.connection.release()


@pytest.fixture
def url(rabbitmq_server, monkeypatch):
    monkeypatch.delenv("GOSSIP_FAST_RECEIVE", raising=False)
    return rabbitmq_server.url


@pytest.fixture
def nodes(core, url):
    """Make nodes; all are closed at the end."""
    made = []

    def make(**kwargs):
        node = Node(core, url, **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


@pytest.fixture
def publisher(url):
    pub = Publisher(url)
    yield pub
    pub.close()


def queue_exists(url, name):
    with Connection(url) as conn:
        try:
            conn.default_channel.queue_declare(name, passive=True)
        except amqp.exceptions.NotFound:
            return False
        return True


#: Unpickling this payload would call it: it must never happen.
UNPICKLED = []


def record_unpickling(value):
    UNPICKLED.append(value)
    return {"hostname": "pickled@x", "type": "worker-heartbeat"}


class Poison:
    def __reduce__(self):
        return (record_unpickling, ("unpickled",))


# -- the same results as kombu's consumer -------------------------------------------


@pytest.mark.broker
def test_get_consumers_starts_the_reader(nodes):
    node = nodes()
    reader = node.reader
    assert isinstance(reader, AMQPReader)
    assert node.consumers == []
    assert_watched(node.gossip)
    # its own connection, with the consumer connection's settings
    assert reader.conn is not node.connection
    mine, theirs = reader.conn.info(), node.connection.info()
    for key in ("hostname", "port", "userid", "password", "virtual_host", "ssl",
                "login_method", "connect_timeout", "transport_options", "heartbeat"):
        assert mine[key] == theirs[key], key
    # the stock queue: the Receiver's, declared on our channel
    assert reader.queue_name == reader.queue.name
    assert reader.queue.routing_key == "worker.#"
    assert reader.queue.exchange.name == "celeryev"
    assert reader.queue.message_ttl == node.gossip.heartbeat_interval
    assert node.gossip.stats()["receive"]["path"] == "amqp"


@pytest.mark.broker
def test_events_reach_the_table_as_with_kombu(nodes, publisher):
    fast, classic = nodes(), nodes(classic=True)
    peers = [f"w{i}@host{i % 3}" for i in range(6)]
    for peer in peers:
        publisher.send(peer, "worker-online", freq=2.0, active=0, processed=0, **LOAD)
    for round_ in range(3):
        for index, peer in enumerate(peers):
            publisher.heartbeat(peer, processed=round_ * 10 + index, active=round_)
        publisher.heartbeat(ME, processed=round_)              # our own
    publisher.send(peers[0], "worker-elect", id="e1", topic="task", action=None, cver=1)
    publisher.send(peers[1], "worker-elect-ack", id="unknown")
    publisher.send(peers[-1], "worker-offline", freq=2.0, active=0, processed=0, **LOAD)
    publisher.send(ME, "worker-offline")                        # our own again
    total = publisher.count
    for node in (fast, classic):
        node.drain(lambda node: node.received >= total)
        node.settle(quiet=0.2)
    assert fast.received == total
    assert fast.observed() == classic.observed()
    observed = fast.observed()
    assert set(observed["table"]) == set(peers[:-1])
    assert observed["events"]["own"] == 4
    assert observed["sent"] == [("worker-elect-ack", {"id": "e1"})]
    assert fast.table()[peers[2]]["processed"] == 22
    stats = fast.reader.stats()
    assert stats["received"] == total and stats["shed"] == 0 and stats["errors"] == 0


@pytest.mark.broker
def test_odd_messages_go_through_kombu(nodes, publisher):
    fast, classic = nodes(), nodes(classic=True)
    producer = publisher.producer()
    now = time.time()

    def body(hostname, **fields):
        return dict(hostname=hostname, utcoffset=0.0, pid=7, clock=5, freq=2.0,
                    timestamp=now, type="worker-heartbeat", **fields)

    # compressed JSON: kombu decompresses it
    producer.publish(body("zipped@x"), routing_key="worker.heartbeat", serializer="json",
                     compression="zlib", headers={"hostname": "zipped@x"})
    # pickle: never decoded (not in accept)
    producer.publish(Poison(), routing_key="worker.heartbeat", serializer="pickle",
                     headers={"hostname": "pickled@x"})
    publisher.count += 2
    # other content types and encodings, missing properties, empty body
    raw_json = heartbeat_body("plain@x", 3, now)
    publisher.raw("worker.heartbeat", raw_json, content_type="text/plain",
                  content_encoding="utf-8", application_headers={"hostname": "plain@x"})
    publisher.raw("worker.heartbeat", heartbeat_body("bare@x", 4, now))    # no properties
    publisher.raw("worker.heartbeat", heartbeat_body("nohdr@x", 5, now),
                  content_type="application/json", content_encoding="utf-8")
    publisher.raw("worker.heartbeat", heartbeat_body("latin@x", 6, now),
                  content_type="application/json", content_encoding="latin-1",
                  application_headers={"hostname": "latin@x"})
    # py-amqp decodes a body with its content encoding before kombu sees it
    publisher.raw("worker.heartbeat", heartbeat_body("utf16@x", 6, now).decode().encode(
                  "utf-16"), content_type="application/json", content_encoding="utf-16",
                  application_headers={"hostname": "utf16@x"})
    publisher.raw("worker.heartbeat", heartbeat_body("badcodec@x", 6, now),
                  content_type="application/json", content_encoding="x-no-such-codec",
                  application_headers={"hostname": "badcodec@x"})
    publisher.raw("worker.heartbeat", zlib.compress(heartbeat_body("gz@x", 7, now)),
                  content_type="application/json", content_encoding="utf-8",
                  application_headers={"hostname": "gz@x", "compression": "application/x-gzip"})
    publisher.raw("worker.heartbeat", b"", content_type="application/json",
                  content_encoding="utf-8", application_headers={"hostname": "empty@x"})
    publisher.raw("worker.heartbeat", b"[1, 2]", content_type="application/json",
                  content_encoding="utf-8", application_headers={"hostname": "list@x"})
    publisher.raw("worker.heartbeat", heartbeat_body("other@x", 8, now),
                  content_type="application/json", content_encoding="utf-8",
                  application_headers={"hostname": "mismatch@x", "n": 1, "f": 1.5,
                                       "t": True, "l": [1, "a"], "d": {"k": "v"}})
    total = publisher.count
    for node in (fast, classic):
        node.drain(lambda node: node.received >= total)
        node.settle(quiet=0.2)
    assert fast.observed() == classic.observed()
    table = fast.table()
    assert {"zipped@x", "gz@x", "nohdr@x", "latin@x", "utf16@x", "badcodec@x"} <= set(table)
    for dropped in ("pickled@x", "plain@x", "bare@x", "empty@x", "list@x", "other@x"):
        assert dropped not in table
    assert UNPICKLED == []
    assert fast.gossip.dropped["decode_error"] >= 1
    assert fast.gossip.dropped["hostname_mismatch"] == 1


@pytest.mark.broker
def test_big_bodies_span_several_body_frames(nodes, publisher):
    fast, classic = nodes(), nodes(classic=True)
    frame_max = fast.reader.conn.connection.frame_max
    blob = "x" * (2 * frame_max + 1234)      # three body frames
    publisher.heartbeat("small@x", seq=1)
    publisher.heartbeat("big@x", blob=blob, seq=2)
    publisher.heartbeat("small@x", seq=3)
    total = publisher.count
    for node in (fast, classic):
        node.drain(lambda node: node.received >= total)
    assert fast.observed() == classic.observed()
    assert fast.table()["big@x"]["blob"] == blob
    assert fast.table()["small@x"]["seq"] == 3
    assert fast.reader.stats()["bytes_read"] > len(blob)


# -- overload, failures, stopping ------------------------------------------------------


class Recorder:
    """Stands for the reader's receiver: records what is applied."""

    def __init__(self, receiver):
        self.receiver = receiver
        self.applied = []

    def on_raw(self, routing_key, headers, body, *rest):
        self.applied.append((routing_key, headers.get("hostname"), body))
        return self.receiver.on_raw(routing_key, headers, body, *rest)

    def apply_held(self, items, *args):
        done = self.receiver.apply_held(items, *args)
        self.applied.extend((item[0], item[1].get("hostname"), item[2])
                            for item in items[:done] if type(item) is tuple)
        return done


@pytest.mark.broker
def test_flood_over_budget_sheds_only_superseded_heartbeats(nodes, publisher):
    # a long TTL, so that nothing expires in the broker on a slow machine
    node = nodes(heartbeat_interval=60.0)
    reader = node.reader
    reader.budget = 0.002
    recorder = reader.receiver = Recorder(reader.receiver)
    hosts = [f"w{i}@flood" for i in range(50)]
    seq = 0
    for round_ in range(60):
        for host in hosts:
            seq += 1
            publisher.heartbeat(host, seq=seq, processed=round_)
        if round_ % 10 == 5:
            publisher.send(f"new{round_}@flood", "worker-online", freq=2.0, **LOAD)
            publisher.send(hosts[0], "worker-elect", id=f"e{round_}", topic="task",
                           action=None, cver=1)
    publisher.send("new5@flood", "worker-offline", freq=2.0, **LOAD)
    total = publisher.count
    time.sleep(0.5)   # let the broker push everything into our socket
    node.drain(lambda node: node.received + reader.shed >= total and not reader.pending,
               timeout=30)
    assert reader.shed > 0
    assert node.received + reader.shed == total
    applied = recorder.applied
    beats = [json.loads(b) for key, _, b in applied if key == "worker.heartbeat"]
    others = [(key, host) for key, host, _ in applied if key != "worker.heartbeat"]
    # every other event was applied, in order
    assert len(others) == total - 3000
    assert others[-1] == ("worker.offline", "new5@flood")
    assert len(beats) == 3000 - reader.shed
    # heartbeats kept their order and the newest were kept
    seqs = [beat["seq"] for beat in beats]
    assert seqs == sorted(seqs)
    assert seqs[-1] == 3000
    table = node.table()
    assert "new5@flood" not in table and "new15@flood" in table
    assert len(node.gossip.dispatcher.sent) == 6      # an ack for every election
    assert table[hosts[-1]]["seq"] == 3000
    assert reader.longest_drain > 0


@pytest.mark.broker
def test_broker_restart_reconnects_with_backoff(core, rabbitmq_server, nodes, url):
    if not rabbitmq_server.can_restart:
        pytest.skip("an external broker cannot be restarted")
    if core.__name__.endswith("_py"):
        pytest.skip("the reader does not depend on the core: restarted once")
    node = nodes()
    reader = node.reader
    reader.backoff_start = reader._backoff = 0.1
    reader.backoff_max = 0.5
    pub = Publisher(url)
    pub.heartbeat("before@x")
    node.drain(lambda node: node.received >= 1)
    pub.close()
    delays = []
    failed = reader._failed

    def spy(exc, now):
        failed(exc, now)
        delays.append(round(reader.retry_at - now, 3))

    reader._failed = spy
    restart = threading.Thread(target=rabbitmq_server.restart)
    restart.start()           # drained meanwhile, as the worker's timer does
    try:
        node.drain(lambda node: not restart.is_alive() and reader.reconnects >= 1,
                   timeout=90)
    finally:
        restart.join()
    # lost, then refused while down, with a growing backoff: how many
    # refusals fit in the broker's downtime varies, so the cap itself is
    # checked without a broker (tests/test_fastpath_base.py)
    assert reader.errors >= 2 and len(delays) == reader.errors
    assert delays == [min(0.1 * 2 ** i, 0.5) for i in range(len(delays))]
    assert reader._backoff is None      # reset once connected
    pub = Publisher(url)       # the queue was declared again: events arrive
    try:
        pub.heartbeat("after@x")
        node.drain(lambda node: "after@x" in node.gossip.state.workers)
    finally:
        pub.close()
    assert {"before@x", "after@x"} <= set(node.table())
    assert reader.stats()["reconnects"] == 1


@pytest.mark.broker
def test_cancel_by_the_broker_reconnects_and_redeclares(nodes, publisher, url):
    # a queue that is not exclusive, so that another connection may delete it
    node = nodes(conf={"event_queue_exclusive": False})
    reader = node.reader
    reader.backoff_start = reader._backoff = 0.05
    publisher.heartbeat("one@x")
    node.drain(lambda node: node.received >= 1)
    with Connection(url) as conn:
        conn.default_channel.queue_delete(reader.queue_name)
    node.drain(lambda node: reader.errors >= 1)       # basic.cancel
    node.drain(lambda node: reader.reconnects >= 1)
    assert queue_exists(url, reader.queue_name)
    publisher.heartbeat("two@x")
    node.drain(lambda node: "two@x" in node.gossip.state.workers)


@pytest.mark.broker
def test_stop_closes_the_connection_and_the_queue_goes_away(nodes, publisher, url,
                                                             rabbitmq_server):
    node = nodes(conf={"event_queue_exclusive": False})
    reader = node.reader
    name = reader.queue_name
    port = reader._sock.getsockname()[1]
    for i in range(200):          # unread deliveries in flight when we stop
        publisher.heartbeat(f"w{i}@x")
    assert queue_exists(url, name)
    node.gossip._stop_reader()
    assert node.gossip._reader is None and reader.conn is None
    deadline = time.monotonic() + 5
    while queue_exists(url, name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not queue_exists(url, name)     # auto-delete: its consumer went away
    if rabbitmq_server.folder:             # the broker saw a clean close
        log = os.path.join(rabbitmq_server.folder, "log", "rabbit@localhost.log")
        deadline = time.monotonic() + 5
        while True:
            with open(log, errors="replace") as f:
                lines = f.read().splitlines()
            ours = [i for i, line in enumerate(lines) if f"127.0.0.1:{port} " in line]
            closing = [i for i in ours if "closing AMQP connection" in lines[i]]
            if closing or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert closing, [lines[i] for i in ours]
        assert "unexpectedly closed" not in " ".join(lines[closing[0]:closing[0] + 2])
    reader.stop()   # twice is fine


@pytest.mark.broker
def test_heartbeats_keep_an_idle_connection(nodes, publisher):
    node = nodes(connection_options={"heartbeat": 1, "login_method": "AMQPLAIN"})
    reader = node.reader
    assert reader.heartbeat == 1
    assert reader.conn.login_method == "AMQPLAIN"
    until = time.monotonic() + 3.5          # more than two heartbeat intervals
    node.drain(lambda node: time.monotonic() > until)
    assert reader.errors == 0 and reader.reconnects == 0
    publisher.heartbeat("late@x")
    node.drain(lambda node: node.received >= 1)
    # the broker going silent is a lost connection
    reader._last_recv -= 10

    def silent(size):
        raise BlockingIOError

    reader._recv = silent
    with pytest.raises(ConnectionError, match="no heartbeat"):
        reader.read(time.monotonic() + 0.02)


# -- the frame parser alone ----------------------------------------------------------


def deliver_frames(routing_key, body, headers=None, channel=1, tag=1, frame_max=131072,
                   exchange="celeryev", **properties):
    """The frames RabbitMQ sends for one delivery."""
    args = dumps("sLbss", ["amq.ctag-test", tag, False, exchange, routing_key])
    method = pack(">HH", 60, 60) + args
    out = [pack(">BHI", 1, channel, len(method)), method, b"\xce"]
    message = amqp.Message(body, application_headers=headers, **properties)
    header = pack(">HHQ", 60, 0, len(body)) + message._serialize_properties()
    out += [pack(">BHI", 2, channel, len(header)), header, b"\xce"]
    step = frame_max - 8
    for start in range(0, len(body), step):
        chunk = body[start:start + step]
        out += [pack(">BHI", 3, channel, len(chunk)), chunk, b"\xce"]
    return b"".join(out)


def method_frame(class_id, method_id, args=b"", channel=1):
    payload = pack(">HH", class_id, method_id) + args
    return pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"


@pytest.fixture
def wired(core):
    """A reader attached to one end of a socket pair; the test writes the
    broker's bytes into the other."""
    app = Celery("t", broker="amqp://127.0.0.1:1//", set_as_current=False)
    gossip = make_gossip(gossip_class(core), app, hostname=ME)
    channel = types.SimpleNamespace(connection=types.SimpleNamespace(client=None))
    reader = AMQPReader(gossip, channel, None)
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    reader._attach(ours, 1)
    yield reader, broker, gossip
    reader.close()
    broker.close()


def applied(gossip):
    return gossip._receiver.stats()["received"]


def test_parser_split_anywhere(wired):
    reader, broker, gossip = wired
    now = time.time()
    stream = b"".join(
        deliver_frames("worker.heartbeat",
                       event_body("worker-heartbeat", f"w{i}@x", i + 1, now, freq=2.0,
                                  blob="y" * 300),
                       headers={"hostname": f"w{i}@x"}, frame_max=200,
                       content_type="application/json", content_encoding="utf-8",
                       delivery_mode=1, priority=0)
        for i in range(3))
    stream = HEARTBEAT_FRAME + stream + HEARTBEAT_FRAME
    for cut in range(0, len(stream), 7):      # every size of partial frame
        broker.sendall(stream[cut:cut + 7])
        reader.read(time.monotonic() + 1)
    assert applied(gossip) == 3
    assert set(gossip.state.workers) == {"w0@x", "w1@x", "w2@x"}
    assert gossip.state.workers["w2@x"].blob == "y" * 300
    assert reader._buf == b"" and reader.pending == []


def test_bytes_buffered_by_py_amqp_are_not_lost(wired):
    reader, broker, gossip = wired
    stream = b"".join(
        deliver_frames("worker.heartbeat", heartbeat_body(f"w{i}@x", i + 1, time.time()),
                       headers={"hostname": f"w{i}@x"}, content_type="application/json",
                       content_encoding="utf-8")
        for i in range(2))
    ours = reader._sock
    reader._attach(ours, 1, buffered=stream[:100])      # as connect() does
    broker.sendall(stream[100:])
    time.sleep(0.05)
    assert reader.read(time.monotonic() + 1) == 2
    assert set(gossip.state.workers) == {"w0@x", "w1@x"}


def test_parser_ignores_blocked_and_raises_on_close(wired):
    reader, broker, gossip = wired
    broker.sendall(method_frame(10, 60, dumps("s", ["low on memory"]), channel=0)
                   + method_frame(10, 61, channel=0)
                   + deliver_frames("worker.heartbeat", heartbeat_body("a@x", 1, time.time()),
                                    headers={"hostname": "a@x"},
                                    content_type="application/json")
                   + method_frame(20, 40, dumps("BsBB", [406, "PRECONDITION_FAILED - x", 0, 0])))
    time.sleep(0.05)
    with pytest.raises(AMQPClosed, match="channel.close 406 PRECONDITION_FAILED"):
        reader.read(time.monotonic() + 1)
    assert applied(gossip) == 1


@pytest.mark.parametrize("garbage, error", [
    (method_frame(60, 30, dumps("sb", ["amq.ctag-test", False])), AMQPClosed),  # basic.cancel
    (method_frame(10, 50, dumps("BsBB", [320, "CONNECTION_FORCED", 0, 0]), channel=0),
     AMQPClosed),
    (b"\x01\x00\x01\x00\x00\x00\x04\x00\x3c\x00\x3c\x00", AMQPFrameError),   # bad frame end
    (b"\x03\x00\x01\x00\x00\x00\x01x\xce" + b"\x00" * 4, AMQPFrameError),   # stray body
    (deliver_frames("worker.heartbeat", b"{}", channel=2), AMQPFrameError),  # other channel
    (b"\x01\x00\x01\xff\xff\xff\xf0" + b"\x00" * 8, AMQPFrameError),         # absurd size
])
def test_parser_rejects_what_a_consumer_cannot_get(wired, garbage, error):
    reader, broker, gossip = wired
    broker.sendall(garbage)
    time.sleep(0.05)
    with pytest.raises(error):
        reader.read(time.monotonic() + 1)


def test_one_read_takes_all_short_chunks(wired):
    """TLS sockets hand out one record (at most 16 KiB) per recv()."""
    reader, broker, gossip = wired
    now = time.time()
    stream = b"".join(
        deliver_frames("worker.heartbeat", heartbeat_body(f"w{i}@x", i + 1, now),
                       headers={"hostname": f"w{i}@x"}, content_type="application/json",
                       content_encoding="utf-8")
        for i in range(200))
    chunks = [stream[i:i + 16384] for i in range(0, len(stream), 16384)]

    def recv(size):
        if not chunks:
            raise BlockingIOError
        return chunks.pop(0)

    reader._recv = recv
    assert reader.read(time.monotonic() + 5) == 200
    assert len(gossip.state.workers) == 200


def test_drain_reconnects_after_a_parse_error(wired, monkeypatch):
    reader, broker, gossip = wired
    connects = []
    monkeypatch.setattr(reader, "connect", lambda: connects.append(1))
    broker.sendall(b"\x01\x00\x01\x00\x00\x00\x04\x00\x3c\x00\x3c\x00")
    time.sleep(0.05)
    assert reader.drain() == 0
    assert reader.errors == 1 and reader.sock is None and reader.retry_at is not None
    reader.retry_at = time.monotonic()
    reader.drain()
    assert connects == [1] and reader.reconnects == 1


def test_broker_closing_the_socket_is_an_error(wired):
    reader, broker, gossip = wired
    broker.close()
    with pytest.raises(AMQPClosed):
        reader.read(time.monotonic() + 1)


def random_properties(rng):
    """Content properties as py-amqp serializes them: mostly kombu's for an
    event (one ``hostname`` header), sometimes anything else."""
    host = rng.choice([f"w{rng.randrange(10**6)}@h{rng.randrange(99)}", "é@ü", "x" * 300,
                       "", b"\xff\xfe@bad", "a@b\udcff"])
    headers = {"hostname": host}
    odd = rng.random() < 0.1
    if odd:
        headers = rng.choice([{}, {"hostname": host, "x": 1}, {"other": "v"},
                              {"hostname": rng.randrange(9)}, {"hostname": [host]}, None])
    props = dict(content_type="application/json", content_encoding="utf-8",
                 delivery_mode=1, priority=0)
    if rng.random() < 0.1:
        key = rng.choice(list(props))
        props[key] = {"content_type": rng.choice(["application/x-python-serialize",
                                                  "a\x08hostnameS\x00\x00\x00\x03abc"]),
                      "content_encoding": rng.choice(["utf8", "binary", "latin-1"]),
                      "delivery_mode": 2, "priority": 9}[key]
    if rng.random() < 0.05:
        del props[rng.choice(list(props))]
    return amqp.Message(b"", application_headers=headers, **props)._serialize_properties()


def test_properties_by_template_are_py_amqps(wired, monkeypatch):
    """More senders than the properties cache holds: the template (learnt
    from a standard event's properties) gives what py-amqp's decode gives,
    for every kind of properties, and spares most decodes."""
    import random

    from amqp.serialization import decode_properties_basic

    from gossip_fast.fastpath import amqp as amqp_reader
    reader, _, _ = wired
    reader.cache_size = 8
    decodes = []

    def counted(raw, offset):
        decodes.append(raw)
        return decode_properties_basic(raw, offset)

    monkeypatch.setattr(amqp_reader, "decode_properties_basic", counted)
    rng = random.Random(7)
    raws = [random_properties(rng) for _ in range(3000)]
    for raw in raws:
        properties, _ = decode_properties_basic(raw, 0)
        encoding = properties.get("content_encoding")
        expected = (properties.get("application_headers") or {}, properties.get("content_type"),
                    encoding, encoding is not None and encoding not in ("utf-8", "utf8"))
        got = reader._props_of(raw)
        assert got == expected and type(got[0].get("hostname")) is type(
            expected[0].get("hostname")), (raw, got, expected)
    assert reader._templates
    assert len(decodes) < len(raws) / 2, len(decodes)


def test_shed_keeps_the_newest_heartbeat_of_each_sender_and_all_other_events(wired):
    reader, broker, gossip = wired
    reader.coalesce_min = 0     # a pass however small the backlog
    senders = ["a@x", "b@x", "c@x"]
    pending = [("worker.heartbeat", {"hostname": senders[i % 3]}, b"%d" % i, None, None,
                "celeryev") for i in range(10)]
    pending.insert(2, ("worker.online", {"hostname": "d@x"}, b"on", None, None, "celeryev"))
    pending.insert(5, ("worker.elect", {"hostname": "a@x"}, b"el", None, None, "celeryev"))
    reader.shed_superseded(pending)
    # a@x beat last with 9, b@x with 7, c@x with 8: each one's newest stays
    assert [p[2] for p in pending] == [b"on", b"el", b"7", b"8", b"9"]
    assert reader.shed == 7


def test_shed_beyond_max_pending_drops_the_oldest_heartbeats(wired):
    reader, broker, gossip = wired
    reader.max_pending, reader.coalesce_min = 4, 0
    pending = [("worker.heartbeat", {"hostname": f"w{i}@x"}, b"%d" % i, None, None,
                "celeryev") for i in range(6)]
    pending.insert(1, ("worker.online", {"hostname": "d@x"}, b"on", None, None, "celeryev"))
    reader.shed_superseded(pending)
    assert [p[2] for p in pending] == [b"on", b"3", b"4", b"5"]
    assert reader.shed == 3


# -- kombu's consumer on RabbitMQ (the classic receive path) ------------------------


@pytest.mark.broker
def test_kombu_delivers_text_bodies_that_the_json_lane_reads(core, url):
    """py-amqp decodes what it delivers (``auto_decode``): through kombu's
    consumer (gevent and eventlet pools, ``GOSSIP_FAST_RECEIVE=classic``) an
    event's body is a ``str``.  The receiver reads it as the wire's bytes,
    so the JSON fast lane applies it rather than kombu's decoder."""
    body = heartbeat_body("peer@x", 5, time.time())
    got = []
    with Connection(url) as conn:
        exchange = get_exchange(conn)
        queue = kombu.Queue("text-bodies", exchange, routing_key="worker.#", auto_delete=True)
        with kombu.Consumer(conn, [queue], on_message=got.append, no_ack=True):
            Producer(conn).publish(body, exchange=exchange, routing_key="worker.heartbeat",
                                   headers={"hostname": "peer@x"}, content_type="application/json",
                                   content_encoding="utf-8", serializer=None, retry=False)
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except socket.timeout:
                    pass
    message, = got
    assert type(message.body) is str  # py-amqp's doing: the case this test is about
    gossip = make_gossip(gossip_class(core), Celery("t", broker=url, set_as_current=False))
    receiver = gossip._receiver
    assert receiver._message_raw(message) == body
    gossip.on_message(receiver.fast_prepare, message)
    assert list(gossip.state.workers) == ["peer@x"] and gossip.state.workers["peer@x"].clock == 5
    assert receiver.stats()["decode_fallbacks"] == 0
