"""The broker restarts under a running cluster, per broker.

The cluster: a compiled and a pure-Python gossip_fast worker on the default
receive path (``auto``: gossip_fast's own reader where there is one), a
compiled one on the ``classic`` path (kombu's consumer, as stock), and a
stock worker (the reference: whatever Celery itself logs during a restart
shows up there too).  After ``server.restart()`` (same port, same data):

* every worker is still running and logged a new "Connected to" (it
  reconnected), with nothing in its log but connection errors (and one
  known Celery 5.7 restart error, see ``harness.KNOWN_CELERY_RESTART_ERROR``);
* gossip resumes: each gossip_fast worker sees its three peers alive again
  within a few heartbeats of the last reconnect, and applies events again;
* no duplicate consumers: RabbitMQ has exactly one gossip queue
  (``celeryev.*``) with one consumer per worker; on Redis each worker holds
  as many pattern subscriptions as before the restart, and as many as the
  stock worker (connections matched to worker processes), with no more
  connections than before; and in both cases a worker applies each peer's
  heartbeat once (the event rate is not doubled);
* the Lamport clock keeps increasing.
"""

import time

import pytest

from .harness import (
    HEARTBEAT_INTERVAL,
    assert_clean_logs,
    rabbitmq_queues,
    record_result,
    redis_subscriptions,
    running_cluster,
)

pytestmark = [pytest.mark.cluster, pytest.mark.broker]

SCENARIO = "broker restart"
#: Gossip back (all peers alive on every gossip_fast worker) at most this long
#: after the last worker reconnected: a few heartbeats.
RESTORE_BOUND = 3 * HEARTBEAT_INTERVAL + 1.0
#: Peers of each worker: four workers in all.
PEERS = 3
#: How long Celery may take to reconnect once the broker is back (its
#: connection retry backs off: 2 s, 4 s, 6 s ... between attempts).
RECONNECT_TIMEOUT = 60.0
#: The window over which the heartbeat rate is measured.
RATE_WINDOW = 3 * HEARTBEAT_INTERVAL


def consumers_snapshot(broker, broker_name, workers):
    """What the broker says about our consumers (see the module docstring)."""
    if broker_name == "rabbitmq":
        queues = rabbitmq_queues(broker)
        return sorted((q["name"], q["consumers"]) for q in queues
                      if q["name"].startswith("celeryev."))
    return redis_subscriptions(broker.url, workers)


def assert_one_consumer_per_worker(snapshot, broker_name, workers, before=None):
    if broker_name == "rabbitmq":
        # the only celeryev.* queues are the workers' gossip queues
        assert len(snapshot) == len(workers), snapshot
        assert all(consumers == 1 for _, consumers in snapshot), snapshot
    else:
        # The stock worker's subscriptions (gossip's pattern and the pidbox's)
        # are the reference: gossip_fast's reader subscribes instead of
        # kombu's consumer, never in addition to it.
        stock = [w for w in workers if w.kind == "stock"]
        for worker in workers:
            subs = snapshot[worker.hostname]
            assert subs["psub"] >= 1, (worker.hostname, snapshot)
            for reference in stock:
                assert (subs["psub"], subs["sub"]) == (
                    snapshot[reference.hostname]["psub"],
                    snapshot[reference.hostname]["sub"]), (worker.hostname, snapshot)
            if before is not None:
                old = before[worker.hostname]
                assert subs["psub"] == old["psub"], (before, snapshot)
                assert subs["sub"] == old["sub"], (before, snapshot)
                # no connection leaks across the reconnect
                assert subs["connections"] <= old["connections"] + 1, (before, snapshot)


def applied_rate(cluster, workers, window):
    """Events applied per worker over ``window`` seconds (a measurement
    window: the one fixed wait in these tests)."""
    first = cluster.all_stats(workers)
    began = time.monotonic()
    time.sleep(window)
    second = cluster.all_stats(workers)
    elapsed = time.monotonic() - began
    return {w.hostname: second[w.hostname]["events"]["applied"]
            - first[w.hostname]["events"]["applied"] for w in workers}, elapsed, second


@pytest.fixture(scope="class")
def restart_cluster(broker, broker_name, fast_kinds, cluster_folder):
    if not broker.can_restart:
        pytest.skip(f"{broker.url} is an external broker: cannot restart it")
    with running_cluster(broker, cluster_folder("r"), "r") as cluster:
        workers = cluster.start(*fast_kinds, f"{fast_kinds[0]}:classic", "stock")
        cluster.wait_stats(lambda s: s["alive_workers"] == PEERS, workers=workers[:3],
                           timeout=30, what="gossip_fast workers see all peers alive")
        yield cluster, workers[:3], workers[3]


class TestBrokerRestart:

    def test_gossip_survives_broker_restart(self, broker, broker_name, restart_cluster):
        cluster, fast, stock = restart_cluster
        workers = cluster.workers
        before_stats = cluster.all_stats(fast)
        classic = [w for w in fast if w.receive == "classic"]
        for worker in classic:  # the selection works: kombu's consumer
            assert before_stats[worker.hostname]["receive"]["path"] == "kombu"
        record_result(SCENARIO, broker_name, "receive", None, paths={
            w.name.split("-", 2)[2]: before_stats[w.hostname].get("receive", {}).get("path")
            for w in fast})
        before_consumers = consumers_snapshot(broker, broker_name, workers)
        assert_one_consumer_per_worker(before_consumers, broker_name, workers)
        connected_before = {w.hostname: len(w.connected_times()) for w in workers}

        began = time.time()
        broker.restart()
        broker_back = time.time()
        cluster.close_client()  # its pooled connections died with the broker
        record_result(SCENARIO, broker_name, "broker_down", broker_back - began,
                      note="server.restart() duration")

        def reconnected():
            times = {w.hostname: w.connected_times() for w in workers}
            if all(len(times[h]) > connected_before[h] for h in times):
                return max(t[-1] for t in times.values())
            return None

        last_reconnect = cluster.wait_for(reconnected, RECONNECT_TIMEOUT,
                                          "every worker reconnected", interval=0.2)
        record_result(SCENARIO, broker_name, "reconnect", last_reconnect - broker_back,
                      note="broker back -> last worker 'Connected to' (Celery's backoff)")

        def gossip_back():
            stats = cluster.all_stats(fast)
            return stats and all(
                stats[h]["alive_workers"] == PEERS
                and stats[h]["events"]["applied"]
                >= before_stats[h]["events"]["applied"] + PEERS
                for h in stats)

        cluster.wait_for(gossip_back, RECONNECT_TIMEOUT,
                         "gossip_fast workers apply events and see all peers alive again",
                         interval=0.2)
        restored = time.time() - last_reconnect
        record_result(SCENARIO, broker_name, "restored", restored, bound=RESTORE_BOUND,
                      note="last reconnect -> all peers alive on gossip_fast workers")
        assert restored <= RESTORE_BOUND, (
            f"membership restored {restored:.1f} s after the last reconnect")

        # Gossip flows, once: each peer's heartbeat applied once per interval.
        rates, elapsed, stats = applied_rate(cluster, fast, RATE_WINDOW)
        expected = PEERS * elapsed / HEARTBEAT_INTERVAL
        for worker in fast:
            assert expected * 0.5 <= rates[worker.hostname] <= expected * 1.5 + 2, (
                f"{worker.hostname} applied {rates[worker.hostname]} events in "
                f"{elapsed:.1f} s; expected about {expected:.0f} ({PEERS} peers)")
            s, old = stats[worker.hostname], before_stats[worker.hostname]
            assert s["clock"] > old["clock"], (old["clock"], s["clock"])
            assert s["alive_workers"] == PEERS and s["tracked_workers"] == PEERS, s
            assert s["dropped"] == {} and s["sanitized"] == {}, s
        record_result(SCENARIO, broker_name, "clock", None, before_after={
            w.hostname: [before_stats[w.hostname]["clock"], stats[w.hostname]["clock"]]
            for w in fast})

        after_consumers = consumers_snapshot(broker, broker_name, workers)
        record_result(SCENARIO, broker_name, "consumers", None,
                      before=before_consumers, after=after_consumers)
        assert_one_consumer_per_worker(after_consumers, broker_name, workers,
                                       before=before_consumers)

        assert all(w.running for w in workers), workers
        assert_clean_logs(workers, allow_connection_errors=True)
        # the consumer restarted on the same receive path: still one start line
        for worker in fast:
            assert len(worker.start_lines()) == 1, (worker.hostname, worker.start_lines())
        known = {w.name.split("-", 2)[2]: w.known_celery_errors() for w in workers}
        record_result(SCENARIO, broker_name, "known_celery_error", None, count=known)
        print(known, "times 'Error on restarting Gossip: AttributeError' (Celery 5.7)")
