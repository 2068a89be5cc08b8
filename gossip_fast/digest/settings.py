"""Digest mode's settings and timers (docs/digest-mode.md, sections 5 and 13).

Settings, from the environment (upper case) or ``app.conf``, as the other
gossip_fast settings:

``gossip_fast_digest`` / ``GOSSIP_FAST_DIGEST``
    run digest mode (default False: the step behaves exactly as without it).
``gossip_fast_digest_relay`` / ``GOSSIP_FAST_DIGEST_RELAY``
    this worker may be chosen as relay or successor (default True).
``gossip_fast_digest_interval`` / ``GOSSIP_FAST_DIGEST_INTERVAL``
    ``D``: at most one digest per this many seconds (default 2.0).
``gossip_fast_digest_successors`` / ``GOSSIP_FAST_DIGEST_SUCCESSORS``
    successors listed in each digest and sent the relay's pulses (default 3).

The timers that are not settings are fixed here (:class:`Timing`).
"""
import os
from typing import NamedTuple

__all__ = ('Timing', 'enabled', 'load')

_TRUE = ('1', 'true', 'yes', 'on')
_FALSE = ('', '0', 'false', 'no', 'off')


class Timing(NamedTuple):
    """Every delay of digest mode, in seconds (section 5 of the design)."""
    #: F: Celery's heartbeat interval (a peer is alive for 2 F after one)
    heartbeat: float = 2.0
    #: T: the relay's (and the successors') tick: sweep, pulse, digest
    tick: float = 1.0
    #: the tick of members beyond the successors (Celery's sweep interval I)
    member_tick: float = 5.0
    #: D: at most one digest per D
    interval: float = 2.0
    #: K: an empty digest (keepalive) after K without changes
    keepalive: float = 10.0
    #: P: pulse silence after which the first successor takes over
    pulse_timeout: float = 2.5
    #: G: stagger between positions in the succession
    stagger: float = 1.5
    #: Q: digest silence after which members beyond the successors take over
    digest_timeout: float = 25.0
    #: B: start-up wait for any relay message before promoting oneself,
    #: plus U[0, bootstrap_jitter)
    bootstrap: float = 3.0
    bootstrap_jitter: float = 5.0
    #: A: announce refresh
    announce_every: float = 300.0
    #: an unanswered snapshot request is sent again after this long
    snapshot_retry: float = 5.0
    #: a needed snapshot is requested after U[0, snapshot_jitter)
    snapshot_jitter: float = 2.0
    #: bytes of snapshots a relay sends per tick at most (8 MB/s at T = 1 s)
    snapshot_budget: int = 8 * 1024 * 1024


def _raw(app, name):
    value = os.environ.get(name.upper())
    if value:
        return value
    try:
        return app.conf.get(name)
    except Exception:  # pylint: disable=broad-except
        return None


def _bool(app, name, default):
    value = _raw(app, name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if not isinstance(value, str) and not isinstance(value, (int, float)):
        return default  # a Mock app's attribute: unset
    raise ValueError(f'{name} must be true or false, not {value!r}')


def _number(app, name, default, low, high, kind=float):
    value = _raw(app, name)
    if value is None or isinstance(value, bool):
        return default
    if not isinstance(value, (str, int, float)):
        return default  # a Mock app's attribute: unset
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a number, not {value!r}') from None
    if not low <= number <= high:
        raise ValueError(f'{name} must be in [{low}, {high}], not {value!r}')
    return number


def enabled(app):
    """True if the app asks for digest mode."""
    return _bool(app, 'gossip_fast_digest', False)


class Settings(NamedTuple):
    relay: bool = True
    successors: int = 3
    timing: Timing = Timing()


def load(app, heartbeat_interval=None, interval=None):
    """The :class:`Settings` of *app*; *heartbeat_interval* and *interval*
    are the Gossip step's (F and the member tick)."""
    timing = Timing()
    digest_interval = _number(app, 'gossip_fast_digest_interval', timing.interval, 0.1, 60.0)
    changes = {'interval': digest_interval,
               'keepalive': max(timing.keepalive, digest_interval)}
    if heartbeat_interval:
        try:
            changes['heartbeat'] = float(heartbeat_interval)
        except (TypeError, ValueError):
            pass
    if interval:
        try:
            changes['member_tick'] = max(timing.tick, float(interval))
        except (TypeError, ValueError):
            pass
    return Settings(
        relay=_bool(app, 'gossip_fast_digest_relay', True),
        successors=_number(app, 'gossip_fast_digest_successors', 3, 0, 15, int),
        timing=timing._replace(**changes),
    )
