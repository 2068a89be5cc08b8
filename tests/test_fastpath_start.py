"""What the consumer gets when the fast reader cannot connect, on real brokers.

The reader opens its own connection when the worker's consumer starts our
step.  If that fails while the broker is up (it refuses a second
connection), the step falls back to kombu's consumer on the worker's
channel, says why, and gossip flows.  If it fails because the broker is
gone (a restart under a reconnecting worker), the step raises the
connection error of the worker's own channel, as stock's queue declare
does: Celery restarts the consumer, and the reader is tried again then, with
no fallback announced in between (which CI saw during broker restarts).
Both cores, both brokers.
"""
import logging
import socket
import time

import pytest
from celery import Celery
from kombu import Connection
from kombu.asynchronous import Hub
from kombu.asynchronous.timer import Timer

from gossip_fast import fastpath

from .conftest import gossip_class, make_gossip

pytestmark = pytest.mark.broker

BOOTSTEP_LOGGER = "gossip_fast.bootstep"


@pytest.fixture
def server(fast_broker):
    return fast_broker


@pytest.fixture
def consumer_side(core, server):
    """Our step on a worker's consumer connection to *server* (not started)."""
    app = Celery("t", broker=server.url, set_as_current=False)
    gossip = make_gossip(gossip_class(core), app, hub=Hub(Timer()))
    connection = Connection(server.url)
    channel = connection.channel()
    yield gossip, connection, channel
    gossip._stop_reader()
    fastpath.close_channel(channel)
    connection.release()


def reader_class(channel):
    return fastpath.select(Celery("t", set_as_current=False), channel, Hub(Timer()))[0]


def start_lines(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == BOOTSTEP_LOGGER and "receive" in r.getMessage()]


def test_broker_that_refuses_the_reader_gets_kombus_consumer(consumer_side, monkeypatch,
                                                            caplog):
    gossip, connection, channel = consumer_side
    Reader = reader_class(channel)

    def refused(self):
        raise ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(Reader, "connect", refused)
    caplog.set_level(logging.INFO, logger=BOOTSTEP_LOGGER)
    consumers = gossip.get_consumers(channel)
    assert len(consumers) == 1 and gossip._driver is None
    assert gossip.receive_fallback.startswith(f"the {Reader.name} fast reader failed to start")
    assert ["receive kombu" in line for line in start_lines(caplog)] == [True]
    # the fallback consumes: a peer's heartbeats (sent until one arrives:
    # Redis subscribes on the first drain) reach the table
    consumers[0].consume()
    peer = Celery("peer", broker=connection.as_uri(include_password=True),
                  set_as_current=False)
    deadline = time.monotonic() + 10
    with peer.connection_for_write() as out:
        dispatcher = peer.events.Dispatcher(out, hostname="peer@h", enabled=True)
        while "peer@h" not in gossip.state.workers:
            assert time.monotonic() < deadline, gossip.stats()
            dispatcher.send("worker-heartbeat", freq=2.0, active=0, processed=0)
            try:
                connection.drain_events(timeout=0.1)
            except socket.timeout:
                pass

def test_broker_gone_at_start_raises_the_consumers_connection_error(consumer_side, server,
                                                                     caplog):
    gossip, connection, channel = consumer_side
    caplog.set_level(logging.INFO, logger=BOOTSTEP_LOGGER)
    with server.down():
        with pytest.raises(connection.connection_errors):
            gossip.get_consumers(channel)
        assert gossip._driver is None and gossip._reader is None
        if hasattr(channel, "_disconnect_pools"):  # kombu's Redis channel: no socket left
            assert channel.closed and channel._pool is None
    assert start_lines(caplog) == []  # nothing announced for a consumer about to restart
    # the restarted consumer (a new connection) gets the fast reader
    with Connection(server.url) as again:
        channel = again.channel()
        assert gossip.get_consumers(channel) == []
        assert gossip._driver is not None and gossip.receive_fallback is None
        assert [line.startswith("gossip_fast ") for line in start_lines(caplog)] == [True]
        gossip._stop_reader()
        fastpath.close_channel(channel)
