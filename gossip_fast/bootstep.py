"""Worker <-> Worker communication Bootstep, with a compiled hot path.

A drop-in for ``celery.worker.consumer.gossip.Gossip``: same step name,
same constructor, same members.  The per-message work (routing, decoding,
the Lamport clock rules, the worker table and its sweep) is done by
``gossip_fast.implementation.core``; the fast receive path by
:mod:`gossip_fast.fastpath`; elections by :mod:`gossip_fast.elections` and
the reporting of bad input by :mod:`gossip_fast.badinput`.  This module
holds the step itself: its life cycle, the sweep and the callbacks.

As with stock Celery, tests and users may patch this module's ``logger``,
``debug`` and ``info``, and swap ``update_state``, ``event_handlers``,
``election_handlers``, ``clock``, ``dispatcher``, ``on_node_*`` and ``state``
on an instance at run time: they are looked up when used.
"""
from collections import Counter, defaultdict
from functools import partial
from time import monotonic, time

from celery import bootsteps
from celery.utils.log import get_logger
from celery.utils.objects import Bunch
from celery.worker.consumer.mingle import Mingle
from kombu import Consumer
from kombu.asynchronous.semaphore import DummyLock
from kombu.serialization import prepare_accept_content

from . import fastpath, implementation, observability
from .badinput import BadInput
from .digest import mode as digest_mode
from .elections import Elections

__all__ = ('Gossip',)

logger = get_logger(__name__)
debug, info = logger.debug, logger.info

#: Bootstep attributes the receiver may cache (tests and users swap them).
RECEIVER_ATTRIBUTES = frozenset(('hostname', 'clock', 'update_state', 'event_handlers'))


def ensure_clock(app, core=None):
    """Make ``app.clock`` a hardened clock of *core*, keeping its value.

    Called by :func:`gossip_fast.install` (early, before the worker's
    components capture the clock) and by :class:`Gossip` itself, so the
    dispatcher that the Events step creates later shares it.
    """
    core = core or implementation.core
    clock = app.clock
    if type(clock) is not core.Clock:
        value = getattr(clock, 'value', 0)
        if type(value) is not int or not 0 <= value < 2 ** 63:
            value = 0
        app.clock = core.Clock(value)
    return app.clock


def accept_content(app):
    """The content types Celery's event receiver accepts: the app's event
    serializer and JSON.  A serializer name that is not a string is an
    error on a real app; on anything else (a test's ``Mock()`` app, as in
    Celery's own tests) only JSON is taken until ``get_consumers`` sets
    the receiver's own."""
    serializer = app.conf.event_serializer
    if not isinstance(serializer, str):
        from celery import Celery
        if isinstance(app, Celery):
            raise TypeError(f'event_serializer must be a str, not {serializer!r}')
        serializer = 'json'
    return prepare_accept_content({serializer, 'json'})


class Gossip(Elections, bootsteps.ConsumerStep):
    """Bootstep consuming events from other workers.

    This keeps the logical clock value up to date.
    """

    name = 'celery.worker.consumer.gossip.Gossip'
    label = 'Gossip'
    requires = (Mingle,)
    compatible_transports = {'amqp', 'redis'}
    #: The hot-path implementation (a module); tests swap it on subclasses.
    core = implementation.core

    def __init__(self, c, without_gossip=False,
                 interval=5.0, heartbeat_interval=2.0, **kwargs):
        self.enabled = not without_gossip and self.compatible_transport(c.app)
        self.app = c.app
        c.gossip = self
        self.Receiver = c.app.events.Receiver
        self.hostname = c.hostname
        self.full_hostname = '.'.join([self.hostname, str(c.pid)])
        self.on = Bunch(
            node_join=set(),
            node_leave=set(),
            node_lost=set(),
        )
        self.bad_input = BadInput()
        self.dropped = self.bad_input.dropped
        self.sanitized = self.bad_input.sanitized
        self.elections = Counter()
        self._init_elections()
        self._hub = c.hub
        self._driver = None    # the fast receive path (fastpath.loop.HubDriver)
        self._reader = None    # its reader
        self.receive_fallback = None  # why kombu's consumer is used, if it is
        self.sweeps_held_back = 0

        self.timer = c.timer
        self.clock = ensure_clock(c.app, self.core)
        state = None
        if self.enabled:
            state = self.state = self.core.State(
                on_node_join=lambda worker: self.on_node_join(worker),
                on_node_leave=lambda worker: self.on_node_leave(worker),
                on_reject=self._reject,
                on_drift=self._warn_drift,
            )
            if c.hub:
                c._mutex = DummyLock()
        self._receiver = self.core.Receiver(self, state, self.clock,
                                            accept_content(c.app))
        if self.enabled:
            self.update_state = self._receiver.state_event
        # the hot path, bound once (the class method below documents it)
        self.on_message = self._receiver.on_message
        self.interval = interval
        self.heartbeat_interval = heartbeat_interval
        self._tref = None
        self.consensus_requests = defaultdict(list)
        self.consensus_replies = {}
        self.event_handlers = {
            'worker.elect': self.on_elect,
            'worker.elect.ack': self.on_elect_ack,
        }

        self.election_handlers = {
            'task': self.call_task
        }

        super().__init__(c, **kwargs)
        # digest mode (docs/digest-mode.md): None unless gossip_fast_digest is set
        self._digest = digest_mode.attach(self, c) if self.enabled else None

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in RECEIVER_ATTRIBUTES:
            receiver = self.__dict__.get('_receiver')
            if receiver is not None:
                receiver.refresh()  # a swap takes effect on the next message

    def compatible_transport(self, app):
        with app.connection_for_read() as conn:
            return conn.transport.driver_type in self.compatible_transports

    def start(self, c):
        super().start(c)
        self.dispatcher = c.event_dispatcher

    # -- membership callbacks -----------------------------------------------

    def on_node_join(self, worker):
        debug('%s joined the party', worker.hostname)
        self._call_handlers(self.on.node_join, worker)

    def on_node_leave(self, worker):
        debug('%s left', worker.hostname)
        self._call_handlers(self.on.node_leave, worker)

    def on_node_lost(self, worker):
        info('missed heartbeat from %s', worker.hostname)
        self._call_handlers(self.on.node_lost, worker)

    def _call_handlers(self, handlers, *args, **kwargs):
        for handler in handlers:
            try:
                handler(*args, **kwargs)
            except Exception as exc:  # pylint: disable=broad-except
                logger.exception(
                    'Ignored error from handler %r: %r', handler, exc)

    def _call_event_handler(self, handler, payload):
        try:
            return handler(payload)
        except Exception as exc:  # pylint: disable=broad-except
            self.dropped['handler_error'] += 1
            logger.exception('Ignored error from handler %r: %r', handler, exc)

    # -- bad input -----------------------------------------------------------

    def _reject(self, reason, hostname, detail):
        """Count bad input and log it, rate-limited (:mod:`.badinput`)."""
        self.bad_input.report(reason, hostname, detail)

    def _warn_drift(self, worker, drift, received, timestamp):
        logger.warning(
            'Substantial drift from %s may mean clocks are out of sync.  '
            'Current drift is %s seconds.  [orig: %s recv: %s]',
            worker.hostname, drift, timestamp, received)

    # -- the sweep -------------------------------------------------------------

    def register_timer(self):
        if self._tref is not None:
            self._tref.cancel()
        self._tref = self.timer.call_repeatedly(self.interval, self.periodic)

    def periodic(self):
        state = self.state
        if state is getattr(self._receiver, 'state', None):
            now = None
            reader = self._reader
            if reader is not None and reader.backlog():
                # Behind: what arrived since the reader last caught up may
                # hold a newer heartbeat of a peer that looks expired.  Judge
                # liveness as of that moment (all it had read by then is
                # applied): nobody is lost for a heartbeat still in our
                # backlog; the others are, once it catches up.
                now = reader.caught_up_at
                self._note_behind(state, now)
            for worker in state.sweep(now):
                self.on_node_lost(worker)
        else:  # a state swapped in by the user: stock's sweep
            workers = state.workers
            dirty = set()
            for worker in workers.values():
                if not worker.alive:
                    dirty.add(worker)
                    self.on_node_lost(worker)
            for worker in dirty:
                workers.pop(worker.hostname, None)
        if self._election_started:
            self.expire_elections(monotonic())

    def _note_behind(self, state, caught_up_at):
        held = len(state.expired()) - len(state.expired(caught_up_at))
        self.sweeps_held_back += 1
        if held:
            logger.warning(
                'gossip_fast: receive path %.1f s behind; %d peer(s) that look '
                'expired are judged again once it has caught up',
                time() - caught_up_at, held)

    # -- consuming ---------------------------------------------------------------

    def get_consumers(self, channel):
        if self._digest is not None and self._digest.active:
            consumers = self._digest.get_consumers(channel)
            if consumers is not None:
                observability.announce(self, info)
                return consumers
        self.register_timer()
        ev = self.Receiver(channel, routing_key='worker.#',
                           queue_ttl=self.heartbeat_interval)
        self._receiver.accept = prepare_accept_content(ev.accept)
        self._stop_reader()
        self._driver = fastpath.start(self, channel, ev.queue, self._hub,
                                      check_channel=True)
        if self._driver is not None:
            self._reader = self._driver.reader
        observability.announce(self, info)  # the start line, once
        if self._driver is not None:
            return []  # the fast reader consumes the same queue/channel
        return [Consumer(
            channel,
            queues=[ev.queue],
            on_message=partial(self.on_message, self._receiver.fast_prepare),
            accept=ev.accept,
            no_ack=True,
            # kombu raises a message it cannot decompress out of the consumer
            # (stock: the worker dies); count and drop it instead
            on_decode_error=self._on_decode_error,
        )]

    def _on_decode_error(self, message, exc):
        # kombu calls this instead of on_message: count it as received too
        self._receiver.received += 1
        self._reject('decode_error', (message.headers or {}).get('hostname'), exc)

    def _stop_reader(self):
        driver, self._driver, self._reader = self._driver, None, None
        if driver is not None:
            driver.stop()
            # kombu's consumer step closes only the channels of consumers we
            # returned: the reader's channel is ours to close
            fastpath.close_channel(driver.reader.channel)

    def stop(self, c):
        self._stop_reader()
        if self._digest is not None:
            self._digest.stop()
        super().stop(c)

    def _close(self, c, cancel_consumers=True):
        # ConsumerStep's, but quiet and leak-free after a connection loss:
        # Celery 5.7 drops c.connection before it restarts the consumer's
        # steps (kombu's ignore_errors then fails on None and the step logs
        # "Error on restarting Gossip"), and see fastpath.close_channel().
        channels = []
        for consumer in self.consumers or []:
            if cancel_consumers:
                try:
                    consumer.cancel()
                except Exception:  # pylint: disable=broad-except
                    pass
            if consumer.channel and consumer.channel not in channels:
                channels.append(consumer.channel)
        for channel in channels:
            fastpath.close_channel(channel)

    def shutdown(self, c):
        self._stop_reader()
        if self._digest is not None:
            self._digest.stop()
        super().shutdown(c)

    def on_message(self, prepare, message):
        """Handle one event message (bound to the compiled core per instance).

        Routing keys ``task.*`` are dropped undecoded; keys in
        :attr:`event_handlers` go to that handler; our own events only
        forward the clock; others are prepared and applied to the state.
        Bad input is counted and logged, never raised.
        """
        return self._receiver.on_message(prepare, message)

    # -- observability -------------------------------------------------------------

    def stats(self):
        """Counters for operators (also ``celery inspect gossip_stats``)."""
        return observability.stats(self)
