"""Celery's own unit tests of the Gossip step, run against ours.

A drop-in passes the upstream's tests of what it replaces, as uvloop runs
asyncio's: ``test_Gossip`` of ``t/unit/worker/test_consumer.py``, from the
sdist of the installed Celery, with its import line and the module-level
patch targets (``'celery.worker.consumer.gossip.X'``) pointed at our step's
module.  It runs in its own pytest process, once per implementation, and
on the oldest supported Celery too (scripts/test-compat.sh).

Five of its tests assert stock internals that the drop-in replaces on
purpose, and must fail, each for that reason alone: four build the state
through ``app.events.State`` (ours is the core's table, with a deadline
wheel instead of an LRU), and ``test_on_elect`` expects
``logger.exception`` for a peer's malformed election request (ours counts
and logs it rate-limited as bad input, as CONTRACT.md asks).  Any other
failure, or one of these passing, fails this test.
"""
import os
import re
import subprocess
import sys
import tarfile
import tempfile

import celery
import pytest

from gossip_fast import Gossip

from .conftest import IMPLEMENTATIONS, load_core

EXPECTED_FAILURES = {
    "test_on_message",               # state built by app.events.State
    "test_on_elect_ack_win",         # ... and its alive_workers mocked
    "test_on_elect_ack_lose",
    "test_on_elect_ack_win_but_no_action",
    "test_on_elect",                 # logger.exception for a peer's bad request
}
TEST_FILE = "t/unit/worker/test_consumer.py"


def celery_sdist():
    """The unpacked sdist of the installed Celery (downloaded once)."""
    version = celery.__version__
    top = os.path.join(tempfile.gettempdir(), "gossip-fast-celery-own", f"celery-{version}")
    if os.path.exists(os.path.join(top, TEST_FILE)):
        return top
    download = top + ".download"
    os.makedirs(download, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--no-binary", ":all:", f"celery=={version}", "-d", download],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"could not download the celery {version} sdist: " \
                                   f"{result.stderr[-2000:]}"
    [name] = [n for n in os.listdir(download) if n.endswith(".tar.gz")]
    with tarfile.open(os.path.join(download, name)) as archive:
        archive.extractall(os.path.dirname(top), filter="data")
    assert os.path.exists(os.path.join(top, TEST_FILE)), os.listdir(os.path.dirname(top))
    return top


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_celerys_own_test_gossip(implementation):
    load_core(implementation)  # the compiled one must import (skipped only on purpose)
    top = celery_sdist()
    with open(os.path.join(top, TEST_FILE)) as source:
        text = source.read()
    ours = text.replace("\nfrom celery.worker.consumer.gossip import Gossip\n",
                        "\nfrom gossip_fast import Gossip\n")
    assert ours != text, "the import line of Celery's test file was not found"
    ours = ours.replace("'celery.worker.consumer.gossip.", f"'{Gossip.__module__}.")
    name = f"test_dropin_gossip_{implementation}_{os.getpid()}.py"
    path = os.path.join(top, "t", "unit", "worker", name)
    with open(path, "w") as target:
        target.write(ours)
    env = dict(os.environ, GOSSIP_FAST_NO_EXTENSIONS="1" if implementation == "python" else "")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
             "-k", "test_Gossip", os.path.relpath(path, top)],
            cwd=top, env=env, capture_output=True, text=True, timeout=300)
    finally:
        os.unlink(path)
    output = result.stdout + result.stderr
    failed = set(re.findall(r"^(?:FAILED|ERROR) \S+::test_Gossip::(\w+)", output, re.M))
    summary = output.strip().splitlines()[-1]
    assert failed == EXPECTED_FAILURES, output[-4000:]
    # every other test of test_Gossip passed (15 in Celery 5.5, 16 in 5.7)
    assert re.search(r"\b5 failed, \d\d passed", summary) and "error" not in summary, summary
    # the step under test was ours, in the implementation asked for
    check = subprocess.run(
        [sys.executable, "-c", "import gossip_fast; print(gossip_fast.IMPLEMENTATION)"],
        env=env, capture_output=True, text=True, cwd=top)
    assert check.stdout.strip() == implementation
