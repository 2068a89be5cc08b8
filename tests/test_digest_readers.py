"""Digest mode's readers on real brokers, in process, against both cores:
a member gets the relay's digests and the elections through its exact
subscriptions and no heartbeat; promoted, it gets the heartbeat stream
into its table and the announces; back to member, the stream stops.
The readers are drained by the test (in a worker the event loop wakes
them: tests/cluster/test_digest_cluster.py)."""
import json
import time

import pytest
from celery import Celery
from kombu import Connection, Producer
from kombu.asynchronous import Hub
from kombu.asynchronous.timer import Timer

from gossip_fast.digest.codec import CONTENT_ENCODING, CONTENT_TYPE, Announce, Member, encode
from gossip_fast.digest.names import DigestNames
from gossip_fast.digest.view import ChangeLog

from .conftest import gossip_class, make_gossip

pytest.importorskip("hiredis")
pytest.importorskip("msgspec")

pytestmark = pytest.mark.broker

ME = "me@x"
RELAY = "relay@r"


class Node:
    """A digest-mode Gossip step on a real broker, its hub driven by hand."""

    def __init__(self, core, url):
        self.app = Celery("t", broker=url, set_as_current=False)
        self.app.conf.gossip_fast_digest = True
        self.hub = Hub(Timer())
        self.gossip = make_gossip(gossip_class(core), self.app, hostname=ME, hub=self.hub)
        self.mode = self.gossip._digest
        self.events = []
        for kind in ("node_join", "node_leave", "node_lost"):
            getattr(self.gossip.on, kind).add(
                lambda worker, kind=kind: self.events.append((kind, worker.hostname)))
        self.elections = []
        self.gossip.event_handlers["worker.elect"] = self.elections.append
        self.connection = self.app.connection_for_read()
        self.channel = self.connection.channel()
        assert self.gossip.get_consumers(self.channel) == []

    def drain(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, json.dumps(self.gossip.stats(), default=repr, indent=1)
            for driver in (self.mode._digest_driver, self.mode._stream):
                if driver is not None:
                    driver.reader.drain()
            time.sleep(0.01)

    def close(self):
        self.mode.stop()
        self.hub.close()
        self.connection.release()


class Peer:
    """Another worker: Celery's event dispatcher, and a digest publisher."""

    def __init__(self, url, transport):
        self.connection = Connection(url)
        self.app = Celery("p", broker=url, set_as_current=False)
        self.dispatcher = self.app.events.Dispatcher(self.connection, hostname="peer@x",
                                                     enabled=True)
        names = DigestNames()
        self.producer = Producer(self.connection.channel(),
                                 exchange=names.kombu_exchange(transport))

    def event(self, type_, **fields):
        self.dispatcher.send(type_, **fields)

    def digest(self, msg, key="digest"):
        self.producer.publish(encode(msg), routing_key=key, content_type=CONTENT_TYPE,
                              content_encoding=CONTENT_ENCODING,
                              headers={"hostname": msg.hostname})

    def close(self):
        self.dispatcher.close()
        self.connection.release()


@pytest.fixture(params=["redis", "amqp"])
def setup(request, core, monkeypatch):
    monkeypatch.delenv("GOSSIP_FAST_RECEIVE", raising=False)
    monkeypatch.delenv("GOSSIP_FAST_DIGEST", raising=False)
    server = request.getfixturevalue("redis_server" if request.param == "redis"
                                     else "rabbitmq_server")
    node = Node(core, server.url)
    peer = Peer(server.url, request.param)
    yield node, peer
    peer.close()
    node.close()


def test_member_reads_digests_and_elections_only(setup):
    node, peer = setup
    mode = node.mode
    assert mode.role.role == "member"
    log = ChangeLog(RELAY, 7)
    for m in (Member(RELAY, 7, 2.0, 3), Member("a@x", 8, 2.0, 3), Member(ME, 1000, 2.0, 3)):
        log.joined(m)
    peer.event("worker-heartbeat", freq=2.0)          # not for members
    peer.event("worker-elect", id="e1", topic="t", action=None, cver=1)
    peer.digest(log.build(time.time(), 40, (RELAY, ME)))
    node.drain(lambda: node.elections and mode.counts["digests_applied"])
    assert sorted(node.events) == [("node_join", "a@x"), ("node_join", RELAY)]
    assert node.elections[0]["id"] == "e1"
    stats = node.gossip.stats()
    assert stats["events"]["received"] == 1          # the election, no heartbeat
    assert stats["digest"]["role"] == "successor"     # listed after the publisher
    assert "stream" not in stats["receive"]
    # promoted: the heartbeat stream comes into the table, announces arrive
    mode._promote("takeover", time.monotonic())
    assert mode.role.role == "relay" and mode._stream is not None
    node.drain(lambda: mode._digest_driver.reader.batches > 2)
    time.sleep(0.3)  # the new bindings / subscriptions are not confirmed: let them land
    peer.event("worker-heartbeat", freq=2.0)
    peer.digest(Announce("a@x", 8, 50, time.time(), request="r1"), key="announce")
    node.drain(lambda: "peer@x" in mode.table.workers and mode.counts["announces_received"])
    assert mode.relay.requests or mode.counts["snapshots_served"]
    # a relay of a higher term: back to member, the stream stops
    other = ChangeLog("other@y", 9, term=5)
    other.joined(Member("other@y", 9, 2.0, 3))
    peer.digest(other.build(time.time(), 60, ("other@y",)))
    node.drain(lambda: mode.role.role != "relay")
    assert mode._stream is None and mode.table.workers == {}
    peer.event("worker-elect", id="e2", topic="t", action=None, cver=1)
    node.drain(lambda: len(node.elections) >= 2)
    assert node.gossip.stats()["dropped"] == {}
