"""The transport-independent part of the fast receive path
(``gossip_fast.fastpath.base``): reconnect backoff, drain scheduling while
behind, shedding superseded heartbeats, and the sweep while behind.  The Redis and RabbitMQ readers are tested on real brokers in
test_fastpath_redis.py and test_fastpath_amqp.py; here a reader of a list
stands for the socket, so that the base logic is checked without timing."""
import time
import types

import pytest
from kombu.asynchronous.timer import Timer

from gossip_fast.fastpath.base import Reader, coalesce
from gossip_fast.simulate import heartbeat_body

from .conftest import assert_drain_scheduled


#: All that ``Reader.__init__`` reads of a kombu channel.
NO_CHANNEL = types.SimpleNamespace(connection=types.SimpleNamespace(client=None))


class ListReader(Reader):
    """Reads ``(routing_key, headers, body)`` items from ``incoming``,
    applying at most ``per_drain`` of them per drain; the rest is held."""

    name = "list"

    def __init__(self, gossip, per_drain=1000):
        super().__init__(gossip, NO_CHANNEL, None)
        self.per_drain = per_drain
        self.incoming = []
        self.held = []
        self.fail = None
        self.connects = 0

    def connect(self):
        self.connects += 1
        if self.fail is not None:
            raise self.fail

    def close(self):
        pass

    def read(self, deadline):
        if self.fail is not None:
            raise self.fail
        self.held.extend(self.incoming)
        self.incoming = []
        now, self.held = self.held[:self.per_drain], self.held[self.per_drain:]
        for item in now:
            self.receiver.on_raw(*item)
        return len(now)

    def backlog(self):
        return bool(self.held or self.incoming)


def heartbeat(hostname, freq=2.0, clock=1):
    return ("worker.heartbeat", {"hostname": hostname},
            heartbeat_body(hostname, clock, time.time(), freq=freq))


@pytest.fixture
def reader(gossip):
    gossip.timer = Timer()
    reader = ListReader(gossip)
    gossip._reader = reader
    gossip._schedule_drain(reader, reader.max_delay)
    return reader


def test_backoff_doubles_up_to_its_cap_and_resets(gossip):
    reader = ListReader(gossip)
    reader.backoff_start, reader.backoff_max = 0.1, 0.5
    reader.fail = ConnectionRefusedError(111, "Connection refused")
    waits = []
    now = time.monotonic()
    reader.drain()                   # read fails: lost the connection
    for _ in range(6):
        waits.append(round(reader._retry_at - now, 3))
        assert reader.drain() == 0   # still waiting: no connect attempt
        reader._retry_at = now = time.monotonic()
        reader.drain()               # connect refused
    assert waits == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert reader.errors == 7 and reader.reconnects == 0 and reader.connects == 6
    reader.fail = None
    reader._retry_at = time.monotonic()
    reader.drain()
    assert reader.reconnects == 1 and reader._backoff is None and reader._retry_at is None


def test_next_drain_comes_sooner_while_behind(gossip, reader):
    reader.per_drain = 10
    reader.incoming = [heartbeat(f"w{i}@x") for i in range(25)]
    assert reader.next_delay() == reader.catchup_delay
    gossip._drain(reader)
    assert len(gossip.state.workers) == 10
    due = [item for item in gossip.timer.queue if item.entry.fun == gossip._drain]
    assert len(due) == 2  # the first schedule (still queued here) and the catch-up
    assert min(item.eta for item in due) <= time.monotonic() + reader.catchup_delay
    gossip._drain(reader)
    gossip._drain(reader)
    assert len(gossip.state.workers) == 25 and not reader.backlog()
    assert reader.next_delay() == reader.max_delay
    reader._retry_at = time.monotonic() + 5   # disconnected: no busy loop
    reader.held = [heartbeat("late@x")]
    assert reader.next_delay() == reader.max_delay


def test_stopped_reader_is_not_rescheduled(gossip, reader):
    gossip._stop_reader()
    assert gossip._reader is None
    before = len(gossip.timer.queue)
    gossip._drain(reader)            # a late timer entry
    assert len(gossip.timer.queue) == before and reader.batches == 0


def test_a_drain_that_raises_still_reschedules(gossip, reader, monkeypatch):
    def broken(deadline):
        raise RuntimeError("bug")
    monkeypatch.setattr(Reader, "drain", lambda self: broken(0))
    gossip.timer = Timer()
    with pytest.raises(RuntimeError):
        gossip._drain(reader)
    assert_drain_scheduled(gossip, gossip.timer)


def test_sweep_while_behind_is_as_of_when_the_reader_caught_up(gossip, reader, caplog):
    """While the reader has a backlog, the sweep judges liveness as of the
    last time it had applied all it had read: no peer is lost for a
    heartbeat still held; afterwards, the sweep is the usual one."""
    lost = []
    gossip.on.node_lost.add(lambda worker: lost.append(worker.hostname))
    reader.incoming = [heartbeat("held@x", freq=0.05), heartbeat("gone@x", freq=0.05)]
    gossip._drain(reader)
    caught_up = reader.caught_up_at
    reader.per_drain = 0             # from now on nothing is applied by drains
    reader.incoming = [heartbeat("other@x"), heartbeat("held@x", freq=0.05, clock=2)]
    gossip._drain(reader)
    assert reader.caught_up_at == caught_up and reader.backlog()
    time.sleep(0.12)                 # both entries expired (2 x 0.05 s)
    gossip.periodic()
    assert lost == [] and set(gossip.state.workers) == {"held@x", "gone@x"}
    assert "judged again once it has caught up" in caplog.text
    reader.per_drain = 1000
    gossip._drain(reader)            # caught up: held@x's heartbeat applied
    assert not reader.backlog() and reader.caught_up_at > caught_up
    gossip.periodic()
    assert lost == ["gone@x"]
    assert set(gossip.state.workers) == {"held@x", "other@x"}
    assert gossip.state.workers["held@x"].clock == 2
    assert gossip.stats()["sweeps_held_back"] == 1


def test_coalesce_keeps_each_senders_newest_heartbeat_and_all_else():
    items = ["a1", "b1", "x", "a2", "?1", "b2", "?2", "a3"]

    def sender(item):
        if item == "x":
            return None          # not a heartbeat
        return "" if item[0] == "?" else item[0]  # '?': sender unknown

    assert coalesce(items, sender, 100) == (["x", "?1", "b2", "?2", "a3"], 3)
    # above max_pending, the oldest heartbeats go, unknown senders included
    assert coalesce(items, sender, 3) == (["x", "?2", "a3"], 5)
    assert coalesce([], sender, 3) == ([], 0)


def test_shedding_passes_are_amortized(gossip):
    """A pass over the backlog only once it has doubled since the last one:
    a constant cost per event while behind, not a pass per drain."""
    reader = Reader(gossip, NO_CHANNEL, None)
    reader.coalesce_min = 4
    beats = [heartbeat("a@x", clock=i) for i in range(3)]
    pending = list(beats)
    reader.shed_superseded(pending)
    assert len(pending) == 3 and reader.shed == 0        # below coalesce_min
    pending.append(heartbeat("a@x", clock=9))
    reader.shed_superseded(pending)
    assert len(pending) == 1 and reader.shed == 3        # a pass: one left
    pending.append(heartbeat("a@x", clock=10))
    reader.shed_superseded(pending)
    assert len(pending) == 2 and reader.shed == 3        # not doubled enough yet
    pending.extend(heartbeat("a@x", clock=11 + i) for i in range(2))
    reader.shed_superseded(pending)
    assert len(pending) == 1 and reader.shed == 6


def test_held_events_are_untracked_with_the_compiled_core(gossip):
    """Readers take ``held`` (and the compiled shedding pass) from the core
    in use: a backlog of GC-tracked tuples made CPython run full
    collections over the table while the reader caught up."""
    import gc
    reader = Reader(gossip, NO_CHANNEL, None)
    item = heartbeat("a@x")
    assert gc.is_tracked(item)
    assert reader._held(item) is item
    core = gossip.core
    if core.__name__ == "gossip_fast._core":
        assert reader._held is core.held and reader._coalesce is core.coalesce
        assert not gc.is_tracked(item)
    else:
        assert not hasattr(core, "held") and gc.is_tracked(item)
