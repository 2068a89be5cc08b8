"""The transport-independent part of the fast receive path: the reader base
(``gossip_fast.fastpath.base``: reconnect backoff, the backlog, shedding
superseded heartbeats, the sweep while behind) and its drivers: on the
worker's event loop (``gossip_fast.fastpath.loop``: wake on data, batch
under load, housekeeping, the socket leaving the hub before it closes) and
in a greenlet (``gossip_fast.fastpath.green``, the same schedule from
``gossip_fast.fastpath.pacing``).

The Redis and RabbitMQ readers are tested on real brokers in
test_fastpath_redis.py and test_fastpath_amqp.py; here a reader of a list
stands for the broker, with a real socket pair for its connection and
kombu's real ``Hub`` for the event loop, so the logic is checked without
depending on timing."""
import socket
import time
import types

import pytest
from kombu.asynchronous import Hub
from kombu.asynchronous.timer import Timer

from gossip_fast.fastpath.base import Reader, coalesce
from gossip_fast.fastpath.loop import HubDriver
from gossip_fast.simulate import heartbeat_body

from .conftest import assert_watched

#: All that ``Reader.__init__`` reads of a kombu channel.
NO_CHANNEL = types.SimpleNamespace(connection=types.SimpleNamespace(client=None))


class ListReader(Reader):
    """Its "broker" is ``incoming`` (on_raw arguments) and the far end of a
    socket pair: :meth:`send` queues events and writes a byte.  Applies at
    most ``per_drain`` events per drain (a stand-in for the budget)."""

    name = "list"

    def __init__(self, gossip, per_drain=1000):
        super().__init__(gossip, NO_CHANNEL, None)
        self.per_drain = per_drain
        self.incoming = []
        self.fail = None
        self.connects = 0
        self.peer = None
        self.closed = []   # sockets closed, in order

    def connect(self):
        self.close()
        self.connects += 1
        if self.fail is not None:
            raise self.fail
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.sock = ours

    def fill(self, deadline):
        if self.fail is not None:
            raise self.fail
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            if not data:
                raise ConnectionError("closed")
            self.bytes_read += len(data)
        self.pending.extend(self.incoming)
        self.incoming = []

    def apply_pending(self, deadline):
        later = self.pending[self.per_drain:]
        del self.pending[self.per_drain:]
        done = super().apply_pending(deadline)
        self.pending.extend(later)
        return done

    def disconnect(self):
        for sock in (self._sock, self.peer):
            if sock is not None:
                self.closed.append(sock)
                sock.close()
        self.peer = None

    def send(self, *items):
        self.incoming.extend(items)
        self.peer.send(b"x")


def heartbeat(hostname, freq=2.0, clock=1):
    return ("worker.heartbeat", {"hostname": hostname},
            heartbeat_body(hostname, clock, time.time(), freq=freq))


@pytest.fixture
def hub():
    hub = Hub(Timer())
    yield hub
    hub.close()


@pytest.fixture
def driver(gossip, hub):
    gossip.timer = hub.timer
    driver = HubDriver(ListReader(gossip), hub)
    driver.start()
    driver._last_drain -= 1.0        # started a while ago: a quiet spell since
    gossip._driver, gossip._reader = driver, driver.reader
    yield driver
    gossip._stop_reader()


def timed(driver):
    """The timed drains due (their timer entries)."""
    return [item for item in driver.timer.queue
            if item.entry.fun == driver._on_timer and not item.entry.canceled]


def fire(driver):
    """The timed drain due, as the timer runs it (once)."""
    [due] = timed(driver)
    due.entry.cancel()   # fired: out of the queue
    driver._on_timer()


def turn(hub, times=1):
    """Turns of the worker's event loop (each waits at most a short while)."""
    loop = hub.create_loop()
    for _ in range(times):
        next(loop)


# -- the reader ---------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_and_resets(gossip):
    reader = ListReader(gossip)
    reader.backoff_start, reader.backoff_max = 0.1, 0.5
    reader.fail = ConnectionRefusedError(111, "Connection refused")
    waits = []
    now = time.monotonic()
    reader.drain()                   # fill fails: lost the connection
    for _ in range(6):
        waits.append(round(reader.retry_at - now, 3))
        assert reader.drain() == 0   # still waiting: no connect attempt
        reader.retry_at = now = time.monotonic()
        reader.drain()               # connect refused
    assert waits == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert reader.errors == 7 and reader.reconnects == 0 and reader.connects == 6
    reader.fail = None
    reader.retry_at = time.monotonic()
    reader.drain()
    assert reader.reconnects == 1 and reader._backoff is None and reader.retry_at is None
    reader.stop()


def test_events_read_before_a_lost_connection_are_applied_after_it(gossip):
    reader = ListReader(gossip, per_drain=1)
    reader.start()
    reader.send(heartbeat("a@x"), heartbeat("b@x"), heartbeat("c@x"))
    reader.fail = ConnectionResetError(104, "reset")
    reader.incoming = []
    reader.drain()                   # fill fails: nothing was read this time
    reader.fail = None
    reader.pending.extend([heartbeat("a@x"), heartbeat("b@x")])
    reader.retry_at = time.monotonic()
    reader.drain()                   # reconnected: the held ones are applied
    reader.drain()
    assert set(gossip.state.workers) == {"a@x", "b@x"} and not reader.pending
    reader.stop()


def test_sweep_while_behind_is_as_of_when_the_reader_caught_up(gossip, driver, caplog):
    """While the reader has a backlog, the sweep judges liveness as of the
    last time it had applied all it had read: no peer is lost for a
    heartbeat still held; afterwards, the sweep is the usual one."""
    reader = driver.reader
    lost = []
    gossip.on.node_lost.add(lambda worker: lost.append(worker.hostname))
    reader.send(heartbeat("held@x", freq=0.05), heartbeat("gone@x", freq=0.05))
    reader.drain()
    caught_up = reader.caught_up_at
    reader.per_drain = 0             # from now on nothing is applied by drains
    reader.send(heartbeat("other@x"), heartbeat("held@x", freq=0.05, clock=2))
    reader.drain()
    assert reader.caught_up_at == caught_up and reader.backlog()
    time.sleep(0.12)                 # both entries expired (2 x 0.05 s)
    gossip.periodic()
    assert lost == [] and set(gossip.state.workers) == {"held@x", "gone@x"}
    assert "judged again once it has caught up" in caplog.text
    reader.per_drain = 1000
    reader.drain()                   # caught up: held@x's heartbeat applied
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
    assert reader.held(item) is item
    core = gossip.core
    if core.__name__ == "gossip_fast._core":
        assert reader.held is core.held and reader._coalesce is core.coalesce
        assert not gc.is_tracked(item)
    else:
        assert not hasattr(core, "held") and gc.is_tracked(item)


def test_apply_held_takes_tuples_others_and_errors_until_the_deadline(gossip):
    """The readers' apply loop (``Receiver.apply_held``: in C in the
    compiled core): argument tuples to on_raw, anything else to *other*,
    an exception to *error*; the deadline is looked at after *minimum*
    items, then every 8."""
    receiver = gossip._receiver
    others, errors = [], []
    items = [heartbeat("a@x"), "kombu's to decode", ("worker.heartbeat",),
             heartbeat("b@x", clock=2)]
    done = receiver.apply_held(items, time.monotonic() + 60, 8, others.append, errors.append)
    assert done == 4 and len(items) == 4        # the caller removes them
    assert {"a@x", "b@x"} <= set(gossip.state.workers)
    assert others == ["kombu's to decode"]
    assert [type(exc) for exc in errors] == [TypeError]  # on_raw's arity: a bug, not input
    many = [heartbeat(f"w{i}@x") for i in range(30)]
    assert receiver.apply_held(many, time.monotonic() - 1, 8, others.append, errors.append) == 8
    assert receiver.apply_held(many, time.monotonic() - 1, 20, others.append, errors.append) == 24
    assert receiver.apply_held([], time.monotonic(), 8, others.append, errors.append) == 0
    assert len(others) == 1 and len(errors) == 1


# -- the driver: wake on data ----------------------------------------------------------


def test_an_idle_reader_is_watched_and_sets_no_timer(gossip, driver):
    assert_watched(gossip)
    assert driver.wakeups == {"readable": 0, "timer": 0, "housekeeping": 0}


def test_data_after_a_quiet_spell_is_drained_at_once(gossip, driver, hub):
    driver.reader.send(heartbeat("a@x"))
    turn(hub)
    assert "a@x" in gossip.state.workers
    assert driver.wakeups["readable"] == 1 and driver.wakeups["timer"] == 0
    assert_watched(gossip)           # a lone event: back to watching at once


def test_data_that_keeps_waking_the_loop_is_batched(gossip, driver, hub):
    """Wake-ups less often than every ``max_delay`` are each drained at once
    (a turn each, as stock); more often, over the last ``1 / max_delay`` of
    them, and the socket is unwatched and drains come on the timer,
    ``max_delay`` apart, while data flows."""
    reader = driver.reader
    often = driver._woken.maxlen
    assert often == round(1 / reader.max_delay)
    for i in range(often - 1):
        reader.send(heartbeat(f"w{i}@x"))
        turn(hub)                    # drained at once
    assert len(gossip.state.workers) == often - 1 and driver.mode == "watching"
    assert driver.wakeups["timer"] == 0
    reader.send(heartbeat("b@x"))
    turn(hub)                        # the last wake-ups came faster than max_delay
    assert driver.mode == "polling" and not hub.readers
    assert "b@x" not in gossip.state.workers
    [due] = timed(driver)
    assert due.eta <= time.monotonic() + reader.max_delay
    reader.send(heartbeat("c@x"))
    fire(driver)                     # the batch: b and c together
    assert {"b@x", "c@x"} <= set(gossip.state.workers)
    assert driver.mode == "polling" and len(timed(driver)) == 1  # it flowed: poll on
    fire(driver)                     # nothing came since: watch again
    assert_watched(gossip)


@pytest.mark.parametrize("pace, batched", [(1.2, False), (0.8, True)])
def test_batching_starts_at_one_wake_up_per_max_delay(gossip, driver, monkeypatch,
                                                     pace, batched):
    """A trickle a little slower than one event per ``max_delay`` is never
    batched, however long it lasts; a little faster, and it is."""
    reader = driver.reader
    clock = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    for i in range(3 * driver._woken.maxlen):
        clock[0] += reader.max_delay * pace
        reader.send(heartbeat(f"w{i}@x"))
        driver._on_readable()
        if driver.mode == "polling":
            break
        assert f"w{i}@x" in gossip.state.workers
    assert (driver.mode == "polling") == batched
    assert driver.wakeups["timer"] == 0


def test_a_backlog_brings_the_next_drain_sooner(gossip, driver):
    reader = driver.reader
    reader.per_drain = 10
    reader.send(*[heartbeat(f"w{i}@x") for i in range(25)])
    driver._on_readable()
    assert len(gossip.state.workers) == 10 and driver.mode == "polling"
    [due] = timed(driver)
    assert due.eta <= time.monotonic() + reader.catchup_delay
    fire(driver)
    fire(driver)
    assert len(gossip.state.workers) == 25 and not reader.backlog()


def test_a_lost_connection_unwatches_before_closing_and_watches_the_new_one(gossip, driver):
    reader = driver.reader
    old = reader.sock
    old_fd = old.fileno()
    seen = []
    remove = driver.hub.remove_reader
    driver.hub.remove_reader = lambda fd: (seen.append((fd, old.fileno())), remove(fd))
    reader.peer.close()              # the broker goes away
    driver._on_readable()
    # the descriptor left the hub while the socket was still open
    assert seen == [(old_fd, old_fd)] and old.fileno() == -1
    assert driver.mode == "polling" and reader.retry_at is not None
    [due] = timed(driver)
    assert due.eta <= reader.retry_at + 0.01
    reader.retry_at = time.monotonic()
    fire(driver)               # reconnected
    assert reader.reconnects == 1 and reader.sock is not old
    assert_watched(gossip)


def test_a_failed_reconnect_waits_on_the_timer_without_watching(gossip, driver):
    reader = driver.reader
    reader.fail = ConnectionRefusedError(111, "Connection refused")
    driver._on_readable()            # fill fails
    assert not driver.hub.readers and reader.sock is None
    reader.retry_at = time.monotonic()
    fire(driver)               # connect refused: back off again
    assert not driver.hub.readers and len(timed(driver)) == 1
    assert reader.retry_at > time.monotonic()


def test_housekeeping_drains_an_idle_reader(gossip, driver, monkeypatch):
    reader = driver.reader
    drains = []
    monkeypatch.setattr(reader, "drain", lambda: drains.append(1) or 0)
    driver._last_drain = time.monotonic()
    driver._on_housekeeping()        # just drained: nothing to do
    assert drains == []
    driver._last_drain -= reader.housekeeping_interval()
    driver._on_housekeeping()
    assert drains == [1] and driver.wakeups["housekeeping"] == 1
    assert_watched(gossip)


def test_stop_unwatches_cancels_and_closes(gossip, driver, hub):
    reader = driver.reader
    sock = reader.sock
    reader.send(heartbeat("a@x"))
    driver._on_readable()
    driver._poll(reader.max_delay)   # polling now: a timer is set
    gossip._stop_reader()
    assert not hub.readers and not timed(driver) and sock.fileno() == -1
    assert gossip._driver is None and gossip._reader is None
    driver._on_timer()               # a late entry does nothing
    assert reader.batches == 1 and driver.mode == "stopped"


def test_a_drain_that_raises_does_not_escape_the_event_loop(gossip, driver, monkeypatch):
    def broken():
        raise RuntimeError("bug")
    monkeypatch.setattr(driver.reader, "drain", broken)
    driver._on_readable()            # logged, not raised
    assert driver.mode == "watching"


# -- the driver in a greenlet (gevent, eventlet) ----------------------------------------
# Its waits are the green library's; here a script stands for the library, so the
# schedule is checked in this process.  Real greenlets: tests/test_green_driver.py.


class Done(BaseException):
    """Ends the greenlet's loop (as GreenletExit does: not an Exception)."""


class ScriptedGreen:
    """Stands for gevent: records each wait; ``wait_readable`` answers from
    *readable* (True: data, False: timed out) and ends the loop after it."""

    def __init__(self, readable):
        self.readable = list(readable)
        self.waits = []

    def sleep(self, seconds):
        self.waits.append(("sleep", seconds))

    def wait_readable(self, fd, timeout):
        if not self.readable:
            raise Done
        self.waits.append(("wait", timeout))
        return self.readable.pop(0)


@pytest.fixture
def green_driver(gossip):
    from gossip_fast.fastpath.green import GreenDriver
    pytest.importorskip("gevent")
    driver = GreenDriver(ListReader(gossip), "gevent")
    driver.start_reader(retry=False)
    driver._last_drain -= 1.0
    yield driver
    driver.reader.stop()


def run_green(driver, readable):
    driver.green = ScriptedGreen(readable)
    with pytest.raises(Done):
        driver._run(None)
    return driver.green.waits


def test_greenlet_drains_data_at_once_then_batches_then_watches(gossip, green_driver):
    driver, reader = green_driver, green_driver.reader
    reader.send(heartbeat("a@x"))
    waits = run_green(driver, [True])
    assert "a@x" in gossip.state.workers and [kind for kind, _ in waits] == ["wait"]
    assert driver.wakeups == {"readable": 1, "timer": 0, "housekeeping": 0}
    # the socket has woken it more often than every max_delay: batch
    now = time.monotonic()
    driver._woken.extend([now] * (driver._woken.maxlen - 1))
    driver._last_drain = now
    reader.send(heartbeat("b@x"))
    waits = run_green(driver, [True])
    # woken, then a timed drain max_delay after the last one (it finds b@x:
    # still flowing, so one more), then one that finds nothing: watching again
    assert [kind for kind, _ in waits] == ["wait", "sleep", "sleep"], waits
    assert 0 < waits[1][1] <= reader.max_delay and waits[2][1] == reader.max_delay, waits
    assert "b@x" in gossip.state.workers and driver.mode == "watching"
    assert driver.wakeups == {"readable": 2, "timer": 2, "housekeeping": 0}


def test_greenlet_drains_a_silent_connection_for_housekeeping(green_driver, monkeypatch):
    driver, reader = green_driver, green_driver.reader
    drains = []
    monkeypatch.setattr(reader, "drain", lambda: drains.append(1) or 0)
    driver._last_drain = time.monotonic()
    waits = run_green(driver, [False])
    # it waited on the socket until the housekeeping time, then drained
    assert 0 < waits[0][1] <= reader.housekeeping_interval() and drains == [1]
    assert driver.wakeups == {"readable": 0, "timer": 0, "housekeeping": 1}


def test_greenlet_goes_on_after_an_error(green_driver, monkeypatch, caplog):
    driver, reader = green_driver, green_driver.reader

    calls = []

    def once_then_done(delay):
        calls.append(delay)
        if len(calls) > 1:
            raise Done
        raise RuntimeError("bug")
    monkeypatch.setattr(driver, "_wait_and_drain", once_then_done)
    with pytest.raises(Done):
        driver._run(None)
    # logged, and the next wait is a pause, never a busy loop
    assert calls == [None, reader.max_delay]
    assert "error in the list reader greenlet" in caplog.text


def test_greenlet_stop_kills_it_then_closes_the_socket(green_driver):
    driver, reader = green_driver, green_driver.reader
    killed = []
    sock = reader.sock
    driver.green = types.SimpleNamespace(kill=lambda g: killed.append(sock.fileno()),
                                         getcurrent=object)
    driver._greenlet = object()
    driver.stop()
    # killed while its socket was still open, then the socket closed
    assert killed and killed[0] != -1 and sock.fileno() == -1
    assert driver.mode == "stopped" and reader.watcher is None
