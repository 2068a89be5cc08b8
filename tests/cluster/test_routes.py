"""A new user's checks on real workers, switched on the no-code-change way
(``worker_consumer = 'gossip_fast:Consumer'``, never ``install()``), per
broker and implementation:

* the worker says what runs: one start line with version, core and receive
  path (and why it is kombu when it is), and nothing from gossip_fast when
  the step is disabled (``--without-gossip``);
* it answers ``gossip_stats``, asked with ``gossip-fast stats`` from a
  process that never imports the app or gossip_fast's control module
  itself; a disabled step answers ``enabled: false`` and why, with no
  receive path or membership counters;
* no pidbox error in any log (a worker without the command logs one).
"""
import json
import os
import subprocess
import sys
import types

import pytest

import gossip_fast

from .harness import assert_clean_logs, running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.broker]

HERE = os.path.dirname(os.path.abspath(__file__))

FAST_PATH = {"redis": "redis", "rabbitmq": "amqp"}
DISABLED_KEYS = {"version", "implementation", "enabled", "clock", "why"}


@pytest.fixture(scope="class")
def route(broker, broker_name, implementation, cluster_folder):
    with running_cluster(broker, cluster_folder("route"), "route") as cluster:
        auto, classic = cluster.add(implementation, f"{implementation}:classic",
                                    route="consumer")
        [off] = cluster.add(implementation, route="consumer",
                            extra_args=["--without-gossip"])
        cluster.wait_started([auto, classic, off])
        # the disabled worker still sends heartbeats: two peers each
        cluster.wait_stats(lambda s: s["alive_workers"] == 2, workers=[auto, classic],
                           timeout=30, what="both gossiping workers see two peers")
        yield types.SimpleNamespace(cluster=cluster, auto=auto, classic=classic, off=off,
                                    broker=broker, broker_name=broker_name,
                                    implementation=implementation)


def gossip_fast_stats(route, workers, *extra, app=False):
    """``python -m gossip_fast stats -b URL -d ...`` as a user runs it, or
    with ``-A app`` from the app's folder (tests/cluster/app.py, on the
    worker_consumer route: it does not import gossip_fast)."""
    where, env = ["-b", route.broker.url], None
    if app:
        where = ["-A", "app"]
        env = dict(os.environ, CLUSTER_BROKER_URL=route.broker.url,
                   CLUSTER_GOSSIP="consumer", CLUSTER_EVENTS_DIR=route.cluster.folder)
    proc = subprocess.run(
        [sys.executable, "-m", "gossip_fast", "stats", *where, "-t", "3",
         "-d", ",".join(w.hostname for w in workers), *extra],
        capture_output=True, text=True, timeout=60, env=env, cwd=HERE)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc.stdout


class TestWorkerConsumerRoute:

    def test_start_line_says_what_runs(self, route):
        core = ("core python (GOSSIP_FAST_NO_EXTENSIONS is set)"
                if route.implementation == "python" else "core cython")
        head = f"gossip_fast {gossip_fast.__version__}: {core}, receive "
        path = FAST_PATH[route.broker_name]
        assert route.auto.start_lines() == [
            f"{head}{path} (batched, max delay 0.25 s)"]
        [classic] = route.classic.start_lines()
        # why kombu: classic mode (the fast path words it)
        assert classic.startswith(f"{head}kombu (") and "classic" in classic, classic
        assert classic.endswith("; no batching delay)"), classic

    def test_disabled_step_says_nothing(self, route):
        messages = [r["message"] for r in route.off.log_records()]
        assert messages, "no log records"
        assert not [m for m in messages if "gossip_fast" in m], messages

    def test_gossip_stats_json(self, route):
        workers = [route.auto, route.classic, route.off]
        stats = json.loads(gossip_fast_stats(route, workers, "--json"))
        assert set(stats) == {w.hostname for w in workers}
        auto, classic, off = (stats[w.hostname] for w in workers)
        for s in (auto, classic):
            assert s["enabled"] is True and s["implementation"] == route.implementation
            assert s["version"] == gossip_fast.__version__
            assert s["alive_workers"] == 2 and s["joins"] >= 2
        assert auto["receive"]["path"] == FAST_PATH[route.broker_name]
        assert classic["receive"]["path"] == "kombu"
        assert "classic" in classic["receive"]["why"], classic["receive"]
        assert set(off) == DISABLED_KEYS, off
        assert off["enabled"] is False and off["why"] == "--without-gossip"
        assert off["implementation"] == route.implementation

    def test_gossip_stats_lines_with_the_app(self, route):
        out = gossip_fast_stats(route, [route.auto, route.off], app=True)
        lines = dict(line.split(": ", 1) for line in out.splitlines())
        prefix = f"gossip_fast {gossip_fast.__version__}, core {route.implementation}"
        assert lines[route.auto.hostname].startswith(
            f"{prefix}, receive {FAST_PATH[route.broker_name]} (max delay 0.25 s); "
            "2 of 2 peers alive; ")
        assert lines[route.off.hostname] == f"{prefix}; gossip OFF: --without-gossip"

    def test_no_pidbox_errors(self, route):
        assert_clean_logs([route.auto, route.classic, route.off])
