"""Differential test: the same random event streams, fed as real kombu
messages to stock Celery's Gossip, our pure-Python fallback and our Cython
core, must give the same callbacks, clock, table contents and liveness.

``valid`` streams hold what a healthy cluster sends (heartbeats, online,
offline, custom worker events, task events, our own events, election
requests, messages without clocks, sweeps with expiries): all three agree.
``hostile`` streams add bad input that stock mishandles (see CONTRACT.md's
"Fix" list); there only our two implementations are compared, counters
included.  Time is driven with time-machine, which also moves the clocks
stock captured at import (``celery.events.state.time``).
"""
import json
import os
import random
from functools import partial

import pytest
import time_machine
from celery.worker.consumer.gossip import Gossip as StockGossip

from gossip_fast.simulate import make_message

from .conftest import gossip_class, load_core, make_app, make_gossip

T0 = 1_800_000_000.0
LOCAL = "local@test"
ATTRS = ("hostname", "pid", "freq", "clock", "active", "processed", "loadavg",
         "sw_ident", "sw_ver", "sw_sys", "type", "timestamp", "utcoffset",
         "local_received", "custom")
STREAMS = int(os.environ.get("GOSSIP_FAST_DIFF_STREAMS", 400))  # per test: 1,600 in all
HOSTILE_VALUES = [None, "abc", "", 0, -1, 1e30, float("inf"), float("nan"), 2 ** 64,
                  2 ** 62 + 1, 3.5, True, [], {}, "2"]


class Runner:
    """One implementation under test, fed messages, recording what it does."""

    def __init__(self, name):
        self.via_raw = name.endswith("+raw")  # fed as a fast-path reader does
        name = name.replace("+raw", "")
        self.name = name
        self.app = make_app()
        cls = StockGossip if name == "stock" else gossip_class(load_core(name))
        self.gossip = make_gossip(cls, self.app, hostname=LOCAL)
        self.log = []
        for kind in ("node_join", "node_leave", "node_lost"):
            getattr(self.gossip.on, kind).add(
                partial(lambda kind, w: self.log.append((kind, w.hostname)), kind))
        if name == "stock":
            receiver = self.app.events.Receiver(None, app=self.app)
            self.prepare = partial(receiver.event_from_message, localize=False)
        else:
            self.prepare = self.gossip._receiver.fast_prepare

    def feed(self, transport, routing_key, body, headers):
        if self.via_raw:
            return self.gossip._receiver.on_raw(routing_key, dict(headers), body)
        message = make_message(transport, routing_key, body, headers=dict(headers))
        self.gossip.on_message(self.prepare, message)

    def sweep(self):
        mark = len(self.log)
        self.gossip.periodic()
        # stock fires node_lost in table order, we in deadline order
        self.log[mark:] = sorted(self.log[mark:])

    def snapshot(self):
        state = self.gossip.state
        table = {}
        for hostname, worker in state.workers.items():
            table[hostname] = (
                {attr: repr(getattr(worker, attr, "<unset>")) for attr in ATTRS},
                list(worker.heartbeats), worker.alive,
                worker.heartbeat_expires if worker.heartbeats else None)
        requests = {key: sorted(map(repr, value))
                    for key, value in self.gossip.consensus_requests.items()}
        return {
            "log": list(self.log),
            "clock": self.gossip.clock.value,
            "table": table,
            "alive": sorted(w.hostname for w in state.alive_workers()),
            "sent": list(self.gossip.dispatcher.sent),
            "requests": requests,
        }


def body(type_, hostname, rng, clock=True, **fields):
    event = {"hostname": hostname, "utcoffset": 0.0, "pid": 100 + len(hostname)}
    if clock:
        event["clock"] = rng.randrange(0, 500)
    if type_.startswith("worker-") and type_ != "worker-custom":
        event.update(freq=rng.choice([2.0, 2.0, 2, 1.5, 5.0]), active=rng.randrange(3),
                     processed=rng.randrange(100), loadavg=[0.1, 0.2, 0.3],
                     sw_ident="py-celery", sw_ver="5.7.0", sw_sys="Linux")
    event.update(fields)
    event["type"] = type_
    return event


def valid_step(rng, now, hosts):
    """One message of a healthy cluster: (routing key, body dict, headers)."""
    host = rng.choice(hosts)
    roll = rng.random()
    drift = rng.choice([0.0, 0.0, 0.0, -0.5, 30.0])
    if roll < 0.55:
        kind = "worker-heartbeat"
    elif roll < 0.63:
        kind = "worker-online"
    elif roll < 0.70:
        kind = "worker-offline"
    elif roll < 0.75:
        event = body("worker-custom", host, rng, custom=rng.randrange(9))
        event["timestamp"] = now - drift
        return "worker.custom", event, {"hostname": host}
    elif roll < 0.80:  # task events: dropped undecoded by routing key
        event = body("task-succeeded", host, rng, uuid="u1")
        event["timestamp"] = now
        return "task.succeeded", event, {"hostname": host}
    elif roll < 0.84:  # a client's task-sent: clock rule (value or 1) - 1
        event = body("task-sent", host, rng, uuid="u2")
        event["timestamp"] = now
        return "worker.task.sent", event, {"hostname": host}
    elif roll < 0.89:  # our own events only forward the clock
        event = body("worker-heartbeat", LOCAL, rng)
        event["timestamp"] = now
        return "worker.heartbeat", event, {"hostname": LOCAL}
    elif roll < 0.93:  # no clock at all: ours forwards
        event = body("worker-heartbeat", host, rng, clock=False)
        event["timestamp"] = now
        return "worker.heartbeat", event, {"hostname": host}
    elif roll < 0.96:  # an election request from a peer
        event = {"hostname": host, "utcoffset": 0.0, "pid": 7, "clock": rng.randrange(50),
                 "id": rng.choice(["e1", "e2"]), "topic": "record", "action": None,
                 "cver": 1, "timestamp": now, "type": "worker-elect"}
        return "worker.elect", event, {"hostname": host}
    else:  # proto1: hostname only in the body
        event = body("worker-heartbeat", host, rng)
        event["timestamp"] = now
        return "worker.heartbeat", event, {}
    event = body(kind, host, rng)
    event["timestamp"] = now - drift
    return kind.replace("-", "."), event, {"hostname": host}


def hostile_step(rng, now, hosts):
    """Bad input stock mishandles: both of ours must agree on it."""
    key, event, headers = valid_step(rng, now, hosts)
    roll = rng.random()
    if roll < 0.3:
        field = rng.choice(["clock", "timestamp", "freq", "hostname", "type", "pid"])
        event[field] = rng.choice(HOSTILE_VALUES)
    elif roll < 0.4:
        event.pop(rng.choice(["hostname", "timestamp", "type", "clock", "freq"]), None)
    elif roll < 0.5:
        event[rng.choice(["event", "heartbeats", "alive", "id", "_hb", "update"])] = 1
    elif roll < 0.55:
        headers = {"hostname": rng.choice(hosts + [LOCAL])}
    elif roll < 0.6:
        return key, rng.choice([[1, 2], "text", 5, None]), headers
    return key, event, headers


def run_stream(seed, transport, mode, names):
    rng = random.Random(seed)
    hosts = [f"w{i}@h{i % 3}" for i in range(rng.randrange(1, 9))]
    steps = rng.randrange(40, 160)
    step = valid_step if mode == "valid" else hostile_step
    with time_machine.travel(T0, tick=False) as traveller:
        runners = [Runner(name) for name in names]
        now = T0
        for _ in range(steps):
            roll = rng.random()
            if roll < 0.12:
                now += rng.choice([rng.uniform(0.05, 1.5), rng.uniform(3.5, 12.0)])
                traveller.move_to(now)
            elif roll < 0.2:
                for runner in runners:
                    runner.sweep()
            else:
                key, event, headers = step(rng, now, hosts)
                raw = json.dumps(event, allow_nan=True).encode()
                for runner in runners:
                    runner.feed(transport, key, raw, headers)
            snapshots = [runner.snapshot() for runner in runners]
            for runner, snap in zip(runners[1:], snapshots[1:], strict=True):
                assert snap == snapshots[0], (
                    f"seed {seed}: {runner.name} differs from {runners[0].name} "
                    f"after {key if roll >= 0.2 else 'time/sweep'}")
        if mode == "hostile":
            ours = [runner.gossip.stats() for runner in runners]
            for stats in ours:
                stats.pop("implementation")
            assert ours[0] == ours[1], f"seed {seed}: counters differ"


@pytest.mark.parametrize("transport", ["redis", "amqp"])
def test_valid_streams_agree_with_stock(transport):
    for seed in range(STREAMS):
        run_stream(seed, transport, "valid", ["stock", "python", "cython"])


@pytest.mark.parametrize("transport", ["redis", "amqp"])
def test_hostile_streams_agree_between_implementations(transport):
    for seed in range(STREAMS):
        run_stream(10_000 + seed, transport, "hostile", ["python", "cython"])


@pytest.mark.parametrize("mode", ["valid", "hostile"])
def test_raw_parts_agree_with_kombu_messages(mode):
    """Transport readers (gossip_fast.fastpath) hand the core raw parts:
    the result must be the same as for the kombu message of those parts."""
    for seed in range(STREAMS // 4):
        run_stream(20_000 + seed, "redis", mode, ["cython", "cython+raw", "python+raw"])
