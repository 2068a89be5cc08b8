"""The worker table: scale without eviction, the deadline wheel's sweep, the
alive count, and the clock under threads."""
import random
import threading
import time

import pytest
import time_machine

from gossip_fast.simulate import heartbeat_body, make_message


def beat(state, hostname, received, freq=2.0, type_="worker-heartbeat"):
    """Apply a prepared heartbeat straight to the table."""
    return state.event({"hostname": hostname, "timestamp": received, "freq": freq,
                        "local_received": received, "type": type_, "clock": 1})


def test_100k_workers_tracked_without_churn(core):
    joins = []
    state = core.State(on_node_join=joins.append)
    now = time.time()
    for round_ in range(2):
        for i in range(100_000):
            beat(state, f"w{i}@x", now + round_ * 0.5)
    assert len(state.workers) == 100_000 and len(joins) == 100_000
    assert state.alive_count(now + 1) == 100_000
    assert state.sweep(now + 1) == [] and len(state.workers) == 100_000


def test_sweep_matches_brute_force(core):
    rng = random.Random(7)
    state = core.State()
    now = 1_000_000.0
    expected_alive = {}
    for step in range(3000):
        now += rng.uniform(0, 0.05)
        if rng.random() < 0.05:
            due = state.expired(now)
            assert len(due) == len(set(due))
            lost = {w.hostname for w in state.sweep(now)}
            assert set(due) == lost, step  # what the sweep then removed
            dead = {h for h, expires in expected_alive.items() if not now < expires}
            assert lost == dead, step
            for hostname in dead:
                del expected_alive[hostname]
            assert state.alive_count(now) == len(expected_alive)
        else:
            hostname = f"w{rng.randrange(60)}"
            freq = rng.choice([0.1, 0.5, 2.0])
            received = now - rng.choice([0, 0, 0.3])  # some arrive "late"
            beat(state, hostname, received, freq)
            worker = state.workers[hostname]
            expected_alive[hostname] = max(worker.heartbeats) + freq * 2
            assert worker.heartbeat_expires == expected_alive[hostname]


def test_sweep_after_clock_jumps_back(core):
    state = core.State()
    beat(state, "a", 5000.0)
    beat(state, "a", 4000.0)  # wall clock stepped back: an older receive time
    assert state.workers["a"].heartbeats == [4000.0, 5000.0]
    assert state.sweep(5003.9) == [] and [w.hostname for w in state.sweep(5004.0)] == ["a"]


def test_removed_by_user_code_is_not_reported(core):
    state = core.State()
    beat(state, "a", 100.0)
    del state.workers["a"]
    assert state.sweep(1000.0) == []
    beat(state, "a", 100.0)
    assert [w.hostname for w in state.sweep(1000.0)] == ["a"]


def test_alive_workers_and_is_alive(core):
    state = core.State()
    with time_machine.travel(50.0, tick=False):
        beat(state, "a", 50.0)
        beat(state, "b", 40.0)
        assert [w.hostname for w in state.alive_workers()] == ["a"]
        assert state.is_alive("a") and not state.is_alive("b") and not state.is_alive("c")
        assert state.alive_count() == 1


def test_offline_unknown_and_clear(core):
    leaves = []
    state = core.State(on_node_leave=leaves.append)
    beat(state, "a", 10.0, type_="worker-offline")
    assert len(leaves) == 1 and state.workers == {}
    beat(state, "a", 10.0)
    state.clear()
    assert state.workers == {} and state.sweep(1e9) == []


def test_sweep_reports_in_deadline_then_arrival_order(core):
    state = core.State()
    for hostname, received in [("a", 10.0), ("b", 20.0), ("c", 10.0), ("d", 10.1),
                               ("e", 20.0), ("b", 10.0), ("a", 30.0), ("f", 10.0)]:
        beat(state, hostname, received)
    # b's ring holds 20.0, so its deadline stays in the 20 s slot
    assert [w.hostname for w in state.sweep(14.2)] == ["c", "f", "d"]
    assert [w.hostname for w in state.sweep(34.0)] == ["b", "e", "a"]


def test_worker_kept_across_clear_and_put_back(core):
    state = core.State()
    for hostname in ("a", "b", "c"):
        beat(state, hostname, 10.0)
    kept = state.workers["b"]
    state.clear()
    assert state.alive_count(11.0) == 0 and state.expired(100.0) == []
    state.workers["b"] = kept  # user code
    beat(state, "a", 10.0)
    beat(state, "b", 20.0)
    assert state.alive_count(11.0) == 2 and state.expired(15.0) == ["a"]
    assert [w.hostname for w in state.sweep(100.0)] == ["a", "b"]
    assert state.sweep(1e9) == [] and state.workers == {}


def test_worker_kept_across_clear_beats_into_its_old_slot(core):
    """A kept entry put back after clear() and beating with the same
    deadline as before is in the wheel again (not left out because its old
    slot number matched)."""
    state = core.State()
    beat(state, "b", 10.0)
    kept = state.workers["b"]
    state.clear()
    state.workers["b"] = kept
    beat(state, "b", 10.0)
    assert state.expired(100.0) == ["b"]
    assert [w.hostname for w in state.sweep(100.0)] == ["b"]


def test_clock_is_thread_safe(core):
    clock = core.Clock()
    threads = 4
    per_thread = 20_000

    def work():
        for _i in range(per_thread):
            clock.forward()
            clock.adjust(0)
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert clock.value == threads * per_thread * 2


def test_clock_api(core):
    clock = core.Clock(3)
    assert clock.forward() == 4 and clock.adjust(10) == 11 and clock.adjust(2) == 12
    clock.value = 20
    assert clock.value == 20 and str(clock) == "20" and "20" in repr(clock)
    assert clock.sort_heap([(3, "a"), (3, "b"), (4, "c")]) == (3, "a")  # a heap, as kombu
    assert clock.sort_heap([(1, "z"), (3, "a")]) == (1, "z")
    assert clock.sort_heap([(9, "only")]) == (9, "only")
    clock.value = 2 ** 63 - 1
    assert clock.forward() == 2 ** 63 - 1  # saturates, never overflows
    with pytest.raises(ValueError):
        clock.value = -1
    with pytest.raises(ValueError):
        clock.value = 1.5


def test_worker_entries_are_small(core):
    import tracemalloc
    state = core.State()
    bodies = [heartbeat_body(f"w{i}@node", 1, 1000.0) for i in range(2000)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    from gossip_fast.bootstep import Gossip  # noqa: F401
    for _i, body in enumerate(bodies):
        import json
        event = json.loads(body)
        event["local_received"] = 1000.0
        state.event(event)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_worker = sum(s.size_diff for s in after.compare_to(before, "filename")) / 2000
    assert per_worker < 4096, per_worker  # the event's fields included


def test_messages_through_receiver_scale(gossip, fast_prepare):
    now = time.time()
    for i in range(20_000):
        body = heartbeat_body(f"w{i}@x", i, now)
        gossip.on_message(fast_prepare, make_message("redis", "worker.heartbeat", body,
                                                     f"w{i}@x"))
    assert gossip.stats()["tracked_workers"] == 20_000
    assert gossip.stats()["alive_workers"] == 20_000
