"""Bad input from the cluster: counted by reason, logged rate-limited.

Every part of gossip_fast that meets input it cannot take (the compiled or
Python core, the elections, the fast readers' envelope parsing) reports it
through one :class:`BadInput` per Gossip step (``Gossip._reject``): it is
counted under its reason, and logged at most once per reason every
:data:`LOG_INTERVAL` seconds, with how many more were suppressed.  Nothing
here raises.
"""
import sys
from collections import Counter
from time import monotonic

__all__ = ('BadInput', 'SANITIZED', 'LOG_INTERVAL', 'step_log')

#: Reasons of bad input after which the event is still applied, cleaned.
SANITIZED = frozenset(('bad_clock', 'reserved_field'))
#: At most one log line per reason of bad input in this many seconds.
LOG_INTERVAL = 10.0


def step_log():
    """The module that defines the Gossip step: users and Celery's own tests
    patch its ``logger``, ``debug`` and ``info`` (CONTRACT 11), so the parts
    of the step kept in other modules look them up there, when called."""
    return sys.modules['gossip_fast.bootstep']


def describe(detail, limit=200):
    text = repr(detail)
    return text if len(text) <= limit else text[:limit] + '...'


class BadInput:
    """Counters (``dropped``, ``sanitized``: reason -> count) and the
    rate-limited log of bad input."""

    def __init__(self):
        self.dropped = Counter()
        self.sanitized = Counter()
        self._logged = {}
        self._suppressed = Counter()

    def report(self, reason, hostname, detail):
        (self.sanitized if reason in SANITIZED else self.dropped)[reason] += 1
        now = monotonic()
        last = self._logged.get(reason)
        if last is not None and now - last < LOG_INTERVAL:
            self._suppressed[reason] += 1
            return
        self._logged[reason] = now
        more = self._suppressed.pop(reason, 0)
        step_log().logger.warning(
            'gossip: %s event from %s: %s %s%s',
            'cleaned' if reason in SANITIZED else 'dropped',
            hostname if isinstance(hostname, str) else 'unknown sender',
            reason, describe(detail),
            f' ({more} more like it since the last report)' if more else '')
