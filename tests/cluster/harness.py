"""Start, watch and stop real ``celery worker`` processes for the cluster tests.

A :class:`Cluster` owns a folder; each :class:`Worker` runs
``python -m celery -A app worker --pool solo -n <name>@%h`` (the app is
``tests/cluster/app.py``) in its own process group, with its log
(``<name>.log``) and its event file (``<hostname>.jsonl``, written by the
app's user bootstep) in that folder.  Everything is polled, with a deadline:

* :meth:`Worker.events` reads the event file (join / leave / lost / elected);
* :meth:`Cluster.stats` asks workers for ``gossip_stats`` (the same remote
  control command as ``celery -A proj inspect gossip_stats``);
* :meth:`Cluster.wait_for` polls any condition, failing early (with the
  logs) if a worker that should be running has exited.

Workers are always stopped: by :meth:`Cluster.stop` (fixture teardown), and
at exit for anything left (every worker carries a marker in its
environment, so even a straggler outside its process group is found).
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Callable, Iterable

HERE = os.path.dirname(os.path.abspath(__file__))

#: Celery's defaults, which the workers keep: heartbeat every 2 s
#: (``--heartbeat-interval``), a peer is alive for 2 heartbeats after its
#: last one, and Gossip sweeps for lost peers every 5 s.
HEARTBEAT_INTERVAL = 2.0
SWEEP_INTERVAL = 5.0
#: The brief's bound for node_lost after SIGKILL: 2 x heartbeat + sweep + 1 s.
LOST_DETECTION_BOUND = 2 * HEARTBEAT_INTERVAL + SWEEP_INTERVAL + 1.0

START_TIMEOUT = float(os.environ.get("GOSSIP_FAST_CLUSTER_START_TIMEOUT", 60))
STOP_TIMEOUT = 15.0
LOGLEVEL = os.environ.get("GOSSIP_FAST_CLUSTER_LOGLEVEL", "INFO")

#: Every worker's environment has this variable (value: its cluster folder).
MARKER = "GOSSIP_FAST_CLUSTER_TEST"

#: Clusters not yet stopped (the conftest prints their logs on failure).
ACTIVE: set["Cluster"] = set()
#: Measurements (detection times, ...) collected for the end-of-run report.
RESULTS: list[dict] = []

#: Log lines that always mean trouble.
BAD_LOG_PATTERNS = (
    "Unrecoverable error",
    "Ignored error from handler",
    "CRITICAL",
    "Segmentation fault",
    "Fatal Python error",
)
#: ... and lines that are expected while a broker restarts.
CONNECTION_NOISE = re.compile(
    r"Connection to broker lost|Cannot connect to|consumer: |Trying again in|"
    r"ConnectionRefusedError|ConnectionResetError|ConnectionError|"
    r"Connection refused|Connection reset|Server unexpectedly closed|"
    r"Socket closed|socket|amqp|kombu|redis|Errno|celery/worker/consumer|"
    r"RecoverableConnectionError|OperationalError|BrokenPipe|EOF|"
    r"Retry limit|retry|reconnect|restart",
    re.IGNORECASE,
)


class ClusterError(AssertionError):
    """A worker died, or a condition did not come true in time."""


class WaitTimeout(ClusterError):
    pass


def _tail(path: str, lines: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def wait_for(condition: Callable, timeout: float, what: str = "condition",
             interval: float = 0.1, check: Callable | None = None):
    """Poll ``condition()`` until it returns a true value (returned).

    Exceptions from ``condition`` count as "not yet" (the last one is in the
    timeout message); ``check()`` runs before each poll and may raise to
    abort early (e.g. a worker died).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        if check is not None:
            check()
        try:
            value = condition()
        except ClusterError:
            raise
        except Exception as exc:  # not ready yet: keep the reason
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what}: not true after {timeout:.1f} s (last: {last!r})")
        time.sleep(interval)


class Worker:
    """One ``celery worker`` subprocess, in its own process group."""

    def __init__(self, cluster: "Cluster", name: str, kind: str):
        if kind not in ("cython", "python", "stock"):
            raise ValueError(f"unknown worker kind {kind!r}")
        self.cluster = cluster
        self.name = name
        self.kind = kind  # cython / python: gossip_fast; stock: Celery's Gossip
        self.hostname = f"{name}@{socket.gethostname()}"
        self.log_path = os.path.join(cluster.folder, f"{name}.log")
        self.events_path = os.path.join(cluster.folder, f"{self.hostname}.jsonl")
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.expect_running = False  # a death is an error while this is True
        self.stopped_at: float | None = None  # time.time() of our kill/term

    def __repr__(self) -> str:
        state = "not started"
        if self.proc is not None:
            code = self.proc.poll()
            state = f"pid {self.proc.pid}, " + (
                "running" if code is None else f"exited {code}")
        return f"<Worker {self.hostname} {self.kind} {state}>"

    @property
    def gossip_fast(self) -> bool:
        return self.kind != "stock"

    # -- process ------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CLUSTER_", "GOSSIP_FAST_NO_EXTENSIONS"))}
        pythonpath = [HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env.update(
            PYTHONPATH=os.pathsep.join(pythonpath),
            PYTHONUNBUFFERED="1",
            CLUSTER_BROKER_URL=self.cluster.broker_url,
            CLUSTER_GOSSIP="stock" if self.kind == "stock" else "fast",
            CLUSTER_EVENTS_DIR=self.cluster.folder,
        )
        env[MARKER] = self.cluster.folder
        if self.kind == "python":
            env["GOSSIP_FAST_NO_EXTENSIONS"] = "1"
        return env

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "app", "worker",
            "--pool", "solo",
            "-n", f"{self.name}@%h",
            "--loglevel", LOGLEVEL,
        ]

    def start(self) -> "Worker":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), cwd=self.cluster.folder, env=self.environment(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.time()
        self.expect_running = True
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> float:
        """Send ``sig`` to the worker's process group; returns the time sent."""
        self.expect_running = False
        assert self.proc is not None
        self.stopped_at = time.time()
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        return self.stopped_at

    def kill(self) -> float:
        """SIGKILL (no goodbye): the others must notice a lost node."""
        sent = self.signal(signal.SIGKILL)
        self.proc.wait(10)
        return sent

    def terminate(self, timeout: float = STOP_TIMEOUT) -> float:
        """SIGTERM (Celery's warm shutdown: it sends worker-offline)."""
        sent = self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{self} did not exit {timeout} s after SIGTERM\n"
                               f"{self.log_tail()}") from None
        return sent

    def stop(self) -> None:
        """Whatever its state: SIGTERM the group, then SIGKILL it."""
        self.expect_running = False
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # anything left in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # -- what it wrote ------------------------------------------------------------

    def events(self, event: str | None = None, **match) -> list[dict]:
        """Records of the event file (complete lines only), optionally filtered."""
        try:
            with open(self.events_path) as f:
                data = f.read()
        except FileNotFoundError:
            return []
        records = []
        for line in data.splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # being written
            record = json.loads(line)
            if event is not None and record.get("event") != event:
                continue
            if all(record.get(k) == v for k, v in match.items()):
                records.append(record)
        return records

    def started_record(self) -> dict | None:
        started = self.events("started")
        return started[-1] if started else None

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def log_problems(self, allow_connection_errors: bool = False) -> list[str]:
        """Log lines that show a bug (tracebacks, handler errors, crashes).

        With ``allow_connection_errors``, tracebacks whose lines all look like
        broker connection trouble (expected while a broker restarts) are
        tolerated; "Unrecoverable error" and handler errors never are.
        """
        problems = []
        lines = self.log().splitlines()
        for number, line in enumerate(lines):
            if any(p in line for p in BAD_LOG_PATTERNS):
                problems.append(line)
            elif line.startswith("Traceback"):
                block = [line]
                for more in lines[number + 1:]:
                    if more.startswith(("[", "Traceback")) and len(block) > 1:
                        break
                    block.append(more)
                if not allow_connection_errors or not all(
                        CONNECTION_NOISE.search(b) or not b.strip()
                        or b.startswith(("Traceback", "  ", "During handling",
                                         "The above exception"))
                        for b in block):
                    problems.append("\n".join(block))
                elif not CONNECTION_NOISE.search(block[-1]):
                    problems.append("\n".join(block))
        return problems


class Cluster:
    """A set of workers on one broker, sharing a folder."""

    def __init__(self, broker_url: str, folder: str, label: str = "c"):
        self.broker_url = broker_url
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        # A short unique prefix: hostnames never collide with earlier
        # clusters on the same (session-wide) broker.
        self.prefix = f"{label}{uuid.uuid4().hex[:6]}"
        self.workers: list[Worker] = []
        self._client = None
        ACTIVE.add(self)

    def __repr__(self) -> str:
        return f"<Cluster {self.prefix} on {self.broker_url}: {self.workers}>"

    # -- workers -------------------------------------------------------------

    def add(self, *kinds: str) -> list[Worker]:
        """Start one worker per kind (in parallel); do not wait."""
        new = []
        for kind in kinds:
            worker = Worker(self, f"{self.prefix}-{len(self.workers)}-{kind}", kind)
            self.workers.append(worker)
            new.append(worker.start())
        return new

    def start(self, *kinds: str, timeout: float = START_TIMEOUT) -> list[Worker]:
        """Start workers in parallel and wait until each one's steps started."""
        new = self.add(*kinds)
        self.wait_started(new, timeout)
        return new

    def wait_started(self, workers: Iterable[Worker], timeout: float = START_TIMEOUT):
        workers = list(workers)
        self.wait_for(lambda: all(w.started_record() for w in workers), timeout,
                      f"workers {[w.hostname for w in workers]} started")

    @property
    def running(self) -> list[Worker]:
        return [w for w in self.workers if w.expect_running]

    def check(self) -> None:
        """Raise (with its log) if a worker we expect to run has exited."""
        for worker in self.workers:
            if worker.expect_running and not worker.running:
                worker.expect_running = False
                raise ClusterError(
                    f"{worker} exited unexpectedly; log tail:\n{worker.log_tail()}")

    def wait_for(self, condition: Callable, timeout: float, what: str = "condition",
                 interval: float = 0.1):
        return wait_for(condition, timeout, what, interval, check=self.check)

    def stop(self) -> None:
        for worker in self.workers:
            worker.expect_running = False
            if worker.running:  # SIGTERM all first: they shut down in parallel
                try:
                    os.killpg(worker.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for worker in self.workers:
            worker.stop()
        kill_marked(self.folder)
        self.close_client()
        ACTIVE.discard(self)

    # -- remote control --------------------------------------------------------

    @property
    def client(self):
        """A Celery app (not the workers' one) to broadcast control commands."""
        if self._client is None:
            from celery import Celery
            client = Celery(f"cluster-client-{self.prefix}", broker=self.broker_url,
                            set_as_current=False)
            client.conf.update(accept_content=["json"],
                               broker_connection_retry_on_startup=True,
                               broker_connection_timeout=2)
            self._client = client
        return self._client

    def close_client(self) -> None:
        """Drop the client's connections (e.g. after a broker restart)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # broken connection: nothing to close cleanly
                pass

    def stats(self, workers: Iterable[Worker] | None = None,
              timeout: float = 2.0) -> dict[str, dict]:
        """``gossip_stats`` of each worker that answered in time, by hostname."""
        workers = [w for w in (workers if workers is not None else self.running)]
        names = [w.hostname for w in workers]
        replies = self.client.control.broadcast(
            "gossip_stats", reply=True, destination=names,
            timeout=timeout, limit=len(names))
        merged = {}
        for reply in replies or ():
            merged.update(reply)
        return merged

    def all_stats(self, workers: Iterable[Worker] | None = None,
                  timeout: float = 2.0) -> dict[str, dict] | None:
        """Like :meth:`stats`, but None unless every worker answered."""
        workers = list(workers if workers is not None else self.running)
        stats = self.stats(workers, timeout)
        if all(w.hostname in stats for w in workers):
            return stats
        return None

    def wait_stats(self, predicate: Callable[[dict], bool], workers=None,
                   timeout: float = 30.0, what: str = "gossip_stats condition"):
        """Poll ``gossip_stats`` until ``predicate(stats)`` holds for every worker."""
        workers = list(workers if workers is not None else
                       [w for w in self.running if w.gossip_fast])

        def condition():
            stats = self.all_stats(workers)
            if stats and all(predicate(stats[w.hostname]) for w in workers):
                return stats
            self._last_stats = stats
            return None

        self._last_stats = None
        try:
            return self.wait_for(condition, timeout, what, interval=0.2)
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}\nlast gossip_stats: {self._last_stats!r}") from None

    def election(self, id: str, topic: str = "record", action=None) -> None:
        """``app.control.election(id, topic, action)``, as a user would."""
        self.client.control.election(id, topic, action)

    # -- reporting ----------------------------------------------------------------

    def report(self, lines: int = 80) -> str:
        """Log tails and event files of every worker (for failure reports)."""
        parts = [repr(self)]
        for worker in self.workers:
            parts.append(f"----- {worker} log ({worker.log_path}), last {lines} lines -----")
            parts.append(worker.log_tail(lines).rstrip())
            parts.append(f"----- {worker.hostname} events -----")
            try:
                with open(worker.events_path) as f:
                    parts.append(f.read().rstrip())
            except OSError:
                parts.append("<no event file>")
        return "\n".join(parts)


def kill_marked(folder: str) -> None:
    """SIGKILL any process left with our marker for ``folder`` (Linux /proc)."""
    needle = f"{MARKER}={folder}".encode()
    for environ in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(environ, "rb") as f:
                if needle in f.read().split(b"\0"):
                    os.kill(int(environ.split("/")[2]), signal.SIGKILL)
        except (OSError, ValueError):
            continue


@atexit.register
def _stop_everything() -> None:
    for cluster in list(ACTIVE):
        cluster.stop()
