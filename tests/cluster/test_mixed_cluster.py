"""A mixed cluster, per broker: two gossip_fast workers (one compiled, one
pure Python) and one worker running Celery's stock Gossip.

Everyone must see everyone, both ways: gossip_fast's events are stock
events, and stock's events are ours.  The stock worker is observed through
its user bootstep's event file (it has no ``gossip_stats``).
"""

import time

import pytest

from .harness import (
    assert_clean_logs,
    join_counts,
    record_result,
    running_cluster,
    wait_more_heartbeats,
)

pytestmark = [pytest.mark.cluster, pytest.mark.broker]

SCENARIO = "mixed: cython+python+stock"


@pytest.fixture(scope="class")
def mixed(broker, broker_name, fast_kinds, cluster_folder):
    with running_cluster(broker, cluster_folder("m"), "m") as cluster:
        began = time.time()
        workers = cluster.start(*fast_kinds, "stock")
        fast, stock = workers[:2], workers[2]

        def everyone_joined():
            return all(set(join_counts(w)) >= {p.hostname for p in workers if p is not w}
                       for w in workers)

        cluster.wait_stats(lambda s: s["alive_workers"] == 2, workers=fast, timeout=30,
                           what="gossip_fast workers see two alive peers")
        cluster.wait_for(everyone_joined, 30, "node_join for both peers on every worker")
        record_result(SCENARIO, broker_name, "formed", time.time() - began,
                      note="start of 3 workers -> everyone joined everywhere")
        yield cluster, fast, stock, broker_name


class TestMixedCluster:

    def test_everyone_sees_everyone_once(self, mixed):
        cluster, fast, stock, _ = mixed
        workers = cluster.workers
        wait_more_heartbeats(cluster, fast, peers=2)
        for worker in workers:  # the stock worker too (its bootstep's file)
            expected = {p.hostname: 1 for p in workers if p is not worker}
            assert join_counts(worker) == expected, worker
        stats = cluster.all_stats(fast)
        for worker in fast:
            s = stats[worker.hostname]
            assert s["implementation"] == worker.kind, s
            assert s["alive_workers"] == 2 and s["tracked_workers"] == 2, s
            assert (s["joins"], s["leaves"], s["losses"]) == (2, 0, 0), s
            assert s["dropped"] == {} and s["sanitized"] == {}, s
        assert_clean_logs(workers)

    def test_each_runs_its_own_gossip(self, mixed):
        cluster, fast, stock, _ = mixed
        for worker in fast:
            started = worker.started_record()
            assert started["gossip_steps"] == ["gossip_fast.bootstep.Gossip"], started
            assert started["implementation"] == worker.kind
        started = stock.started_record()
        assert started["gossip_steps"] == ["celery.worker.consumer.gossip.Gossip"], started
        assert started["implementation"] == "stock"

    def test_leave_seen_both_ways(self, mixed):
        """gossip_fast -> stock and gossip_fast: SIGTERM the pure-Python one;
        then stock -> gossip_fast: SIGTERM the stock one."""
        cluster, fast, stock, broker_name = mixed
        first, leaver = fast
        for gone, observers in ((leaver, [first, stock]), (stock, [first])):
            sent = gone.terminate()
            assert gone.proc.returncode == 0, gone
            found = cluster.wait_for(
                lambda gone=gone, observers=observers: all(
                    o.events("leave", peer=gone.hostname) for o in observers),
                15, f"node_leave({gone.hostname}) on {[o.hostname for o in observers]}")
            assert found
            for observer in observers:
                records = observer.events("leave", peer=gone.hostname)
                assert len(records) == 1, records
                record_result(SCENARIO, broker_name, "node_leave",
                              records[0]["time"] - sent, observer=observer, subject=gone)
        stats = cluster.wait_stats(lambda s: s["alive_workers"] == 0, workers=[first],
                                   timeout=5, what="the last one alone")
        assert stats[first.hostname]["leaves"] == 2
        assert stats[first.hostname]["losses"] == 0
        assert_clean_logs(cluster.workers)
