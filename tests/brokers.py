"""Real Redis and RabbitMQ servers for the tests.

``RedisServer`` and ``RabbitMQServer`` start a private broker on 127.0.0.1, on a
free port, with all their files in a temporary folder, and remove every trace
of it on ``stop()``::

    with RedisServer() as redis:
        use(redis.url)           # redis://127.0.0.1:PORT/0
        redis.restart()          # same port, same folder: for reconnect tests

If ``GOSSIP_FAST_REDIS_URL`` / ``GOSSIP_FAST_AMQP_URL`` is set, that existing
broker is used instead and nothing is started (``can_restart`` is then False).

The servers come from Debian's ``redis-server`` and ``rabbitmq-server``
packages; ``scripts/install-brokers.sh`` installs them.

This module is also a pytest plugin (``pytest_plugins = ["tests.brokers"]``)
providing the session fixtures ``redis_server`` and ``rabbitmq_server``.  They
skip when a broker is not installed or cannot start, except under CI
(``CI=true``), where they fail instead.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from urllib.parse import urlsplit

START_TIMEOUT = 60.0  # seconds to wait for a broker to accept connections
STOP_TIMEOUT = 20.0  # seconds to wait for a graceful shutdown before SIGKILL
LOOPBACK = "127.0.0.1"

# Every process we start carries this variable (with the server's folder as
# value), so stop() can find stragglers that left our process group.
_MARKER = "GOSSIP_FAST_TEST_BROKER"


class BrokerNotInstalled(RuntimeError):
    """The broker's server program is not on this machine."""


class BrokerStartError(RuntimeError):
    """The broker did not become ready in time (the message has its log)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the process group led by ``proc``; SIGKILL it after ``timeout``
    (the broker servers here, the cluster tests' and benchmark's workers)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # the leader is gone; take any member still left with it
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _marked_pids(marker_value: str) -> list[int]:
    """Processes whose environment has our marker (Linux /proc; zombies have none)."""
    needle = f"{_MARKER}={marker_value}".encode()
    pids = []
    for environ in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(environ, "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(environ.split("/")[2]))
        except (OSError, ValueError):
            continue
    return pids


def _kill_marked(marker_value: str, timeout: float = 5.0) -> None:
    """SIGKILL our stragglers (e.g. a daemonized epmd) until none is left."""
    deadline = time.monotonic() + timeout
    while (pids := _marked_pids(marker_value)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


class _Server:
    """Common lifecycle: start / stop / restart / url / running / with-block."""

    env_var = ""  # GOSSIP_FAST_..._URL: use this existing broker instead
    program = ""  # name of the server program, for messages

    def __init__(self, external_url: str | None = None, *, use_env: bool = True):
        if external_url is None and use_env:
            external_url = os.environ.get(self.env_var) or None
        self.external_url = external_url
        self.port: int | None = urlsplit(external_url).port if external_url else None
        self.folder: str | None = None  # temporary folder with all the files
        self.startup_seconds: float | None = None  # time of the last start
        self._procs: list[subprocess.Popen] = []
        self._external_started = False

    # -- public API ---------------------------------------------------------

    @property
    def can_restart(self) -> bool:
        """False when using an existing broker that we did not start."""
        return self.external_url is None

    @property
    def url(self) -> str:
        if self.external_url:
            return self.external_url
        if self.port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._make_url(self.port)

    @property
    def running(self) -> bool:
        if self.external_url:
            return self._external_started
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def start(self) -> _Server:
        if self.external_url:
            self._wait_ready(self.external_url, lambda: "")
            self._external_started = True
            return self
        if self.running:
            return self
        if self.folder is None:  # first start: new folder and ports
            self._check_installed()
            self.folder = tempfile.mkdtemp(prefix=f"gossip-fast-{self.program}-")
            self.port = free_port()
            self._prepare()
            atexit.register(self.stop)
        began = time.monotonic()
        try:
            self._launch()
            self._wait_ready(self.url, self._log_tail)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server and delete its folder (safe to call twice)."""
        if self.external_url:
            self._external_started = False
            return
        self._stop_processes()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        atexit.unregister(self.stop)

    def restart(self) -> _Server:
        """Stop, then start again on the same port with the same folder."""
        if not self.can_restart:
            raise RuntimeError(
                f"cannot restart the external broker {self.external_url} "
                f"(from ${self.env_var}); unset it to let the tests start their own"
            )
        if self.folder is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        self._stop_processes()
        return self.start()

    @contextlib.contextmanager
    def down(self):
        """The server stopped for the block (its port refuses), then started
        again on the same port with the same folder."""
        if not self.can_restart:
            raise RuntimeError(f"cannot stop the external broker {self.external_url}")
        self._stop_processes()
        try:
            yield self
        finally:
            self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.url if (self.external_url or self.port) else "-"
        return f"<{type(self).__name__} {where} {state}>"

    # -- helpers ---------------------------------------------------------------

    def _spawn(self, argv: list[str], log_name: str, **kwargs) -> subprocess.Popen:
        """Start one process in its own process group, output to a log file."""
        env = kwargs.pop("env", None) or dict(os.environ)
        env[_MARKER] = self.folder
        with open(os.path.join(self.folder, log_name), "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=self.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,
            )
        self._procs.append(proc)
        return proc

    def _stop_processes(self) -> None:
        # Stop in reverse order (rabbitmq before its epmd).
        for proc in reversed(self._procs):
            stop_process_group(proc, STOP_TIMEOUT)
        self._procs = []
        if self.folder is not None:
            _kill_marked(self.folder)

    def _wait_ready(self, url: str, log_tail) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        error: Exception | None = None
        while time.monotonic() < deadline:
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                raise BrokerStartError(
                    f"{self.program} exited with code {dead[0].returncode} "
                    f"during start-up.\n--- log tail ---\n{log_tail()}"
                )
            try:
                self._ping(url)
                return
            except Exception as exc:  # not ready yet
                error = exc
                time.sleep(0.1)
        raise BrokerStartError(
            f"{self.program} at {url} not ready after {START_TIMEOUT:.0f} s "
            f"(last error: {error!r}).\n--- log tail ---\n{log_tail()}"
        )

    def _check_installed(self) -> None:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create the files in the folder (first start only)."""

    def _launch(self) -> None:
        raise NotImplementedError

    def _ping(self, url: str) -> None:
        raise NotImplementedError

    def _make_url(self, port: int) -> str:
        raise NotImplementedError

    def _log_tail(self) -> str:
        raise NotImplementedError


class RedisServer(_Server):
    """``redis-server`` on 127.0.0.1:<free port>, no persistence."""

    env_var = "GOSSIP_FAST_REDIS_URL"
    program = "redis-server"

    def _check_installed(self) -> None:
        if shutil.which("redis-server") is None:
            raise BrokerNotInstalled(
                "redis-server not installed; run scripts/install-brokers.sh"
            )

    def _make_url(self, port: int) -> str:
        return f"redis://{LOOPBACK}:{port}/0"

    def _launch(self) -> None:
        self._spawn(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port),
                "--bind", LOOPBACK,
                "--save", "",
                "--appendonly", "no",
                "--dir", self.folder,
                "--daemonize", "no",
            ],
            "redis.log",
        )

    def _ping(self, url: str) -> None:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port or 6379), 1) as s:
            s.settimeout(1)
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
        # "+PONG", or "-NOAUTH ..." from a password-protected external server.
        if not reply.startswith((b"+PONG", b"-NOAUTH")):
            raise ConnectionError(f"unexpected reply to PING: {reply!r}")

    def _log_tail(self) -> str:
        return _tail(os.path.join(self.folder or "", "redis.log"))


# Debian's /usr/sbin/rabbitmq-server is a wrapper that cds to /var/lib/rabbitmq
# and runs the real script through "su rabbitmq" (in a session of its own);
# we run the real script ourselves, as the rabbitmq user when we are root.
_DEBIAN_RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
_RABBITMQ_CONF = """\
# written by tests/brokers.py
loopback_users.guest = true
# the tests' disks may be nearly full: do not block publishers for that
disk_free_limit.absolute = 1MB
"""


class RabbitMQServer(_Server):
    """``rabbitmq-server`` (node rabbit@localhost) on 127.0.0.1, with a private epmd.

    The AMQP port, the Erlang distribution port and epmd's port are all free
    ports picked at the first start, so this node never meets another one
    (not even a system rabbit@localhost).  Starts in about 5 s.
    """

    env_var = "GOSSIP_FAST_AMQP_URL"
    program = "rabbitmq-server"

    def __init__(self, external_url: str | None = None, *, use_env: bool = True):
        super().__init__(external_url, use_env=use_env)
        self.dist_port: int | None = None
        self.epmd_port: int | None = None
        self._user = None  # a pwd.struct_passwd: run as, when we are root

    @staticmethod
    def find_server() -> str | None:
        if os.access(_DEBIAN_RABBITMQ_SERVER, os.X_OK):
            return _DEBIAN_RABBITMQ_SERVER
        return shutil.which("rabbitmq-server")

    @staticmethod
    def find_epmd() -> str | None:
        found = shutil.which("epmd")
        if found is None:
            found = next(iter(sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))), None)
        return found

    def _check_installed(self) -> None:
        if self.find_server() is None or self.find_epmd() is None:
            raise BrokerNotInstalled(
                "rabbitmq-server not installed; run scripts/install-brokers.sh"
            )

    def _make_url(self, port: int) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{port}//"

    def _prepare(self) -> None:
        folder = self.folder
        self.dist_port = free_port()
        self.epmd_port = free_port()
        for sub in ("mnesia", "log"):
            os.mkdir(os.path.join(folder, sub))
        files = {
            "enabled_plugins": "[].\n",  # no plugins, no management UI
            "rabbitmq-env.conf": "",  # instead of /etc/rabbitmq/rabbitmq-env.conf
            "rabbitmq.conf": _RABBITMQ_CONF,
        }
        for name, text in files.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
        # As root, Debian's rabbitmq runs as (and its files belong to) the
        # rabbitmq user; the folder must be reachable and writable by it.
        if os.geteuid() == 0:
            try:
                import pwd  # POSIX only: keep this module importable on Windows
                self._user = pwd.getpwnam("rabbitmq")
            except KeyError:
                self._user = None
        if self._user is not None:
            uid, gid = self._user.pw_uid, self._user.pw_gid
            for root, _dirs, names in os.walk(folder):
                for path in [root, *(os.path.join(root, n) for n in names)]:
                    os.chown(path, uid, gid)

    def _environment(self) -> dict[str, str]:
        folder = self.folder
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_"))
        }
        env["PATH"] = env.get("PATH", "") + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        env.update(
            HOME=folder,  # Erlang writes its .erlang.cookie here
            LANG=env.get("LANG", "C.UTF-8"),
            RABBITMQ_CONF_ENV_FILE=os.path.join(folder, "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=os.path.join(folder, "rabbitmq.conf"),
            RABBITMQ_MNESIA_BASE=os.path.join(folder, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(folder, "log"),
            RABBITMQ_FEATURE_FLAGS_FILE=os.path.join(folder, "feature_flags"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(folder, "enabled_plugins"),
            RABBITMQ_NODENAME="rabbit@localhost",
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_ADDRESS=LOOPBACK,
            ERL_EPMD_PORT=str(self.epmd_port),
        )
        return env

    def _launch(self) -> None:
        as_user = {}
        if self._user is not None:
            as_user = dict(
                user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[]
            )
        env = self._environment()
        # Our own epmd, in the foreground and in a process group we kill on
        # stop (the one Erlang would start by itself daemonizes and lingers).
        epmd = self._spawn(
            [self.find_epmd(), "-port", str(self.epmd_port), "-address", LOOPBACK],
            "epmd.log",
            env=env,
            **as_user,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((LOOPBACK, self.epmd_port), 1).close()
                break
            except OSError:
                if epmd.poll() is not None or time.monotonic() > deadline:
                    raise BrokerStartError(
                        f"epmd did not start on port {self.epmd_port}.\n"
                        f"--- log tail ---\n{_tail(os.path.join(self.folder, 'epmd.log'))}"
                    ) from None
                time.sleep(0.05)
        self._spawn([self.find_server()], "rabbitmq.log", env=env, **as_user)

    def _ping(self, url: str) -> None:
        from kombu import Connection  # imported late: only needed here

        with Connection(url, connect_timeout=2) as conn:
            conn.connect()

    def _log_tail(self) -> str:
        return _tail(os.path.join(self.folder or "", "rabbitmq.log"))


# -- pytest fixtures -------------------------------------------------------------
# Enable with  pytest_plugins = ["tests.brokers"]  (or  pytest -p tests.brokers).

import pytest  # noqa: E402  (the classes above do not need pytest)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str):
    """Skip on a developer's machine; fail under CI, where brokers must exist."""
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: brokers are required)", pytrace=False)
    pytest.skip(reason)


def _serve(server: _Server):
    problem = None
    try:
        server.start()
    except BrokerNotInstalled as exc:
        problem = str(exc)
    except BrokerStartError as exc:
        problem = f"{server.program} failed to start: {exc}"
    if problem:
        _unavailable(problem)  # outside the except: no chained traceback
    try:
        yield server
    finally:
        server.stop()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "broker: needs a real Redis or RabbitMQ server (tests/brokers.py)"
    )


@pytest.fixture(scope="session")
def redis_server():
    """A started RedisServer for the whole session (``.url``, ``.restart()``)."""
    yield from _serve(RedisServer())


@pytest.fixture(scope="session")
def rabbitmq_server():
    """A started RabbitMQServer for the whole session (``.url``, ``.restart()``)."""
    yield from _serve(RabbitMQServer())
