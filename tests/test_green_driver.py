"""The fast reader of gevent and eventlet workers (gossip_fast.fastpath.green),
on real brokers, both cores.

A green library must patch a process before it imports ``socket``, so each
case runs ``tests/green_child.py`` in a process of its own, as Celery's
``-P gevent`` / ``-P eventlet`` run a worker, and judges what it printed.
Real workers of those pools are in tests/cluster/test_pools.py.
"""
import json
import subprocess
import sys

import pytest

from .conftest import IMPLEMENTATIONS, load_core

pytestmark = pytest.mark.broker

ROOT = __file__.rsplit("/tests/", 1)[0]


@pytest.fixture
def url(fast_broker):
    return fast_broker.url


@pytest.mark.parametrize("core_name", IMPLEMENTATIONS)
@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_reader_in_a_greenlet(library, url, core_name):
    pytest.importorskip(library)
    load_core(core_name)  # the compiled one must import (skips only on NO_EXTENSIONS)
    done = subprocess.run([sys.executable, "-m", "tests.green_child", library, url, core_name],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    log = done.stderr
    path = "redis" if url.startswith("redis") else "amqp"
    # chosen and said: the fast reader, driven from a greenlet
    assert seen["consumers"] == 0 and seen["driver"] == "GreenDriver" and seen["why"] is None
    assert f"receive {path} (batched, max delay 0.25 s, {library} greenlet)" in log, log
    assert seen["stats"]["greenlet"] == library and seen["stats"]["path"] == path
    # an event that comes alone is drained as it arrives
    assert seen["after_first"] == {"readable": 1, "timer": 0, "housekeeping": 0}, seen
    assert seen["first_latency"] < 0.25, seen
    # sustained traffic: everything applied, in batches max_delay apart
    assert seen["received"] == seen["sent"], seen
    assert seen["alive"] == [f"p{i}@h" for i in range(10)], seen
    assert 0.5 * seen["seconds"] / 0.25 <= seen["timer"] <= seen["seconds"] / 0.25 + 2, seen
    assert seen["readable"] <= 5, seen
    # idle: nothing wakes it, and it waits on its socket again
    assert seen["idle_wakeups"] == {"readable": 0, "timer": 0, "housekeeping": 0}, seen
    assert seen["mode_idle"] == "watching", seen
    # a lost connection: reconnected from the greenlet, and events flow again
    assert seen["reconnects"] == 1 and seen["errors"] == 1, seen
    assert seen["after_reconnect"] == seen["sent_after_reconnect"], seen
    # stopped by the consumer: the greenlet ended, the socket closed
    assert seen["greenlet_dead"] and seen["socket_closed"] and seen["reader_sock"], seen
    assert "Traceback" not in log, log
