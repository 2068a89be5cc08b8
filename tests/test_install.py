"""The swap-in: ``install(app)`` makes a worker run exactly one Gossip step,
ours, also for user steps that require the stock one by name or by class."""
import subprocess
import sys

import pytest
from celery import Celery, bootsteps
from celery.worker.consumer import Consumer as StockConsumer
from celery.worker.consumer.gossip import Gossip as StockGossip

import gossip_fast
from gossip_fast.consumer import Consumer, consumer_class


def user_steps():
    """Fresh user steps (Celery's blueprint rewrites a step's ``requires``
    on its class, so each test gets its own)."""
    class ByName(bootsteps.StartStopStep):
        requires = {"celery.worker.consumer.gossip:Gossip"}

    class ByClass(bootsteps.StartStopStep):
        requires = (StockGossip,)
    return ByName, ByClass


def gossip_steps(consumer_cls, extra=()):
    blueprint = consumer_cls.Blueprint(steps=list(extra))
    steps = blueprint.claim_steps()
    order = list(blueprint._finalize_steps(steps))
    return order, [step for step in order if step.name == StockGossip.name]


@pytest.mark.parametrize("which", [(), (0,), (1,), (0, 1)])
def test_exactly_one_gossip_step_and_it_is_ours(which):
    steps = user_steps()
    extra = [steps[i] for i in which]
    order, gossips = gossip_steps(Consumer, extra)
    assert gossips == [gossip_fast.Gossip]
    for user_step in extra:
        assert order.index(user_step) > order.index(gossip_fast.Gossip)


def test_stock_consumer_is_untouched():
    _, gossips = gossip_steps(StockConsumer, user_steps()[:1])
    assert gossips == [StockGossip]


def test_install_sets_consumer_and_clock_and_uninstall_restores():
    app = Celery(set_as_current=False)
    value = app.clock.forward()
    assert gossip_fast.install(app) is app
    assert app.conf.worker_consumer == "gossip_fast.consumer:Consumer"
    assert type(app.clock).__name__ == "Clock" and app.clock.value == value
    gossip_fast.install(app)  # idempotent
    assert app.conf.worker_consumer == "gossip_fast.consumer:Consumer"
    gossip_fast.uninstall(app)
    assert app.conf.worker_consumer == "celery.worker.consumer:Consumer"


def test_install_wraps_a_custom_consumer():
    class Custom(StockConsumer):
        pass
    app = Celery(set_as_current=False)
    app.conf.worker_consumer = Custom
    gossip_fast.install(app)
    wrapped = app.conf.worker_consumer
    assert issubclass(wrapped, Custom)
    assert gossip_steps(wrapped, user_steps()[:1])[1] == [gossip_fast.Gossip]
    gossip_fast.uninstall(app)
    assert app.conf.worker_consumer is Custom
    assert consumer_class(Consumer) is Consumer


def test_install_defaults_to_current_app():
    app = Celery(set_as_current=True)
    try:
        assert gossip_fast.install() is app
    finally:
        gossip_fast.uninstall(app)


def test_public_api():
    assert set(gossip_fast.__all__) >= {"Gossip", "install", "uninstall", "IMPLEMENTATION"}
    assert gossip_fast.IMPLEMENTATION in ("cython", "python")


@pytest.mark.parametrize("value, expected", [("1", "python"), ("0", None), ("", None)])
def test_no_extensions_env_forces_the_fallback(value, expected):
    code = "import gossip_fast; print(gossip_fast.IMPLEMENTATION)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"GOSSIP_FAST_NO_EXTENSIONS": value, "PATH": "/usr/bin"},
                         check=True).stdout.strip()
    from gossip_fast import implementation
    assert out == (expected or implementation.IMPLEMENTATION)


def test_compiled_core_is_importable_unless_disabled():
    from gossip_fast import implementation
    if implementation.NO_EXTENSIONS:
        pytest.skip("GOSSIP_FAST_NO_EXTENSIONS is set")
    import gossip_fast._core  # noqa: F401  a failed build must fail here
    assert implementation.IMPLEMENTATION == "cython"
