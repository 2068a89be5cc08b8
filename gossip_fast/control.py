"""Remote control: ``celery -A proj inspect gossip_stats``."""
from celery.worker.control import inspect_command

__all__ = ('gossip_stats',)


@inspect_command()
def gossip_stats(state):
    """Gossip counters of this worker (gossip_fast)."""
    gossip = getattr(state.consumer, 'gossip', None)
    if gossip is None or not hasattr(gossip, 'stats'):
        return {'error': 'this worker does not run gossip_fast'}
    return gossip.stats()
