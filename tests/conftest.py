"""Shared fixtures: every test runs against both implementations.

``core`` is parametrized over ``cython`` and ``python``.  The ``cython`` case
imports ``gossip_fast._core`` explicitly, so a missing or broken build fails
(it is never the fallback tested twice).  It is skipped only when the
fallback is asked for on purpose (``GOSSIP_FAST_NO_EXTENSIONS=1``, as when
testing an sdist installed without a compiler).
"""
import importlib
import os
import time

import pytest
from celery import Celery

from gossip_fast import implementation
from gossip_fast.bootstep import Gossip
from gossip_fast.simulate import SimulatedConsumer

pytest_plugins = ["tests.brokers"]

IMPLEMENTATIONS = ("cython", "python")
MODULES = {"cython": "gossip_fast._core", "python": "gossip_fast._core_py"}


def load_core(name):
    if name == "cython" and implementation.NO_EXTENSIONS:
        pytest.skip("GOSSIP_FAST_NO_EXTENSIONS is set: testing the fallback only")
    return importlib.import_module(MODULES[name])


@pytest.fixture(params=IMPLEMENTATIONS)
def core(request):
    """The hot-path module under test (compiled or pure Python)."""
    return load_core(request.param)


def gossip_class(core):
    return type("Gossip", (Gossip,), {"core": core, "name": Gossip.name,
                                      "__module__": Gossip.__module__})


@pytest.fixture
def GossipClass(core):
    return gossip_class(core)


def make_app():
    # a redis URL makes Gossip enabled (compatible transport); nothing connects
    return Celery("t", broker="redis://127.0.0.1:1/0", set_as_current=False)


@pytest.fixture
def app():
    return make_app()


def make_gossip(cls, app, hostname="local@test", pid=1000, **kwargs):
    consumer = SimulatedConsumer(app, hostname=hostname, pid=pid)
    gossip = cls(consumer, **kwargs)
    gossip.dispatcher = consumer.event_dispatcher
    return gossip


@pytest.fixture
def gossip(GossipClass, app):
    """Our Gossip on a simulated consumer; ``gossip.dispatcher.sent`` records
    what it sends."""
    return make_gossip(GossipClass, app)


@pytest.fixture
def fast_prepare(gossip):
    return gossip._receiver.fast_prepare


def assert_drain_scheduled(gossip, timer):
    """The fast reader's next drain is on *timer* (kombu's), once, due
    within the reader's ``max_delay``."""
    reader = gossip._reader
    assert reader is not None
    due = [item for item in timer.queue
           if item.entry.fun == gossip._drain and item.entry.args == (reader,)]
    assert len(due) == 1, timer.queue
    assert due[0].eta <= time.monotonic() + reader.max_delay


def pytest_report_header(config):
    return (f"gossip_fast implementation: {implementation.IMPLEMENTATION}"
            f" (extension error: {implementation.EXTENSION_ERROR})"
            if implementation.EXTENSION_ERROR else
            f"gossip_fast implementation: {implementation.IMPLEMENTATION}")
