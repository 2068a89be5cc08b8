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

Workers are always stopped: by :meth:`Cluster.stop` (fixture teardown), at
exit for anything left (every worker carries a marker in its environment,
so even a straggler outside its process group is found), and by the kernel
if pytest itself is killed (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
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

from ..brokers import stop_process_group

HERE = os.path.dirname(os.path.abspath(__file__))

#: Celery's defaults, which the workers keep: heartbeat every 2 s
#: (``--heartbeat-interval``), a peer is alive for 2 heartbeats after its
#: last one, and Gossip sweeps for lost peers every 5 s.
HEARTBEAT_INTERVAL = 2.0
SWEEP_INTERVAL = 5.0
#: How late node_lost may fire after a SIGKILL: 2 x heartbeat + sweep + 1 s
#: (the worst case is 2 x heartbeat + sweep; 1 s of slack).
LOST_DETECTION_BOUND = 2 * HEARTBEAT_INTERVAL + SWEEP_INTERVAL + 1.0

START_TIMEOUT = float(os.environ.get("GOSSIP_FAST_CLUSTER_START_TIMEOUT", 60))
STOP_TIMEOUT = 15.0
LOGLEVEL = os.environ.get("GOSSIP_FAST_CLUSTER_LOGLEVEL", "INFO")

#: The fallback is asked for on purpose: no worker is given the compiled core.
NO_EXTENSIONS = os.environ.get("GOSSIP_FAST_NO_EXTENSIONS", "").strip().lower() not in (
    "", "0", "false", "no")

#: Every worker's environment has this variable (value: its cluster folder).
MARKER = "GOSSIP_FAST_CLUSTER_TEST"

#: Clusters not yet stopped (the conftest prints their logs on failure).
ACTIVE: set["Cluster"] = set()
#: Measurements (detection times, ...) collected for the end-of-run report.
RESULTS: list[dict] = []

#: A Celery log record's first line: ``[2026-01-01 12:00:00,000: LEVEL/Process] text``.
LOG_RECORD = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): (\w+)/[^\]]*\] ?(.*)")
#: Warnings from gossip (bad input, clock drift, elections that never end,
#: gossip_fast's receive path): never expected between healthy workers.
BAD_WARNINGS = re.compile(
    r"^gossip: |^gossip_fast: |Substantial drift|timed out without a result")
#: Records expected while a broker restarts (the worker reconnects).
CONNECTION_NOISE = re.compile(
    r"^consumer: (Cannot connect to|Connection to broker lost)|"
    r"^Connection to broker lost|"
    r"^gossip_fast: \w+ reader lost its connection|"
    r"^gossip_fast: digest publish failed")
#: Celery 5.7 itself (not gossip_fast, stock Gossip too): after a lost
#: connection ``Consumer.on_connection_error_after_connected`` sets
#: ``c.connection = None`` before restarting the blueprint; a ConsumerStep's
#: ``_close`` then calls ``ignore_errors(None, channel.close)``, and if the
#: close fails that raises AttributeError, logged as below (the worker goes on).
KNOWN_CELERY_RESTART_ERROR = re.compile(
    r"^Error on restarting \w+: AttributeError\(\"'NoneType' object has no "
    r"attribute 'connection_errors'\"\)")


def log_records(text: str) -> list[dict]:
    """Split a worker log into records: time, level, message, the whole text."""
    records = []
    for line in text.splitlines():
        match = LOG_RECORD.match(line)
        if match:
            stamp, level, message = match.groups()
            records.append(dict(
                time=datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp(),
                level=level, message=message, text=line))
        elif records:
            records[-1]["text"] += "\n" + line
        # lines before the first record: the banner and start-up warnings
    return records


#: gossip_fast's start line (gossip_fast/observability.py) and its
#: "receive path changed" line after a consumer restart.
START_LINE = re.compile(r"^gossip_fast(?: \S+: core |: receive path changed)")


class ClusterError(AssertionError):
    """A worker died, or a condition did not come true in time."""


class WaitTimeout(ClusterError):
    pass


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when pytest dies, even by
    SIGKILL (Linux ``PR_SET_PDEATHSIG``), so no worker outlives its run."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except Exception:  # not Linux: atexit and the fixtures still stop them
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
        # kind: "cython" / "python" (gossip_fast) or "stock" (Celery's Gossip),
        # optionally ":<mode>" for gossip_fast's receive path
        # (GOSSIP_FAST_RECEIVE: "auto", the default, or "classic"), and
        # "+digest" for gossip_fast's digest mode (gossip_fast_digest = True).
        kind, plus, extra = kind.partition("+")
        if plus and (extra != "digest" or kind.startswith("stock")):
            raise ValueError(f"unknown worker option {extra!r} for {kind!r}")
        self.digest = bool(plus)
        kind, _, receive = kind.partition(":")
        if kind not in ("cython", "python", "stock"):
            raise ValueError(f"unknown worker kind {kind!r}")
        if receive not in ("", "auto", "classic") or (receive and kind == "stock"):
            raise ValueError(f"unknown receive mode {receive!r} for {kind!r}")
        self.cluster = cluster
        self.name = name
        self.kind = kind
        # None: the default (auto, or $GOSSIP_FAST_RECEIVE of the test run)
        self.receive = receive or None
        self.hostname = f"{name}@{socket.gethostname()}"
        self.log_path = os.path.join(cluster.folder, f"{name}.log")
        self.events_path = os.path.join(cluster.folder, f"{self.hostname}.jsonl")
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.expect_running = False  # a death is an error while this is True
        self.stopped_at: float | None = None  # time.time() of our kill/term
        # How gossip_fast is switched on in the app (tests/cluster/app.py):
        # "install" (gossip_fast.install(app)) or "consumer" (only
        # worker_consumer = 'gossip_fast:Consumer'); extra worker arguments.
        self.route = "install"
        self.extra_args: list[str] = []
        self.extra_env: dict[str, str] = {}

    def __repr__(self) -> str:
        state = "not started"
        if self.proc is not None:
            code = self.proc.poll()
            state = f"pid {self.proc.pid}, " + (
                "running" if code is None else f"exited {code}")
        receive = f" receive={self.receive}" if self.receive else ""
        digest = " digest" if self.digest else ""
        return f"<Worker {self.hostname} {self.kind}{receive}{digest} {state}>"

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
            CLUSTER_GOSSIP=("stock" if self.kind == "stock" else
                            "consumer" if self.route == "consumer" else "fast"),
            CLUSTER_EVENTS_DIR=self.cluster.folder,
        )
        env[MARKER] = self.cluster.folder
        if self.kind == "python":
            env["GOSSIP_FAST_NO_EXTENSIONS"] = "1"
        if self.receive is not None:
            env["GOSSIP_FAST_RECEIVE"] = self.receive
        if self.digest:
            env["CLUSTER_DIGEST"] = "1"
        env.update(self.extra_env)
        return env

    def argv(self) -> list[str]:
        # the solo pool unless extra_args name one: once only, since Celery
        # picks a green pool's monkey-patching from the first --pool it sees
        pool = [] if {"--pool", "-P"} & set(self.extra_args) else ["--pool", "solo"]
        return [
            sys.executable, "-m", "celery", "-A", "app", "worker",
            *pool,
            "-n", f"{self.name}@%h",
            "--loglevel", LOGLEVEL,
            *self.extra_args,
        ]

    def start(self) -> "Worker":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), cwd=self.cluster.folder, env=self.environment(),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
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
        stop_process_group(self.proc, STOP_TIMEOUT)

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

    def log_records(self) -> list[dict]:
        return log_records(self.log())

    def log_problems(self, allow_connection_errors: bool = False) -> list[str]:
        """Log records that show a bug: ERROR/CRITICAL records (tracebacks
        included), and warnings about bad gossip input or clock drift.

        With ``allow_connection_errors`` (a broker restart), the consumer's
        connection errors and :data:`KNOWN_CELERY_RESTART_ERROR` are
        tolerated; "Unrecoverable error" and handler errors never are.
        """
        problems = []
        for record in self.log_records():
            level, message = record["level"], record["message"]
            if level in ("ERROR", "CRITICAL") or (
                    level == "WARNING" and BAD_WARNINGS.search(message)):
                if allow_connection_errors and (
                        CONNECTION_NOISE.search(message)
                        or KNOWN_CELERY_RESTART_ERROR.search(message)):
                    continue
                problems.append(record["text"])
        return problems

    def start_lines(self) -> list[str]:
        """gossip_fast's start line(s) in the log (``gossip_fast <version>:
        core ...``) and its "receive path changed" lines."""
        return [r["message"] for r in self.log_records()
                if START_LINE.search(r["message"])]

    def known_celery_errors(self) -> int:
        """How many times :data:`KNOWN_CELERY_RESTART_ERROR` was logged."""
        return sum(1 for r in self.log_records()
                   if KNOWN_CELERY_RESTART_ERROR.search(r["message"]))

    def connected_times(self) -> list[float]:
        """Times of the worker's "Connected to <broker>" log records."""
        return [r["time"] for r in self.log_records()
                if r["message"].startswith("Connected to ")]


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

    def add(self, *kinds: str, route: str = "install",
            extra_args: Iterable[str] = (), env: dict[str, str] | None = None
            ) -> list[Worker]:
        """Start one worker per kind (in parallel); do not wait.  ``route``,
        ``extra_args`` and ``env`` (more environment): see :class:`Worker`."""
        new = []
        for kind in kinds:
            name = f"{self.prefix}-{len(self.workers)}-{kind.replace(':', '-').replace('+', '-')}"
            worker = Worker(self, name, kind)
            worker.route, worker.extra_args = route, list(extra_args)
            worker.extra_env = dict(env or {})
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


@contextlib.contextmanager
def running_cluster(broker, folder: str, label: str):
    """A :class:`Cluster` on ``broker`` (a tests/brokers.py server), always
    stopped on exit.

    Class fixtures use it around their ``yield``: a cluster lives exactly as
    long as the fixture's parameters (broker, implementation), so no worker
    of one parameter set is still running when the next one starts (it
    would be a fourth member of the next cluster).
    """
    cluster = Cluster(broker.url, folder, label=label)
    try:
        yield cluster
    finally:
        cluster.stop()


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


# -- what the brokers see ---------------------------------------------------------

RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def rabbitmq_queues(server) -> list[dict]:
    """``rabbitmqctl list_queues name consumers messages`` of a RabbitMQServer
    started by tests/brokers.py (its private node: env from the server)."""
    ctl = RABBITMQCTL if os.access(RABBITMQCTL, os.X_OK) else "rabbitmqctl"
    result = subprocess.run(
        [ctl, "-q", "-n", "rabbit@localhost", "list_queues",
         "name", "consumers", "messages", "--formatter", "json"],
        env=server._environment(), cwd=server.folder,
        capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise ClusterError(f"rabbitmqctl failed ({result.returncode}): "
                           f"{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout or "[]")


def redis_subscriptions(url: str, workers: Iterable[Worker]) -> dict[str, dict]:
    """Per worker: its Redis connections and their pattern/channel subscriptions
    (``CLIENT LIST``, clients matched to worker processes by local port)."""
    from urllib.parse import urlsplit

    import psutil
    import redis

    server_port = urlsplit(url).port
    owner = {}
    for worker in workers:
        if not worker.running:
            continue
        for conn in psutil.Process(worker.proc.pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port == server_port:
                owner[conn.laddr.port] = worker.hostname
    client = redis.Redis.from_url(url)
    try:
        clients = client.client_list()
    finally:
        client.close()
    found = {w.hostname: dict(connections=0, psub=0, sub=0) for w in workers if w.running}
    for entry in clients:
        port = int(entry["addr"].rsplit(":", 1)[1])
        hostname = owner.get(port)
        if hostname is None:
            continue
        found[hostname]["connections"] += 1
        found[hostname]["psub"] += int(entry.get("psub", 0))
        found[hostname]["sub"] += int(entry.get("sub", 0))
    return found


# -- helpers shared by the tests ------------------------------------------------------


def record_result(scenario: str, broker: str, event: str, seconds: float | None,
                  observer: Worker | None = None, subject: Worker | None = None,
                  bound: float | None = None, **extra) -> dict:
    """Keep one measurement for the end-of-run report (and return it);
    ``seconds=None`` for an observation that is not a duration."""
    entry = dict(scenario=scenario, broker=broker, event=event, bound=bound, **extra)
    if seconds is not None:
        entry["seconds"] = round(seconds, 3)
    if observer is not None:
        entry.update(observer=observer.hostname, observer_kind=observer.kind)
    if subject is not None:
        entry.update(subject=subject.hostname, subject_kind=subject.kind)
    RESULTS.append(entry)
    return entry


def join_counts(worker: Worker) -> dict[str, int]:
    """How many times ``node_join`` fired on ``worker``, per peer."""
    counts: dict[str, int] = {}
    for record in worker.events("join"):
        counts[record["peer"]] = counts.get(record["peer"], 0) + 1
    return counts


def decided(stats: dict) -> int:
    return (stats.get("elections") or {}).get("decided", 0)


def run_election(cluster: Cluster, workers: list[Worker], eid: str,
                 timeout: float = 20.0) -> tuple[list[Worker], float]:
    """``app.control.election(eid, 'record', {'election': eid})``; wait until
    every one of ``workers`` (gossip_fast) has decided it.

    Returns the workers that recorded a win for it (the app's ``record``
    topic handler) and the seconds from the request to the last decision.
    """
    before = cluster.all_stats(workers)
    assert before is not None, "not every worker answered gossip_stats"
    started = time.time()
    cluster.election(eid, "record", {"election": eid})

    def all_decided():
        stats = cluster.all_stats(workers)
        return stats and all(decided(stats[w.hostname]) > decided(before[w.hostname])
                             for w in workers)

    cluster.wait_for(all_decided, timeout, f"election {eid} decided by every worker",
                     interval=0.05)
    seconds = time.time() - started
    winners = [w for w in cluster.workers
               if w.events("elected", action={"election": eid})]
    return winners, seconds


def assert_clean_logs(workers: Iterable[Worker], allow_connection_errors: bool = False):
    problems = {w.hostname: w.log_problems(allow_connection_errors) for w in workers}
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, "problems in worker logs:\n" + "\n".join(
        f"--- {host}:\n" + "\n".join(lines) for host, lines in problems.items())


def wait_more_heartbeats(cluster: Cluster, workers: list[Worker], peers: int,
                         beats: int = 2, timeout: float = 20.0) -> dict:
    """Wait until each worker applied ``beats`` more events from each of its
    ``peers`` peers (about ``beats`` heartbeat intervals): a window in which
    a duplicate join (or anything else) would have shown up."""
    before = cluster.all_stats(workers)
    assert before is not None, "not every worker answered gossip_stats"

    def enough():
        stats = cluster.all_stats(workers)
        return stats and all(
            stats[w.hostname]["events"]["applied"]
            >= before[w.hostname]["events"]["applied"] + beats * peers
            for w in workers)

    return cluster.wait_for(enough, timeout, f"{beats} more heartbeats from each peer",
                            interval=0.25)
