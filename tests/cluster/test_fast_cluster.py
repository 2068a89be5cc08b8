"""A cluster of three gossip_fast workers, per broker and per implementation.

One cluster per (broker, implementation) is shared by the tests of the
class, which run in order and tell one story: the three meet, hold five
elections, one is SIGKILLed (node_lost, timed), they elect again, one stops
gracefully (node_leave), and the last one holds an election alone.  Each
test does the steps it needs itself if an earlier one was deselected (see
:class:`Story`), so any single test can also run alone.
"""

import time

import pytest

from .harness import (
    LOST_DETECTION_BOUND,
    assert_clean_logs,
    decided,
    join_counts,
    record_result,
    run_election,
    running_cluster,
    wait_more_heartbeats,
)

pytestmark = [pytest.mark.cluster, pytest.mark.broker]

SCENARIO = "3 x gossip_fast"


def receive_paths(stats):
    """Which receive path the workers use (``gossip_stats``'s ``receive``)."""
    return sorted({str((s.get("receive") or {}).get("path", "-")) for s in stats.values()})


class Story:
    """The shared cluster and the steps already done on it."""

    def __init__(self, cluster, broker_name, implementation):
        self.cluster = cluster
        self.broker = broker_name
        self.implementation = implementation
        self.workers = list(cluster.workers)
        self.scenario = f"{SCENARIO} ({implementation})"
        self._killed = None
        self._terminated = None

    def others(self, worker, among=None):
        return [w for w in (among or self.workers) if w is not worker]

    def kill_one(self):
        """SIGKILL the third worker; wait for node_lost on both survivors.

        Returns ``(victim, survivors, {survivor hostname: seconds})``.
        """
        if self._killed is None:
            victim, survivors = self.workers[2], self.workers[:2]
            killed_at = victim.kill()

            def lost_everywhere():
                found = {w.hostname: w.events("lost", peer=victim.hostname)
                         for w in survivors}
                return found if all(found.values()) else None

            # Wait past the bound, to report how late a late detection was.
            found = self.cluster.wait_for(
                lost_everywhere, LOST_DETECTION_BOUND + 15,
                f"node_lost({victim.hostname}) on every survivor")
            seconds = {}
            for survivor in survivors:
                seconds[survivor.hostname] = found[survivor.hostname][0]["time"] - killed_at
                record_result(self.scenario, self.broker, "node_lost",
                              seconds[survivor.hostname], observer=survivor,
                              subject=victim, bound=LOST_DETECTION_BOUND)
            self._killed = (victim, survivors, seconds)
        return self._killed

    def terminate_one(self):
        """SIGTERM the second worker; wait for node_leave on the first.

        Returns ``(leaver, last, seconds, exit code)``.
        """
        if self._terminated is None:
            self.kill_one()
            leaver, last = self.workers[1], self.workers[0]
            sent = leaver.terminate()
            found = self.cluster.wait_for(
                lambda: last.events("leave", peer=leaver.hostname), 15,
                f"node_leave({leaver.hostname}) on {last.hostname}")
            seconds = found[0]["time"] - sent
            record_result(self.scenario, self.broker, "node_leave", seconds,
                          observer=last, subject=leaver)
            self._terminated = (leaver, last, seconds, leaver.proc.returncode)
        return self._terminated


@pytest.fixture(scope="class")
def story(broker, broker_name, implementation, cluster_folder):
    label = f"f{implementation[0]}"
    with running_cluster(broker, cluster_folder(label), label) as cluster:
        began = time.time()
        cluster.start(implementation, implementation, implementation)
        stats = cluster.wait_stats(lambda s: s["alive_workers"] == 2, timeout=30,
                                   what="every worker sees two alive peers")
        story = Story(cluster, broker_name, implementation)
        paths = receive_paths(stats)
        record_result(story.scenario, broker_name, "formed", time.time() - began,
                      note=f"start of 3 workers -> alive_workers == 2 on all "
                           f"(receive path: {', '.join(paths)})",
                      receive_paths=paths)
        yield story


class TestGossipFastCluster:

    def test_members_see_each_other_once(self, story):
        cluster, workers = story.cluster, story.workers
        wait_more_heartbeats(cluster, workers, peers=2)
        stats = cluster.all_stats(workers)
        for worker in workers:
            s = stats[worker.hostname]
            assert s["implementation"] == story.implementation, s
            assert s["enabled"] is True
            assert s["alive_workers"] == 2, s
            assert s["tracked_workers"] == 2, s
            assert (s["joins"], s["leaves"], s["losses"]) == (2, 0, 0), s
            assert s["dropped"] == {} and s["sanitized"] == {}, s
            assert s["events"]["applied"] > 0, s
            # node_join fired exactly once per peer, in the user's bootstep
            expected = {peer.hostname: 1 for peer in story.others(worker)}
            assert join_counts(worker) == expected
        assert_clean_logs(workers)

    def test_user_bootstep_gets_gossip_fast_and_one_gossip_step(self, story):
        for worker in story.workers:
            started = worker.started_record()
            assert started is not None, f"{worker.hostname}: the user step did not start"
            assert started["gossip_module"] == "gossip_fast.bootstep", started
            assert started["gossip_class"] == "Gossip"
            assert started["gossip_steps"] == ["gossip_fast.bootstep.Gossip"], started
            assert started["implementation"] == story.implementation
            assert started["gossip_enabled"] is True
            assert started["full_hostname"] == f"{worker.hostname}.{worker.proc.pid}"
        core = ("core python (GOSSIP_FAST_NO_EXTENSIONS is set)"
                if story.implementation == "python" else "core cython,")
        for worker in story.workers:
            [line] = worker.start_lines()
            assert core in line, line

    def test_five_elections_one_winner_each(self, story):
        cluster, workers = story.cluster, story.workers
        wins = {w.hostname: 0 for w in workers}
        durations = []
        for n in range(5):
            eid = f"{cluster.prefix}-election-{n}"
            winners, seconds = run_election(cluster, workers, eid)
            assert len(winners) == 1, (eid, [w.hostname for w in winners])
            wins[winners[0].hostname] += 1
            durations.append(round(seconds, 3))
        record_result(story.scenario, story.broker, "election", max(durations),
                      note="5 elections, slowest request -> decided on all 3",
                      all_seconds=durations, wins=wins)
        stats = cluster.all_stats(workers)
        for worker in workers:
            elections = stats[worker.hostname]["elections"]
            assert elections.get("timed_out", 0) == 0, elections
            assert elections.get("won", 0) == wins[worker.hostname], (elections, wins)
        assert sum(wins.values()) == 5
        assert all(w.running for w in workers)
        assert_clean_logs(workers)

    def test_sigkill_fires_node_lost_on_every_survivor(self, story):
        victim, survivors, seconds = story.kill_one()
        print(f"node_lost detection after SIGKILL ({story.broker}, "
              f"{story.implementation}): "
              + ", ".join(f"{h}: {s:.2f} s" for h, s in seconds.items()))
        late = {h: s for h, s in seconds.items() if s > LOST_DETECTION_BOUND}
        assert not late, (f"node_lost later than {LOST_DETECTION_BOUND} s after "
                          f"SIGKILL: {late}")
        stats = story.cluster.wait_stats(
            lambda s: s["alive_workers"] == 1 and s["tracked_workers"] == 1,
            workers=survivors, timeout=5, what="the victim gone from the state")
        for survivor in survivors:
            s = stats[survivor.hostname]
            assert s["losses"] == 1 and s["leaves"] == 0, s
            assert len(survivor.events("lost", peer=victim.hostname)) == 1
            assert survivor.events("leave", peer=victim.hostname) == []
            assert survivor.running
        assert_clean_logs(survivors)

    def test_election_after_node_lost(self, story):
        victim, survivors, _ = story.kill_one()
        eid = f"{story.cluster.prefix}-after-lost"
        winners, seconds = run_election(story.cluster, survivors, eid)
        assert len(winners) == 1 and winners[0] in survivors, winners
        record_result(story.scenario, story.broker, "election", seconds,
                      observer=winners[0], note="2 survivors, after node_lost")
        assert all(w.running for w in survivors)
        assert_clean_logs(survivors)

    def test_sigterm_fires_node_leave(self, story):
        leaver, last, seconds, exitcode = story.terminate_one()
        assert exitcode == 0, f"{leaver} exit code {exitcode} after SIGTERM"
        assert len(last.events("leave", peer=leaver.hostname)) == 1
        stats = story.cluster.wait_stats(
            lambda s: s["alive_workers"] == 0 and s["tracked_workers"] == 0,
            workers=[last], timeout=5, what="the leaver gone from the state")
        assert stats[last.hostname]["leaves"] == 1, stats
        assert last.events("lost", peer=leaver.hostname) == []
        assert_clean_logs(story.workers[:2])

    def test_election_in_a_one_worker_cluster(self, story):
        """Stock Celery raises IndexError here (one request) and the worker dies."""
        leaver, last, _, _ = story.terminate_one()
        eid = f"{story.cluster.prefix}-alone"
        before = story.cluster.all_stats([last])[last.hostname]
        winners, seconds = run_election(story.cluster, [last], eid)
        assert winners == [last]
        record_result(story.scenario, story.broker, "election", seconds,
                      observer=last, note="alone")
        after = story.cluster.all_stats([last])[last.hostname]
        assert decided(after) == decided(before) + 1
        assert after["elections"].get("won", 0) == before["elections"].get("won", 0) + 1
        assert last.running
        # Over the whole story: one join per peer, never again.
        assert join_counts(last) == {w.hostname: 1 for w in story.others(last)}
        assert_clean_logs(story.workers)
