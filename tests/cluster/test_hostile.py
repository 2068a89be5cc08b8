"""Hostile input on the event exchange, read by real workers (issue 3, item 3).

Per broker, one cluster of three gossip_fast workers: a compiled and a
pure-Python one on the default (fast) receive path, and a compiled one on
``GOSSIP_FAST_RECEIVE=classic`` (kombu's consumer, as stock), which is also
the well-behaved third peer.  The test process publishes to the event
exchange as a real producer does: kombu's ``Producer`` on the exchange of
``celery.events.event.get_exchange(conn)`` (``celeryev``: fanout on Redis,
topic on RabbitMQ), routing keys ``worker.heartbeat``, ``worker.online``,
``worker.elect``, ``worker.elect.ack``, with a ``hostname`` header as
Celery's dispatcher sets it (or none, or a forged one).

1. *Cases* (:func:`build_cases`, 120 messages): malformed JSON, wrong types
   in every field, a missing hostname, NaN / Infinity / huge / negative /
   string clocks and timestamps, ``event`` / ``heartbeats`` / ``id`` (and
   other reserved) body keys, pickle (whose unpickling would create a
   marker file), content types outside ``accept``, content encodings,
   compressed bodies (kombu's ``gzip`` and ``bzip2`` of a valid event:
   applied, as kombu does; corrupt or unknown compression: dropped), list
   and scalar bodies, 100,000-deep nesting, 1 MB bodies, header/body
   hostname mismatches (a real worker's hostname on either side), a forged
   event in a real worker's name with a poisoned clock, bad election
   messages.  Each case says what every worker must count (``dropped`` /
   ``sanitized`` reasons of ``gossip_stats``) or apply (its sender joins).
   Two rounds: everything but corrupt compression (checked on all three
   workers), then corrupt compression (which kills kombu's consumer, see
   ``Case.last``).  On a mismatch the culprit cases are named.
2. A JSON ``null`` body (its own test: it must be counted too).
3. The classic worker leaves (SIGTERM), then a *flood*: 50,000 bad messages
   on the non-heartbeat routing key ``worker.online`` (the Redis fast path
   sheds superseded heartbeats under overload by design; nothing else),
   five kinds of 10,000 each, paced at :data:`FLOOD_RATE` per second.  They
   are the bytes of kombu's own publish of each kind, captured and written
   straight to the broker (a fresh ``delivery_tag`` per message on Redis),
   so that the test process does not take the CPU the workers need.
4. Redis only, a *burst*: the same 50,000 written as fast as possible
   (pub/sub has no TTL: all of them reach the workers).
5. Checks: every worker stays up and answers ``gossip_stats``; every message
   is accounted for (``received`` = applied + own + dropped + handled); the
   clock stays an int far below 2**63 (never 1e30, 2**63, 2**62 + 1); no
   entry for any dropped sender (only real peers and the accepted senders
   ever join; the accepted ones are lost once silent, the real peers never,
   also during the flood and the burst); the marker file never appears;
   the log has rate-limited warnings whose counts add up to the counters,
   and no errors.

Measurements (per step, the flood's and the burst's rates, absorption
time, CPU, RSS, shed) are printed and written to ``hostile-results.json``
in pytest's base temporary folder (and to the end-of-run report).
Knob: ``GOSSIP_FAST_HOSTILE_FLOOD_RATE`` (default 2,500 per second, well
inside what a worker absorbs here, so that only a real problem fails the
flood test; the burst covers overload).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import re
import time
import uuid
import zlib
from dataclasses import dataclass, field
from itertools import pairwise

import pytest

from .harness import (
    ClusterError,
    WaitTimeout,
    join_counts,
    record_result,
    running_cluster,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.broker]

SCENARIO = "hostile input"
JSON = "application/json"
PICKLE = "application/x-python-serialize"
#: Messages in the flood, and their rate (per second, paced in 0.1 s ticks).
FLOOD_TOTAL = 50_000
FLOOD_RATE = int(os.environ.get("GOSSIP_FAST_HOSTILE_FLOOD_RATE", 2_500))
#: The burst (Redis only): as many, written as fast as possible.
BURST_TOTAL = 50_000
FLOOD_KEY = "worker.online"
#: ``gossip._reject`` logs one line per reason per this many seconds
#: (``gossip_fast.bootstep.BAD_INPUT_LOG_INTERVAL``).
LOG_INTERVAL = 10.0
#: A clock that moved this far has taken a poisoned value (a real cluster
#: of three workers that lives for a minute is in the thousands).
SANE_CLOCK = 10 ** 7
#: Valid reasons; "error" and "handler_error" would be bugs (see the docs).
BUG_REASONS = {"error", "handler_error", "reader_error"}

MISSING = object()
RESULTS_FILE = "hostile-results.json"


# -- bodies ------------------------------------------------------------------------


def event(hostname=MISSING, type_="worker-heartbeat", **fields) -> dict:
    """A worker event as Celery's dispatcher builds it (its field order);
    ``field=MISSING`` leaves a field out."""
    body = {"hostname": hostname, "utcoffset": 0, "pid": 4242, "clock": 7,
            "freq": 2.0, "active": 0, "processed": 0, "loadavg": [0.1, 0.2, 0.3],
            "sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux",
            "timestamp": time.time(), "type": type_}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not MISSING}


def dumps(obj) -> bytes:
    """JSON as Python (and kombu) writes it: NaN / Infinity literals allowed."""
    return json.dumps(obj).encode()


class MakeMarker:
    """Unpickling this calls ``open(path, 'w')``: the file appears."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@dataclass
class Case:
    """One hostile message and what every worker must do with it."""

    name: str
    body: object                     # bytes, or callable(host) -> bytes
    routing_key: str = "worker.heartbeat"
    header: object = "host"          # "host": the case's hostname; None: no header
    content_type: str = JSON
    content_encoding: str = "utf-8"
    compression: str | None = None
    dropped: dict = field(default_factory=dict)
    sanitized: dict = field(default_factory=dict)
    accepted: bool = False           # applied: its sender joins every other worker
    handled: bool = False            # reaches an election handler, counted nowhere
    own: str | None = None           # role whose own event this is (only own += 1)
    last: bool = False               # sent in a second round (it kills kombu's consumer)
    host: str = ""

    def payload(self) -> tuple[bytes, dict]:
        body = self.body(self.host) if callable(self.body) else self.body
        if self.header == "host":
            headers = {"hostname": self.host}
        elif self.header is None:
            headers = {}
        else:
            headers = {"hostname": self.header}
        return body, headers

    def expected(self, role: str) -> tuple[dict, dict]:
        if self.own == role:
            return {}, {}
        return self.dropped, self.sanitized


def build_cases(prefix: str, hosts: dict[str, str], pids: dict[str, int],
                marker: str, broker: str) -> list[Case]:
    """The hostile messages; ``hosts``: role -> real worker hostname."""
    cases: list[Case] = []

    def add(name, body, **kwargs):
        case = Case(name, body, **kwargs)
        case.host = f"{prefix}-h{len(cases)}@evil"
        cases.append(case)
        return case

    def drop(name, body, reason, **kwargs):
        return add(name, body, dropped={reason: 1}, **kwargs)

    def accept(name, body, sanitized=None, **kwargs):
        return add(name, body, accepted=True, sanitized=sanitized or {}, **kwargs)

    def ev(**fields):
        return lambda host: dumps(event(**{"hostname": host, **fields}))

    # -- decoding ----------------------------------------------------------
    drop("malformed JSON", b'{"hostname": "a@b", "type": ', "decode_error")
    drop("not JSON", b"\x00\xff\xfe garbage \x01", "decode_error")
    drop("invalid UTF-8 in a string",
         lambda host: dumps(event(host)).replace(b'"py-celery"', b'"py-\xff\xfe"'),
         "decode_error")
    drop("empty body", b"", "bad_body")
    drop("list body", b"[1, 2, 3]", "bad_body")
    drop("list of events", lambda host: dumps([event(host)]), "bad_body")
    drop("string body", b'"worker-heartbeat"', "bad_body")
    drop("number body", b"42", "bad_body")
    drop("bool body", b"true", "bad_body")
    drop("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, "decode_error")
    drop("object nested 100,000 deep", b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
         "decode_error")
    accept("1 MB valid heartbeat", ev(padding="x" * 1_000_000))
    drop("1 MB not JSON", b"{" + b"\x00x" * 500_000, "decode_error")
    drop("1 MB list", lambda host: b"[" + b"1," * 500_000 + b"1]", "bad_body")

    # -- content types, encodings, compression ------------------------------
    for key in ("worker.heartbeat", "worker.online", "worker.elect", "worker.elect.ack"):
        drop(f"pickle on {key}", pickle.dumps(MakeMarker(marker)), "decode_error",
             routing_key=key, content_type=PICKLE, content_encoding="binary")
    drop("pickle bytes declared as JSON", pickle.dumps(MakeMarker(marker)), "decode_error")
    drop("gzip of pickle", pickle.dumps(MakeMarker(marker)), "decode_error",
         content_type=PICKLE, content_encoding="binary", compression="gzip")
    drop("YAML", lambda host: f"hostname: {host}\ntype: worker-heartbeat\n".encode(),
         "decode_error", content_type="application/x-yaml")
    drop("msgpack", b"\x82\xa8hostname\xa3a@b\xa4type\xb0worker-heartbeat",
         "decode_error", content_type="application/x-msgpack", content_encoding="binary")
    drop("text/plain JSON", ev(), "decode_error", content_type="text/plain")
    drop("JSON with a charset parameter", ev(), "decode_error",
         content_type="application/json; charset=utf-8")
    # kombu's JSON decoder reads UTF-8 bytes whatever content_encoding says
    accept("unknown content encoding, UTF-8 JSON (kombu ignores it)", ev(),
           content_encoding="x-evil-codec")
    # On RabbitMQ, py-amqp decodes a body with its content_encoding before
    # kombu sees it (auto_decode): stock applies a UTF-16 event there, and
    # drops it on Redis (kombu's JSON decoder reads UTF-8).
    utf16 = lambda host: json.dumps(event(host)).encode("utf-16")  # noqa: E731
    if broker == "rabbitmq":
        accept("UTF-16 JSON (py-amqp decodes it)", utf16, content_encoding="utf-16")
    else:
        drop("UTF-16 JSON (kombu reads UTF-8)", utf16, "decode_error",
             content_encoding="utf-16")
    accept("gzip (kombu) of a valid heartbeat", ev(), compression="gzip")
    accept("bzip2 (kombu) of a valid heartbeat", ev(), compression="bzip2")
    # Sent last: kombu's Consumer re-raises a decompression error unless it
    # has an on_decode_error callback, which kills a worker on the classic
    # path; everything else is checked on all three workers first.
    drop("corrupt gzip", b"\x78\x9c this is not zlib", "decode_error",
         compression="raw:application/x-gzip", last=True)
    drop("truncated gzip", lambda host: zlib.compress(dumps(event(host)))[:-9],
         "decode_error", compression="raw:application/x-gzip", last=True)
    drop("corrupt bzip2", b"BZh91AY&SY garbage", "decode_error",
         compression="raw:application/x-bz2", last=True)
    drop("unknown compression", ev(), "decode_error", compression="raw:application/x-evil",
         last=True)

    # -- hostname ------------------------------------------------------------
    drop("no hostname anywhere", lambda host: dumps(event()), "bad_hostname", header=None)
    for label, value in (("int", 123), ("empty", ""), ("null", None), ("list", ["a@b"]),
                         ("object", {"a": "b"}), ("bool", True)):
        drop(f"hostname {label}, no header", ev(hostname=value), "bad_hostname",
             header=None)
    drop("header hostname int", ev(hostname=MISSING), "bad_hostname", header=7)
    drop("header and body disagree", ev(hostname="someone-else@evil"), "hostname_mismatch")
    role0, role1 = list(hosts)[:2]
    drop(f"header is {role0}'s hostname, body is not", ev(hostname="evil@evil"),
         "hostname_mismatch", header=hosts[role0])
    drop(f"body is {role0}'s hostname, header is not", ev(hostname=hosts[role0]),
         "hostname_mismatch")
    add(f"forged own event of {role1}, clock 1e30",
        lambda host: dumps(event(hosts[role1], clock=1e30, pid=pids[role1])),
        header=hosts[role1], sanitized={"bad_clock": 1}, own=role1)

    # -- type ----------------------------------------------------------------
    for label, value in (("missing", MISSING), ("int", 5), ("null", None), ("list", [])):
        drop(f"type {label}", ev(type_=value), "bad_type")

    # -- timestamp -------------------------------------------------------------
    for label, value in (
            ("missing", MISSING), ("null", None), ("string", "abc"),
            ("numeric string", "1700000000"), ("true", True), ("false", False),
            ("list", []), ("object", {}), ("NaN", math.nan), ("Infinity", math.inf),
            ("-Infinity", -math.inf), ("0", 0), ("0.0", 0.0), ("-1", -1),
            ("-1e300", -1e300), ("1e300", 1e300), ("1e13 (year 318857)", 1e13),
            ("10**30", 10 ** 30), ("2**64", 2 ** 64)):
        drop(f"timestamp {label}", ev(timestamp=value), "bad_timestamp")
    drop("timestamp 1e400 (Infinity in JSON)",
         lambda host: dumps(event(host, timestamp=1234.5)).replace(b"1234.5", b"1e400"),
         "bad_timestamp")

    # -- freq ------------------------------------------------------------------
    for label, value in (
            ("string", "2"), ("word", "abc"), ("null", None), ("true", True),
            ("0", 0), ("-2", -2), ("NaN", math.nan), ("Infinity", math.inf),
            ("1e9", 1e9), ("86401", 86401), ("list", [2])):
        drop(f"freq {label}", ev(freq=value), "bad_freq")

    # -- clock: cleaned (ours forwarded instead), then applied ---------------
    for label, value in (
            ("1e30", 1e30), ("10**30", 10 ** 30), ("2**63", 2 ** 63), ("2**64", 2 ** 64),
            ("2**62 + 1", 2 ** 62 + 1), ("-1", -1), ("1.5", 1.5), ("5.0", 5.0),
            ("string", "5"), ("word", "abc"), ("null", None), ("true", True),
            ("list", [1]), ("object", {}), ("NaN", math.nan), ("Infinity", math.inf),
            ("-Infinity", -math.inf)):
        accept(f"clock {label}", ev(clock=value), sanitized={"bad_clock": 1})

    # -- reserved body keys: cleaned, then applied -------------------------------
    for key, value in (("event", "x"), ("heartbeats", [1e30, "x"]), ("id", "evil"),
                       ("alive", True), ("heartbeat_expires", 1e30), ("_hb", None),
                       ("update", "x"), ("status_string", 1)):
        accept(f"reserved key {key}", ev(**{key: value}),
               sanitized={"reserved_field": 1})
    accept("reserved keys event + heartbeats + id",
           ev(event="x", heartbeats=["x"], id=1), sanitized={"reserved_field": 1})
    accept("wrong types in every unchecked field",
           ev(pid="x", utcoffset="x", active=[], processed={}, loadavg="x",
              sw_ident=5, sw_ver=None, sw_sys=[1]))

    # -- elections -------------------------------------------------------------
    def elect(**fields):
        body = {"id": "e-1", "clock": 3, "hostname": "h@evil", "pid": 1, "topic": "record",
                "action": None, "cver": 1, "timestamp": time.time(), "type": "worker-elect"}
        body.update(fields)
        return dumps({k: v for k, v in body.items() if v is not MISSING})

    drop("elect without fields", b"{}", "bad_election", routing_key="worker.elect",
         header=None)
    for label, fields in (("clock string", {"clock": "x"}), ("clock 1e30", {"clock": 1e30}),
                          ("hostname int", {"hostname": 5}), ("hostname empty", {"hostname": ""}),
                          ("topic list", {"topic": []}), ("id list", {"id": [1]}),
                          ("no id", {"id": MISSING})):
        drop(f"elect {label}", lambda host, f=fields: elect(**f), "bad_election",
             routing_key="worker.elect")
    drop("elect list body", b"[1]", "bad_body", routing_key="worker.elect")
    drop("elect malformed JSON", b'{"id": ', "decode_error", routing_key="worker.elect")
    for label, body in (("empty", b"{}"), ("id list", b'{"id": [1]}'),
                        ("unknown id", b'{"id": "nobody-asked"}')):
        add(f"elect.ack {label}", body, routing_key="worker.elect.ack", handled=True)
    drop("elect.ack list body", b"[1]", "bad_body", routing_key="worker.elect.ack")
    return cases


# -- publishing ----------------------------------------------------------------------


class EventProducer:
    """Publishes to the event exchange through kombu, as Celery's dispatcher."""

    def __init__(self, url: str):
        from celery.events.event import get_exchange
        from kombu import Connection, Producer

        self.conn = Connection(url)
        self.conn.connect()
        self.exchange = get_exchange(self.conn)
        self.channel = self.conn.default_channel
        self.producer = Producer(self.channel, exchange=self.exchange)
        self.producer.maybe_declare(self.exchange)
        self.driver = self.conn.transport.driver_type

    def publish(self, routing_key: str, body: bytes, headers: dict,
                content_type: str = JSON, content_encoding: str = "utf-8",
                compression: str | None = None) -> None:
        headers = dict(headers)
        if compression and compression.startswith("raw:"):
            # a compression header over a body we made ourselves (corrupt)
            headers["compression"] = compression[4:]
            compression = None
        self.producer.publish(
            body, routing_key=routing_key, exchange=self.exchange.name,
            headers=headers, content_type=content_type,
            content_encoding=content_encoding, compression=compression,
            delivery_mode=1, retry=False)

    def publish_case(self, case: Case) -> None:
        body, headers = case.payload()
        self.publish(case.routing_key, body, headers, case.content_type,
                     case.content_encoding, case.compression)

    # -- kombu's bytes, replayed ------------------------------------------------------

    def captured(self, routing_key: str, body: bytes, headers: dict) -> object:
        """What kombu sends for this publish, captured instead of sent:
        Redis ``(topics, envelope dict)``, AMQP the frames' bytes."""
        if self.driver == "redis":
            seen = []
            channel = self.channel
            real = channel._put_fanout
            channel._put_fanout = lambda exchange, message, rk, **kw: seen.append(
                (channel._get_publish_topics(exchange, rk), message))
            try:
                self.publish(routing_key, body, headers)
            finally:
                del channel._put_fanout
                assert channel._put_fanout == real
            return seen[0]
        transport = self.conn.connection.transport
        chunks = []
        real = transport._write
        transport._write = lambda data: chunks.append(bytes(data))
        try:
            self.publish(routing_key, body, headers)
        finally:
            transport._write = real
        return b"".join(chunks)

    def replayer(self, templates: list) -> "Replayer":
        return Replayer(self, templates)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.release()


class Replayer:
    """Writes kombu's captured messages straight to the broker, fast."""

    def __init__(self, producer: EventProducer, templates: list):
        self.producer = producer
        self.driver = producer.driver
        if self.driver == "redis":
            import redis
            from kombu.utils.json import dumps as kombu_dumps

            self.client = redis.Redis.from_url(producer.conn.as_uri(include_password=True))
            self.parts = []
            for topics, message in templates:
                tag = message["properties"]["delivery_tag"]
                head, tail = kombu_dumps(message).split(tag)
                self.parts.append((topics, head.encode(), tail.encode()))
        else:
            self.sock = producer.conn.connection.transport.sock
            self.frames = templates

    def send(self, count: int, start: int) -> None:
        """Messages ``start .. start+count-1``, kinds in rotation."""
        if self.driver == "redis":
            pipe = self.client.pipeline(transaction=False)
            for n in range(start, start + count):
                topics, head, tail = self.parts[n % len(self.parts)]
                payload = head + str(uuid.uuid4()).encode() + tail
                for topic in topics:
                    pipe.publish(topic, payload)
            pipe.execute()
        else:
            frames = self.frames
            self.sock.sendall(b"".join(frames[n % len(frames)]
                                       for n in range(start, start + count)))

    def close(self) -> None:
        if self.driver == "redis":
            self.client.close()


# -- reading the workers ------------------------------------------------------------------

GOSSIP_LINE = re.compile(
    r"^gossip: (?P<verb>dropped|cleaned) event from (?P<sender>.*?): (?P<reason>\w+) "
    r"(?P<detail>.*?)(?: \((?P<more>\d+) more like it since the last report\))?$",
    re.S)


#: Warnings that no input may cause (gossip_fast's own, drift, elections).
OTHER_WARNINGS = re.compile(r"^gossip|Substantial drift|timed out without a result")


def gossip_log_lines(worker, until: float | None = None) -> dict[str, list[dict]]:
    """The bad-input warnings of a worker's log (up to ``until``), by reason."""
    found: dict[str, list[dict]] = {}
    for record in worker.log_records():
        if record["level"] != "WARNING" or (until is not None and record["time"] > until):
            continue
        match = GOSSIP_LINE.match(record["message"])
        if match:
            found.setdefault(match["reason"], []).append(
                dict(time=record["time"], more=int(match["more"] or 0),
                     verb=match["verb"]))
    return found


def counters(stats: dict) -> dict[str, int]:
    """dropped and sanitized of one gossip_stats, as one flat dict."""
    flat = {f"dropped.{k}": v for k, v in stats["dropped"].items()}
    flat.update({f"sanitized.{k}": v for k, v in stats["sanitized"].items()})
    return flat


def diff(after: dict, before: dict) -> dict[str, int]:
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys)
            if after.get(k, 0) != before.get(k, 0)}


def flat_expected(dropped: dict, sanitized: dict, times: int = 1) -> dict[str, int]:
    out = {f"dropped.{k}": v * times for k, v in dropped.items()}
    out.update({f"sanitized.{k}": v * times for k, v in sanitized.items()})
    return out


def add_into(total: dict, more: dict) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


def rss(worker) -> int | None:
    import psutil
    try:
        return psutil.Process(worker.proc.pid).memory_info().rss
    except Exception:
        return None


def cpu_seconds(worker) -> float | None:
    import psutil
    try:
        times = psutil.Process(worker.proc.pid).cpu_times()
        return times.user + times.system
    except Exception:
        return None


# -- the scenario ---------------------------------------------------------------------------


class Hostile:
    """The cluster of one broker, its phases, and everything measured on it.

    A worker that dies is recorded in :attr:`deaths` (phase, exit code, log
    tail) and the scenario goes on with the others, so one crash does not
    hide what the rest of the scenario would show.
    """

    def __init__(self, cluster, broker_name, roles):
        self.cluster = cluster
        self.broker = broker_name
        self.roles = roles                       # role -> Worker
        self.workers = list(roles.values())
        self.marker = os.path.join(cluster.folder, "UNPICKLED-MARKER")
        self.cases: list[Case] = []
        self.snapshots: dict[str, dict] = {}     # phase -> {hostname: gossip_stats}
        self.case_mismatch: dict[str, dict] = {}  # hostname -> {counter: (expected, got)}
        self.case_attribution: list[str] = []
        self.null: dict[str, dict] = {}
        self.flood: dict = {}
        self.burst: dict = {}
        self.replayed: set[str] = set()          # accepted senders of replayed cases
        self.deaths: dict[str, dict] = {}
        self.errors: list[str] = []
        self.phase = "start"
        self.figures: dict = {"broker": broker_name, "steps": {}}

    def role_of(self, worker) -> str:
        return next(r for r, w in self.roles.items() if w is worker)

    def step(self, name: str, began: float) -> None:
        self.figures["steps"][name] = round(time.time() - began, 2)

    # -- watching the workers --------------------------------------------------------

    def check(self) -> None:
        """Record (do not raise) a worker that died; raise if none is left."""
        for worker in self.workers:
            if worker.expect_running and not worker.running:
                worker.expect_running = False
                self.deaths[worker.hostname] = dict(
                    role=self.role_of(worker), phase=self.phase,
                    exit_code=worker.proc.returncode, log_tail=worker.log_tail(60))
        if not self.live():
            raise ClusterError(f"every worker died: {sorted(self.deaths)}")

    def live(self) -> list:
        return [w for w in self.workers if w.expect_running and w.running]

    def wait(self, condition, timeout: float, what: str, interval: float = 0.2):
        return wait_for(condition, timeout, what, interval, check=self.check)

    def stats(self, workers=None, timeout: float = 10.0) -> dict:
        """gossip_stats of the (given) workers still running, by hostname."""
        def condition():
            live = self.live()
            targets = [w for w in (workers or live) if w in live]
            return self.cluster.all_stats(targets) if targets else {}
        stats = self.wait(condition, timeout, "gossip_stats from every live worker", 0.1)
        return stats if stats is not None else {}

    def wait_counts(self, before: dict, expected: dict, timeout: float, what: str,
                    extra=None) -> tuple[dict, dict]:
        """Wait until every live worker's dropped/sanitized counters moved by
        exactly ``expected[hostname]`` since ``before`` (and ``extra(worker)``);
        returns the stats and, on a timeout, ``{hostname: {counter:
        (expected, got)}}``."""
        def condition():
            live = self.live()
            stats = self.cluster.all_stats(live)
            if not stats:
                return None
            for w in live:
                got = diff(counters(stats[w.hostname]), counters(before[w.hostname]))
                if got != expected[w.hostname] or (extra is not None and not extra(w)):
                    return None
            return stats

        try:
            return self.wait(condition, timeout, what), {}
        except WaitTimeout as exc:
            self.errors.append(str(exc)[:1500])
        stats = self.stats()
        mismatch = {}
        for w in self.live():
            got = diff(counters(stats[w.hostname]), counters(before[w.hostname]))
            want = expected[w.hostname]
            wrong = {k: (want.get(k, 0), got.get(k, 0)) for k in sorted(set(got) | set(want))
                     if got.get(k, 0) != want.get(k, 0)}
            if wrong:
                mismatch[w.hostname] = wrong
        return stats, mismatch

    # -- phases ----------------------------------------------------------------------

    def run_cases(self, producer: EventProducer) -> None:
        """Two rounds: every case but the ``last`` ones (checked on all three
        workers), then the ``last`` ones."""
        self.phase = "cases"
        hosts = {r: w.hostname for r, w in self.roles.items()}
        pids = {r: w.started_record()["pid"] for r, w in self.roles.items()}
        self.cases = build_cases(self.cluster.prefix, hosts, pids, self.marker, self.broker)
        began = time.time()
        self.snapshots["before_cases"] = self.stats()
        for last in (False, True):
            self.phase = "cases, second round" if last else "cases"
            cases = [c for c in self.cases if c.last == last]
            before = self.stats()
            for case in cases:
                producer.publish_case(case)
            expected = {}
            for worker in self.workers:
                total: dict[str, int] = {}
                for case in cases:
                    add_into(total, flat_expected(*case.expected(self.role_of(worker))))
                expected[worker.hostname] = total
            accepted = {c.host for c in cases if c.accepted}
            stats, mismatch = self.wait_counts(
                before, expected, 10, f"every hostile case counted ({self.phase})",
                extra=lambda w, accepted=accepted: accepted <= set(join_counts(w)))
            for worker in self.live():
                missing = accepted - set(join_counts(worker))
                if missing:
                    mismatch.setdefault(worker.hostname, {})["not applied"] = sorted(
                        c.name for c in cases if c.host in missing)
            self.snapshots["after_cases"] = stats
            self.snapshots["cases_first_round" if not last else "cases_second_round"] = stats
            for hostname, wrong in mismatch.items():
                self.case_mismatch.setdefault(hostname, {}).update(wrong)
            if mismatch:
                self.attribute(producer, cases, mismatch)
        self.step("cases published -> all counted", began)
        self.figures["cases"] = len(self.cases)
        self.figures["accepted_cases"] = sum(1 for c in self.cases if c.accepted)

    def attribute(self, producer: EventProducer, cases: list, mismatch: dict) -> None:
        """Name the cases behind ``mismatch``: those not applied, else replay
        alone (at most 20) the cases that may explain a counter."""
        unapplied = {name for wrong in mismatch.values() for name in wrong.get("not applied", ())}
        for name in sorted(unapplied):
            where = [self.role_of(w) for w in self.workers
                     if name in mismatch.get(w.hostname, {}).get("not applied", ())]
            self.case_attribution.append(f"{name!r} not applied on {where}")
        if unapplied:
            return  # its drop (if any) explains the counters
        keys = {k for wrong in mismatch.values() for k in wrong}
        expected_keys = set()
        for case in cases:
            expected_keys |= set(flat_expected(case.dropped, case.sanitized))
        suspects = [c for c in cases
                    if keys - expected_keys          # a reason no case expects: all
                    or keys & set(flat_expected(c.dropped, c.sanitized))]
        for case in suspects[:20]:
            if case.accepted:  # a new sender: it must join again
                case = dataclasses.replace(case, host=case.host.replace("@evil", "-r@evil"))
                self.replayed.add(case.host)
            before = self.stats()
            producer.publish_case(case)
            time.sleep(0.3)
            after = self.stats()
            for worker in self.live():
                if worker.hostname not in before or worker.hostname not in after:
                    continue
                want = flat_expected(*case.expected(self.role_of(worker)))
                got = diff(counters(after[worker.hostname]), counters(before[worker.hostname]))
                if got != want:
                    self.case_attribution.append(
                        f"{case.name!r} on {self.role_of(worker)}: expected {want}, got {got}")

    def run_null(self, producer: EventProducer) -> None:
        self.phase = "null body"
        before = self.stats()
        sender = {"hostname": f"{self.cluster.prefix}-null@evil"}
        producer.publish("worker.heartbeat", b"null", sender)
        producer.publish("worker.elect", b"null", sender)
        time.sleep(1.0)
        self.check()
        after = self.stats()
        for hostname in after:
            b, a = before[hostname], after[hostname]
            self.null[hostname] = dict(
                counted=diff(counters(a), counters(b)),
                received=a["events"]["received"] - b["events"]["received"],
                applied=a["events"]["applied"] - b["events"]["applied"],
                own=a["events"]["own"] - b["events"]["own"])

    def leave_classic(self) -> None:
        self.phase = "classic worker leaves"
        classic = self.roles["classic"]
        if classic not in self.live():
            return  # it died: the others will lose it instead
        self.snapshots["classic_last"] = self.stats([classic])
        began = time.time()
        classic.terminate()
        others = self.live()
        self.wait(lambda: all(o.events("leave", peer=classic.hostname) for o in others), 15,
                  f"node_leave({classic.hostname}) on the others")
        self.step("classic worker SIGTERM -> node_leave", began)

    def flood_kinds(self) -> list[tuple[str, bytes, dict]]:
        """(reason, body, headers) of the flood's five kinds of bad message."""
        prefix = self.cluster.prefix
        return [
            ("decode_error", b'{"hostname": "flood@evil", "type": "worker-',
             {"hostname": f"{prefix}-flood1@evil"}),
            ("bad_hostname", dumps(event(type_="worker-online")), {}),
            ("bad_body", b'[{"hostname": "flood@evil"}]',
             {"hostname": f"{prefix}-flood3@evil"}),
            ("bad_timestamp", dumps(event(f"{prefix}-flood4@evil", type_="worker-online",
                                          timestamp="abc")),
             {"hostname": f"{prefix}-flood4@evil"}),
            ("hostname_mismatch", dumps(event(f"{prefix}-flood5@evil", type_="worker-online")),
             {"hostname": f"{prefix}-other@evil"}),
        ]

    def send_flood(self, producer: EventProducer, name: str, total: int,
                   rate: float | None) -> dict:
        """``total`` bad messages (the five kinds in rotation) at ``rate`` per
        second (None: as fast as they can be written); wait until every live
        worker counted them.  Returns the measurements."""
        kinds = self.flood_kinds()
        templates = [producer.captured(FLOOD_KEY, body, headers) for _, body, headers in kinds]
        replayer = producer.replayer(templates)
        workers = self.live()
        before = self.stats()
        rss_before = {w.hostname: rss(w) for w in workers}
        cpu_before = {w.hostname: cpu_seconds(w) for w in workers}
        per_tick = max(1, int(rate * 0.1)) if rate else 1000
        began = time.monotonic()
        started_at = time.time()
        sent = 0
        try:
            while sent < total:
                count = min(per_tick, total - sent)
                replayer.send(count, sent)
                sent += count
                self.check()
                if rate:
                    delay = began + (sent / rate) - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
        finally:
            replayer.close()
        publish_seconds = time.monotonic() - began
        want = {f"dropped.{reason}": total // len(kinds) for reason, _, _ in kinds}
        stats, mismatch = self.wait_counts(
            before, {w.hostname: want for w in self.workers}, 60,
            f"the {name} counted on every worker")
        absorbed_seconds = time.monotonic() - began
        cpu_after = {w.hostname: cpu_seconds(w) for w in workers}
        rss_after = {w.hostname: rss(w) for w in workers}
        real = {w.hostname for w in workers}
        return dict(
            sent=sent, kinds=want_reasons(kinds), rate_asked=rate or "as fast as possible",
            started_at=started_at, before=before, stats=stats, expected=want,
            mismatch=mismatch,
            publish_seconds=round(publish_seconds, 2),
            rate_achieved=round(sent / publish_seconds),
            absorbed_seconds=round(absorbed_seconds, 2),
            counted={h: diff(counters(s), counters(before[h])) for h, s in stats.items()},
            peers_lost={w.hostname: [
                dict(peer=r["peer"], after_start=round(r["time"] - started_at, 2))
                for r in w.events("lost") if r["time"] >= started_at and r["peer"] in real]
                for w in workers},
            shed={h: s["receive"].get("shed", 0) - before[h]["receive"].get("shed", 0)
                  for h, s in stats.items()},
            longest_drain_ms={h: s["receive"].get("longest_drain_ms") for h, s in stats.items()},
            cpu_seconds={h: (round(cpu_after[h] - cpu_before[h], 2)
                             if cpu_after[h] is not None and cpu_before[h] is not None
                             else None) for h in cpu_after},
            rss_mb_before={h: round(v / 2 ** 20, 1) for h, v in rss_before.items() if v},
            rss_mb_after={h: round(v / 2 ** 20, 1) for h, v in rss_after.items() if v},
        )

    def run_flood(self, producer: EventProducer) -> None:
        self.phase = "flood"
        flood = self.send_flood(producer, "flood", FLOOD_TOTAL, FLOOD_RATE)
        before = flood.pop("before")
        stats = flood.pop("stats")
        # One more message of each kind, LOG_INTERVAL after the last line
        # logged for its reason: that line reports how many were suppressed.
        kinds = self.flood_kinds()
        last = [line["time"] for w in self.live()
                for reason, lines in gossip_log_lines(w).items()
                if reason in flood["kinds"] for line in lines]
        wait = (max(last) if last else 0) + LOG_INTERVAL + 0.5 - time.time()
        if wait > 0:
            time.sleep(min(wait, LOG_INTERVAL + 1))
        for _, body, headers in kinds:
            producer.publish(FLOOD_KEY, body, headers)
        want_tail = {k: v + 1 for k, v in flood["expected"].items()}
        stats, mismatch_tail = self.wait_counts(
            before, {w.hostname: want_tail for w in self.workers}, 15,
            "the flood's tail messages counted")
        flood.update(expected=want_tail, tail_mismatch=mismatch_tail,
                     counted={h: diff(counters(s), counters(before[h]))
                              for h, s in stats.items()})
        self.snapshots["before_flood"] = before
        self.snapshots["after_flood"] = stats
        self.flood = flood
        self.figures["flood"] = flood

    def run_burst(self, producer: EventProducer) -> None:
        """Redis only: the same 50,000 messages at once (pub/sub has no TTL:
        all of them reach the reader, which must absorb them and keep its
        peers).  On RabbitMQ the queue's message TTL (heartbeat_interval, as
        stock) drops what waits longer at the broker, so a burst cannot be
        counted exactly there."""
        self.phase = "burst"
        burst = self.send_flood(producer, "burst", BURST_TOTAL, None)
        burst.pop("before")
        self.snapshots["after_burst"] = burst.pop("stats")
        self.burst = burst
        self.figures["burst"] = burst

    def settle(self) -> None:
        """The accepted senders sent one event each: they expire (4 s) and the
        sweep (5 s) drops them; then only the real peers are left."""
        self.phase = "settle"
        began = time.time()

        def settled():
            live = self.live()
            stats = self.cluster.all_stats(live)
            peers = len(live) - 1
            if stats and all(s["tracked_workers"] == peers and s["alive_workers"] == peers
                             for s in stats.values()):
                return stats
            return None

        try:
            self.snapshots["final"] = self.wait(settled, 30, "only real peers in the table")
        except WaitTimeout as exc:
            self.errors.append(str(exc)[:1500])
            self.snapshots["final"] = self.stats()
        self.final_time = time.time()
        self.step("accepted senders expired", began)


def want_reasons(kinds) -> list[str]:
    return [reason for reason, _, _ in kinds]


@pytest.fixture(scope="class")
def hostile(broker, broker_name, fast_kinds, cluster_folder, tmp_path_factory):
    label = "hx"
    with running_cluster(broker, cluster_folder(label), label) as cluster:
        began = time.time()
        workers = cluster.start(fast_kinds[0], fast_kinds[1], f"{fast_kinds[0]}:classic")
        names = ("cython", "python") if fast_kinds[0] == "cython" else ("python-a", "python")
        roles = {names[0]: workers[0], names[1]: workers[1], "classic": workers[2]}
        cluster.wait_stats(lambda s: s["alive_workers"] == 2, timeout=40,
                           what="every worker sees two alive peers")
        scenario = Hostile(cluster, broker_name, roles)
        scenario.step("cluster formed", began)
        scenario.figures["workers"] = {r: f"{w.hostname} ({w.kind}, receive "
                                          f"{w.receive or 'auto'})" for r, w in roles.items()}
        producer = EventProducer(broker.url)
        try:
            scenario.run_cases(producer)
            scenario.run_null(producer)
            scenario.leave_classic()
            scenario.run_flood(producer)
            scenario.settle()
            if broker_name == "redis":
                scenario.run_burst(producer)
        except ClusterError as exc:
            scenario.errors.append(f"scenario stopped in {scenario.phase}: {exc}"[:4000])
        finally:
            producer.close()
        scenario.figures["total_seconds"] = round(time.time() - began, 1)
        report(scenario, tmp_path_factory)
        yield scenario


def report(scenario: Hostile, tmp_path_factory) -> None:
    figures = scenario.figures
    final = scenario.snapshots.get("final") or {}
    keep = ("implementation", "clock", "dropped", "sanitized", "joins", "leaves", "losses",
            "tracked_workers", "alive_workers", "receive", "events")
    figures["final"] = {h: {k: s[k] for k in keep} for h, s in final.items()}
    figures["log_lines"] = {w.hostname: {r: len(v) for r, v in gossip_log_lines(w).items()}
                            for w in scenario.workers}
    figures["errors"] = scenario.errors
    figures["deaths"] = {h: {k: v for k, v in d.items() if k != "log_tail"}
                         for h, d in scenario.deaths.items()}
    figures["case_mismatch"] = scenario.case_mismatch
    figures["case_attribution"] = scenario.case_attribution
    figures["null_body"] = scenario.null
    print(f"\n[hostile {scenario.broker}] "
          + json.dumps(figures, indent=1, sort_keys=True, default=repr))
    path = tmp_path_factory.getbasetemp() / RESULTS_FILE
    try:
        existing = json.loads(path.read_text()) if path.exists() else []
    except ValueError:
        existing = []
    existing.append(figures)
    path.write_text(json.dumps(existing, indent=1, sort_keys=True, default=repr))
    print(f"(written to {path})")
    flood = scenario.flood
    if flood:
        record_result(SCENARIO, scenario.broker, "flood", flood["absorbed_seconds"],
                      note=f"{flood['sent']} bad messages at {flood['rate_achieved']}/s "
                           f"-> counted on every worker",
                      cpu_seconds=flood["cpu_seconds"], shed=flood["shed"])
    burst = scenario.burst
    if burst:
        record_result(SCENARIO, scenario.broker, "burst", burst["absorbed_seconds"],
                      note=f"{burst['sent']} bad messages written in "
                           f"{burst['publish_seconds']} s -> counted on every worker; "
                           f"peers lost: {sum(map(len, burst['peers_lost'].values()))}",
                      cpu_seconds=burst["cpu_seconds"], shed=burst["shed"])
    for step, seconds in figures["steps"].items():
        record_result(SCENARIO, scenario.broker, "step", seconds, note=step)


class TestHostileInput:

    def test_workers_stay_up_and_answer(self, hostile):
        assert not hostile.deaths, "workers died on hostile input:\n" + "\n".join(
            f"--- {h} ({d['role']}, during {d['phase']}, exit code {d['exit_code']}), "
            f"log tail:\n{d['log_tail']}" for h, d in hostile.deaths.items())
        assert not [e for e in hostile.errors if e.startswith("scenario stopped")], \
            hostile.errors
        live = hostile.live()
        assert len(live) == 2, live
        stats = hostile.cluster.all_stats(live)
        assert stats is not None, "a worker did not answer gossip_stats"
        classic = hostile.roles["classic"]
        assert classic.proc.returncode == 0, f"{classic}: exit code after SIGTERM"
        last = hostile.snapshots["classic_last"][classic.hostname]
        assert last["receive"]["path"] == "kombu", last["receive"]
        for worker in hostile.workers:
            started = worker.started_record()
            assert started["gossip_steps"] == ["gossip_fast.bootstep.Gossip"], started
        for hostname, s in stats.items():
            assert s["receive"]["path"] in ("redis", "amqp"), (hostname, s["receive"])

    def test_every_case_counted_as_expected(self, hostile):
        """Each case's drops / cleanings on every worker (that survived them)."""
        assert "after_cases" in hostile.snapshots, hostile.errors
        first = hostile.snapshots["cases_first_round"]
        assert len(first) == 3, f"not every worker survived the first round: {sorted(first)}"
        assert not hostile.case_mismatch, (
            "hostile cases not counted as expected, per worker {counter: (expected, got)}: "
            f"{json.dumps(hostile.case_mismatch, indent=1, default=repr)}\n"
            "replayed alone:\n" + "\n".join(hostile.case_attribution))

    def test_every_message_accounted_for(self, hostile):
        """received = applied + own + dropped (every reason) + handled, per
        worker over the case phase (peers' heartbeats are applied, the
        worker's own come back as own): nothing vanished uncounted."""
        before, after = hostile.snapshots["before_cases"], hostile.snapshots["after_cases"]
        handled = sum(1 for c in hostile.cases if c.handled)
        assert after, hostile.errors
        for hostname, a in after.items():
            b = before[hostname]
            events = {k: a["events"][k] - b["events"][k] for k in a["events"]}
            dropped = sum(a["dropped"].values()) - sum(b["dropped"].values())
            leftover = (events["received"] - events["applied"] - events["own"]
                        - events["skipped_tasks"] - dropped)
            in_state = sum(a["dropped"].get(r, 0) - b["dropped"].get(r, 0)
                           for r in ("bad_timestamp", "bad_local_received", "bad_freq"))
            assert leftover == handled, (
                f"{hostname}: received {events['received']} - applied {events['applied']} "
                f"- own {events['own']} - skipped {events['skipped_tasks']} - dropped "
                f"{dropped} = {leftover}, expected {handled} (election acks handled). "
                f"Events dropped inside State.event (bad_timestamp/bad_freq/"
                f"bad_local_received) in the window: {in_state}")

    def test_null_body_is_counted(self, hostile):
        """A JSON ``null`` body (on worker.heartbeat and on worker.elect) must
        be dropped and counted (``bad_body``) like a list or a number, not
        ignored without a trace: the contract's "bad input is logged,
        counted, and dropped"."""
        assert hostile.null, hostile.errors
        for hostname, seen in hostile.null.items():
            assert seen["counted"].get("dropped.bad_body", 0) == 2, (
                f"{hostname}: 2 null bodies published; in that window it received "
                f"{seen['received']} events ({seen['applied']} applied, {seen['own']} own) "
                f"and its dropped/sanitized counters moved by {seen['counted']}")

    def test_pickle_never_unpickled(self, hostile):
        assert not os.path.exists(hostile.marker), "a pickle body was unpickled!"
        pickles = [c for c in hostile.cases if "pickle" in c.name]
        assert len(pickles) >= 6
        for hostname, s in hostile.snapshots["after_cases"].items():
            assert s["dropped"].get("decode_error", 0) >= len(pickles), (hostname, s["dropped"])

    def test_clock_not_poisoned(self, hostile):
        for phase in ("after_cases", "after_flood", "final"):
            for hostname, s in hostile.snapshots.get(phase, {}).items():
                clock = s["clock"]
                assert type(clock) is int and 0 <= clock < 2 ** 63, (phase, hostname, clock)
                assert clock < SANE_CLOCK, f"{hostname} took a poisoned clock: {clock}"
        final = hostile.snapshots["final"]
        clocks = [s["clock"] for s in final.values()]
        assert max(clocks) - min(clocks) < 10_000, clocks
        for hostname, s in final.items():  # and it keeps moving
            assert s["clock"] > hostile.snapshots["before_cases"][hostname]["clock"]

    def test_membership_not_corrupted(self, hostile):
        """Only real peers and the accepted senders ever join, each accepted
        one once, and it is lost once it stops sending; up to the flood (see
        the next test for the flood) a live real peer is never lost."""
        accepted = {c.host for c in hostile.cases if c.accepted} | hostile.replayed
        assert accepted
        real = {w.hostname for w in hostile.workers}
        dead = set(hostile.deaths)
        classic = hostile.roles["classic"]
        flood_start = hostile.flood.get("started_at", float("inf"))
        for worker in hostile.workers:
            if worker.hostname in dead:
                continue
            joins = join_counts(worker)
            peers = real - {worker.hostname}
            bogus = set(joins) - peers - accepted
            assert not bogus, f"{worker.hostname}: entries for dropped senders: {bogus}"
            # (an accepted case that was not applied fails the case test)
            unapplied = set(hostile.case_mismatch.get(worker.hostname, {}).get(
                "not applied", ()))
            should_join = {c.host for c in hostile.cases
                           if c.accepted and c.name not in unapplied}
            assert should_join <= set(joins), sorted(should_join - set(joins))
            assert all(joins[h] == 1 for h in set(joins) & accepted), joins
            early = [r for r in worker.events("join") if r["time"] < flood_start]
            assert sorted(r["peer"] for r in early if r["peer"] in peers) == sorted(peers)
            lost = [r["peer"] for r in worker.events("lost")]
            lost_early = [r["peer"] for r in worker.events("lost") if r["time"] < flood_start]
            assert not set(lost_early) & (real - dead), (
                f"{worker.hostname}: node_lost for a live peer before the flood")
            assert set(lost) <= accepted | real, lost
            if worker is not classic:
                joined = set(joins) & accepted
                assert sorted(h for h in lost if h in accepted) == sorted(joined), \
                    sorted(joined - set(lost))
                # a worker that dies of an exception still says goodbye
                leaves = [r["peer"] for r in worker.events("leave")]
                assert leaves == [classic.hostname] or (
                    classic.hostname in dead and leaves == []), leaves
        final = hostile.snapshots["final"]
        for hostname, s in final.items():
            peers = len(final) - 1
            assert s["tracked_workers"] == s["alive_workers"] == peers, (hostname, s)
            assert s["leaves"] <= 1, s

    def test_no_good_peer_lost_during_the_flood(self, hostile):
        """The two live workers keep seeing each other through the flood: no
        node_lost (and so no second node_join) for a real, running peer."""
        flood = hostile.flood
        assert flood, hostile.errors
        lost = {h: v for h, v in flood["peers_lost"].items() if v}
        assert not lost, (
            f"good peers lost during a flood of {flood['sent']} bad messages at "
            f"{flood['rate_achieved']}/s (non-heartbeat key; counted on every worker "
            f"{flood['absorbed_seconds']} s after the flood began, with "
            f"{flood['cpu_seconds']} CPU seconds per worker): {lost}; shed: {flood['shed']}")
        for worker in hostile.live():  # up to the final snapshot (before the burst)
            joins: dict[str, int] = {}
            for record in worker.events("join"):
                if record["time"] <= hostile.final_time:
                    joins[record["peer"]] = joins.get(record["peer"], 0) + 1
            assert all(n == 1 for n in joins.values()), joins
            s = hostile.snapshots["final"][worker.hostname]
            assert s["joins"] == sum(joins.values()), s

    def test_flood_counted_and_workers_kept_up(self, hostile):
        flood = hostile.flood
        assert flood, hostile.errors
        assert flood["sent"] == FLOOD_TOTAL
        assert not flood["mismatch"] and not flood["tail_mismatch"], flood
        assert len(flood["counted"]) == 2, flood["counted"]
        for hostname, counted in flood["counted"].items():
            assert counted == flood["expected"], (hostname, counted, flood["expected"])
        for s in hostile.snapshots["after_flood"].values():
            assert s["receive"].get("errors", 0) == 0, s["receive"]
            assert not set(s["dropped"]) & BUG_REASONS, s["dropped"]

    def test_burst_absorbed_without_losing_peers(self, hostile):
        """Redis: 50,000 bad messages at once (written in about a second).
        Every one is counted, and the workers keep seeing each other: a
        backlog of bad input must not delay good peers' heartbeats past
        their expiry (2 x heartbeat interval)."""
        if hostile.broker != "redis":
            pytest.skip("RabbitMQ drops events queued longer than the heartbeat "
                        "interval (message TTL, as stock): the paced flood covers it")
        burst = hostile.burst
        assert burst, hostile.errors
        assert not burst["mismatch"], burst["mismatch"]
        for hostname, counted in burst["counted"].items():
            assert counted == burst["expected"], (hostname, counted)
        lost = {h: v for h, v in burst["peers_lost"].items() if v}
        assert not lost, (
            f"good peers lost after a burst of {burst['sent']} bad messages (non-heartbeat "
            f"key) written in {burst['publish_seconds']} s: counted on every worker "
            f"{burst['absorbed_seconds']} s after it began, with {burst['cpu_seconds']} CPU "
            f"seconds per worker, longest drain {burst['longest_drain_ms']} ms; "
            f"node_lost: {lost}")

    def test_logs_rate_limited_and_add_up(self, hostile):
        """At most one line per reason per LOG_INTERVAL; the lines plus the
        suppressed counts they report add up to the counters (exactly for
        the flood's reasons, whose last message was logged); no errors."""
        totals_of = {h: s for h, s in hostile.snapshots.get("final", {}).items()}
        totals_of.update(hostile.snapshots.get("classic_last", {}))
        flooded = set(hostile.flood.get("counted", {}))
        assert totals_of, hostile.errors
        for worker in hostile.workers:
            if worker.hostname in hostile.deaths or worker.hostname not in totals_of:
                continue
            s = totals_of[worker.hostname]
            totals = dict(s["dropped"])
            totals.update(s["sanitized"])
            lines = gossip_log_lines(worker, until=getattr(hostile, "final_time", None))
            all_lines = sum(len(v) for v in lines.values())
            assert all_lines < 100, f"{worker.hostname}: {all_lines} bad-input log lines"
            for reason, found in lines.items():
                times = [f["time"] for f in found]
                for earlier, later in pairwise(times):
                    assert later - earlier >= LOG_INTERVAL - 0.01, (reason, times)
                reported = sum(1 + f["more"] for f in found)
                assert reported <= totals.get(reason, 0), (reason, reported, totals)
                if worker.hostname in flooded and reason in hostile.flood["kinds"]:
                    assert reported == totals[reason], (worker.hostname, reason, reported,
                                                        totals[reason])
                    assert any(f["more"] > 0 for f in found), (reason, found)
            assert set(lines) >= set(totals), (sorted(totals), sorted(lines))
            problems = [r["text"] for r in worker.log_records()
                        if r["level"] in ("ERROR", "CRITICAL")
                        or (r["level"] == "WARNING" and OTHER_WARNINGS.search(r["message"])
                            and not GOSSIP_LINE.match(r["message"]))]
            assert not problems, "\n".join(problems[:20])
