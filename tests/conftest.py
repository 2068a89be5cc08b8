"""Shared fixtures: every test runs against both implementations.

``core`` is parametrized over ``cython`` and ``python``.  The ``cython`` case
imports ``gossip_fast._core`` explicitly, so a missing or broken build fails
(it is never the fallback tested twice).  It is skipped only when the
fallback is asked for on purpose (``GOSSIP_FAST_NO_EXTENSIONS=1``, as when
testing an sdist installed without a compiler).
"""
import importlib

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


def make_gossip(cls, app, hostname="local@test", pid=1000, hub=None, **kwargs):
    """*cls* on a simulated consumer; with *hub* (kombu's ``Hub``, as a
    worker of the prefork, solo or threads pool has) the fast receive path
    can run, driven by the test."""
    consumer = SimulatedConsumer(app, hostname=hostname, pid=pid, hub=hub)
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


def assert_watched(gossip):
    """The fast reader's socket is watched by the worker's hub, and no
    drain is on the timer: an idle reader wakes nobody."""
    driver = gossip._driver
    assert driver is not None and driver.mode == "watching"
    fd = gossip._reader.sock.fileno()
    assert driver.hub.readers[fd] == (driver._on_readable, ())
    assert not [item for item in driver.timer.queue
                if item.entry.fun == driver._on_timer and not item.entry.canceled]


def pytest_report_header(config):
    return (f"gossip_fast implementation: {implementation.IMPLEMENTATION}"
            f" (extension error: {implementation.EXTENSION_ERROR})"
            if implementation.EXTENSION_ERROR else
            f"gossip_fast implementation: {implementation.IMPLEMENTATION}")


@pytest.fixture(params=["redis", "rabbitmq"])
def fast_broker(request, monkeypatch):
    """Each real broker that has a fast reader (its session server), with
    the receive mode left to the default."""
    monkeypatch.delenv("GOSSIP_FAST_RECEIVE", raising=False)
    if request.param == "redis":
        pytest.importorskip("hiredis")
        pytest.importorskip("msgspec")
    return request.getfixturevalue(f"{request.param}_server")
