"""Every pool: gossip_fast workers of each of Celery's pools, per broker.

The solo pool runs in every other cluster test.  Here a worker of the
prefork, threads, gevent and eventlet pools (each with a compiled and a
pure-Python core) runs in one cluster with a stock worker:

* prefork and threads workers run kombu's event loop (a ``Hub``): gossip
  arrives on gossip_fast's own reader, woken by its socket;
* gevent and eventlet workers have no hub: the same reader runs in a
  greenlet of its own (fastpath/green.py), out of Celery's green loop,
  on the same schedule;
* whatever the pool, the reader never drains on a timer more often than
  every ``max_delay``, every worker sees every other one alive, and the
  start line says what runs.
"""
import time

import pytest

from .harness import HEARTBEAT_INTERVAL, assert_clean_logs, running_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.broker]

HUB_POOLS = ("prefork", "threads")
GREEN_POOLS = ("gevent", "eventlet")
FAST_PATH = {"redis": "redis", "rabbitmq": "amqp"}


@pytest.fixture(scope="class")
def pool_cluster(broker, fast_kinds, cluster_folder):
    for module in GREEN_POOLS:
        pytest.importorskip(module)
    with running_cluster(broker, cluster_folder("pools"), "p") as cluster:
        workers = {}
        for pool in HUB_POOLS + GREEN_POOLS:
            for kind in fast_kinds:
                [worker] = cluster.add(kind, extra_args=["--pool", pool, "--concurrency", "2"])
                workers[pool, kind] = worker
        stock = cluster.add("stock")
        cluster.wait_started([*workers.values(), *stock])
        peers = len(cluster.workers) - 1
        cluster.wait_stats(lambda s: s["alive_workers"] == peers,
                           workers=list(workers.values()), timeout=30,
                           what="every gossip_fast worker sees all its peers alive")
        yield cluster, workers


class TestPools:

    def test_each_pool_receives_on_the_path_it_can_and_says_so(self, broker_name,
                                                               pool_cluster):
        cluster, workers = pool_cluster
        before = cluster.all_stats(workers.values())
        window = 2 * HEARTBEAT_INTERVAL
        time.sleep(window)  # a window over which wake-ups are counted
        stats = cluster.all_stats(workers.values())
        peers = len(cluster.workers) - 1
        for (pool, kind), worker in workers.items():
            s = stats[worker.hostname]
            receive = s["receive"]
            [line] = worker.start_lines()
            assert s["implementation"] == kind and s["alive_workers"] == peers, s
            assert receive["path"] == FAST_PATH[broker_name], (pool, receive)
            assert f"receive {receive['path']} (batched" in line, line
            if pool in GREEN_POOLS:
                assert f", {pool} greenlet)" in line, line
                assert receive["greenlet"] == pool, receive
            else:
                assert "greenlet" not in line and "greenlet" not in receive, (line, receive)
            # the socket woke the reader; timed drains no more often than
            # every max_delay (the cluster's rate is about 1 / max_delay)
            woken = before[worker.hostname]["receive"]["wakeups"]
            timed = receive["wakeups"]["timer"] - woken["timer"]
            assert receive["wakeups"]["readable"] > 0, (pool, receive)
            assert timed <= window / receive["max_delay"] + 1, (pool, timed, receive)
            assert s["events"]["applied"] > before[worker.hostname]["events"]["applied"]
        assert_clean_logs(workers.values())
