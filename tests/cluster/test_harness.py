"""The harness's own logic, without brokers or workers (fast)."""

import json

import pytest

from . import harness

LOG = """\
/venv/lib/python3.11/site-packages/celery/platforms.py:893: SecurityWarning: superuser
 -------------- w@vm v5.7.0 (collider)
[2026-11-25 16:53:44,290: INFO/MainProcess] Connected to redis://:**@127.0.0.1:56569/0
[2026-11-25 16:53:47,711: WARNING/MainProcess] consumer: Connection to broker lost. Trying to re-establish the connection... (network:ConnectionError)
[2026-11-25 16:53:47,720: ERROR/MainProcess] consumer: Cannot connect to redis://:**@127.0.0.1:56569/0: Error 111.
[2026-11-25 16:53:47,731: ERROR/MainProcess] Error on restarting Gossip: AttributeError("'NoneType' object has no attribute 'connection_errors'")
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/kombu/common.py", line 298, in _ignore_errors
AttributeError: 'NoneType' object has no attribute 'connection_errors'
[2026-11-25 16:53:47,809: INFO/MainProcess] Connected to redis://:**@127.0.0.1:56569/0
"""

HANDLER_ERROR = """\
[2026-11-25 16:53:50,000: ERROR/MainProcess] Ignored error from handler <bound method X>: KeyError('x')
Traceback (most recent call last):
KeyError: 'x'
"""

BAD_INPUT = """\
[2026-11-25 16:53:50,000: WARNING/MainProcess] gossip: dropped event from w2@vm: bad_timestamp 'abc'
"""


@pytest.fixture
def worker(tmp_path):
    cluster = harness.Cluster("redis://127.0.0.1:1/0", str(tmp_path), label="t")
    try:
        yield harness.Worker(cluster, "t-0-cython", "cython")
    finally:
        harness.ACTIVE.discard(cluster)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_log_records_split_and_time(worker):
    write(worker.log_path, LOG)
    records = worker.log_records()
    assert [r["level"] for r in records] == ["INFO", "WARNING", "ERROR", "ERROR", "INFO"]
    assert "Traceback" in records[3]["text"]  # continuation lines belong to it
    assert records[-1]["time"] > records[0]["time"]
    assert len(worker.connected_times()) == 2
    assert worker.known_celery_errors() == 1


def test_restart_noise_is_allowed_only_when_asked(worker):
    write(worker.log_path, LOG)
    assert worker.log_problems(allow_connection_errors=True) == []
    problems = worker.log_problems()
    assert len(problems) == 2
    assert any("Error on restarting Gossip" in p for p in problems)


@pytest.mark.parametrize("text", [HANDLER_ERROR, BAD_INPUT])
def test_handler_errors_and_bad_input_are_always_problems(worker, text):
    write(worker.log_path, LOG + text)
    assert len(worker.log_problems(allow_connection_errors=True)) == 1


def test_events_skip_a_partial_last_line(worker):
    lines = [dict(event="join", peer="a"), dict(event="lost", peer="a")]
    write(worker.events_path,
          "".join(json.dumps(x) + "\n" for x in lines) + '{"event": "jo')
    assert [r["event"] for r in worker.events()] == ["join", "lost"]
    assert worker.events("lost", peer="a") == [lines[1]]
    assert harness.join_counts(worker) == {"a": 1}


def test_wait_for_returns_the_value_and_times_out():
    values = iter([None, 0, "yes"])
    assert harness.wait_for(lambda: next(values), 5, interval=0.01) == "yes"
    with pytest.raises(harness.WaitTimeout, match="never"):
        harness.wait_for(lambda: None, 0.05, "never", interval=0.01)
