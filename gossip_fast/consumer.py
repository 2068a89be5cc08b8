"""A Celery worker Consumer whose Gossip step is gossip_fast's.

Its blueprint resolves every reference to the stock Gossip step (the
default step list, and a user step's ``requires``, by string or by class)
to :class:`gossip_fast.Gossip`, so exactly one Gossip step runs.
"""
from celery.utils.imports import symbol_by_name
from celery.worker.consumer import Consumer as StockConsumer
from celery.worker.consumer.gossip import Gossip as StockGossip

# Registers the remote-control command ``gossip_stats`` (Celery keeps its
# commands in one global registry, filled at import).  Every way of running
# our step imports this module: ``install()``, ``worker_consumer =
# 'gossip_fast:Consumer'`` and a wrapped custom consumer, so every such worker
# answers ``gossip_stats``, not only those set up through ``install()``.
from . import control  # noqa: F401
from .bootstep import Gossip

__all__ = ('Consumer', 'consumer_class', 'STOCK_STEP', 'OUR_STEP')

STOCK_STEP = 'celery.worker.consumer.gossip:Gossip'
OUR_STEP = 'gossip_fast.bootstep:Gossip'


def _ours(step):
    step = symbol_by_name(step)
    return Gossip if step is StockGossip else step


class BlueprintMixin:
    """Swaps the stock Gossip step for ours wherever a blueprint meets it."""

    def load_step(self, step):
        step = _ours(step)
        return step.name, step

    def _firstpass(self, steps):
        for step in steps.values():
            step.requires = [_ours(dep) for dep in step.requires]
        return super()._firstpass(steps)


def consumer_class(base):
    """Return a subclass of the Consumer class *base* that runs our Gossip."""
    if issubclass(base.Blueprint, BlueprintMixin):
        return base
    blueprint = type('Blueprint', (BlueprintMixin, base.Blueprint), {
        '__module__': __name__,
        'default_steps': [OUR_STEP if s == STOCK_STEP else s
                          for s in base.Blueprint.default_steps],
    })
    return type(base.__name__, (base,), {
        '__module__': __name__, 'Blueprint': blueprint})


#: Celery's Consumer with gossip_fast's Gossip step
#: (``worker_consumer = 'gossip_fast:Consumer'``).
Consumer = consumer_class(StockConsumer)
