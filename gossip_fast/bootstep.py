"""Worker <-> Worker communication Bootstep, with a compiled hot path.

A drop-in for ``celery.worker.consumer.gossip.Gossip``: same step name,
same constructor, same members.  The per-message work (routing, decoding,
the Lamport clock rules, the worker table and its sweep) is done by
``gossip_fast.implementation.core``; the rare paths (elections, callbacks,
logging of bad input) stay here in Python.

As with stock Celery, tests and users may patch this module's ``logger``,
``debug`` and ``info``, and swap ``update_state``, ``event_handlers``,
``election_handlers``, ``clock``, ``dispatcher``, ``on_node_*`` and ``state``
on an instance at run time: they are looked up when used.
"""
from collections import Counter, defaultdict
from functools import partial
from operator import itemgetter
from time import monotonic, time

from kombu import Consumer
from kombu.asynchronous.semaphore import DummyLock
from kombu.serialization import prepare_accept_content

from celery import bootsteps
from celery.utils.log import get_logger
from celery.utils.objects import Bunch
from celery.worker.consumer.mingle import Mingle

from . import fastpath, implementation, observability

__all__ = ('Gossip',)

logger = get_logger(__name__)
debug, info = logger.debug, logger.info

#: Reasons of bad input after which the event is still applied, cleaned.
SANITIZED = frozenset(('bad_clock', 'reserved_field'))
#: At most one log line per reason of bad input in this many seconds.
BAD_INPUT_LOG_INTERVAL = 10.0
#: Bootstep attributes the receiver may cache (tests and users swap them).
RECEIVER_ATTRIBUTES = frozenset(('hostname', 'clock', 'update_state', 'event_handlers'))
#: A pending election that has not completed after this many seconds is
#: dropped (a peer died mid-election, or a request came after the result).
ELECTION_TIMEOUT = 30.0


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


def _describe(detail, limit=200):
    text = repr(detail)
    return text if len(text) <= limit else text[:limit] + '...'


class Gossip(bootsteps.ConsumerStep):
    """Bootstep consuming events from other workers.

    This keeps the logical clock value up to date.
    """

    name = 'celery.worker.consumer.gossip.Gossip'
    label = 'Gossip'
    requires = (Mingle,)
    _cons_stamp_fields = itemgetter(
        'id', 'clock', 'hostname', 'pid', 'topic', 'action', 'cver',
    )
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
        self.dropped = Counter()
        self.sanitized = Counter()
        self.elections = Counter()
        self._reader = None
        self._reader_tref = None
        self._bad_input_logged = {}
        self._bad_input_suppressed = Counter()
        self._election_started = {}
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
        self._receiver = self.core.Receiver(
            self, state, self.clock,
            prepare_accept_content({c.app.conf.event_serializer, 'json'}))
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

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in RECEIVER_ATTRIBUTES:
            receiver = self.__dict__.get('_receiver')
            if receiver is not None:
                receiver.refresh()  # a swap takes effect on the next message

    def compatible_transport(self, app):
        with app.connection_for_read() as conn:
            return conn.transport.driver_type in self.compatible_transports

    # -- elections ---------------------------------------------------------

    def election(self, id, topic, action=None):
        self.consensus_replies[id] = []
        self._election_started.setdefault(id, monotonic())
        self.elections['started'] += 1
        self.dispatcher.send(
            'worker-elect',
            id=id, topic=topic, action=action, cver=1,
        )

    def call_task(self, task):
        try:
            self.app.signature(task).apply_async()
        except Exception as exc:  # pylint: disable=broad-except
            logger.exception('Could not call task: %r', exc)

    def on_elect(self, event):
        try:
            (id_, clock, hostname, pid,
             topic, action, _) = self._cons_stamp_fields(event)
        except KeyError as exc:
            return self._reject('bad_election', event.get('hostname'),
                                f'election request missing field {exc}')
        if (type(clock) is not int or type(hostname) is not str
                or not hostname or type(topic) is not str
                or not isinstance(id_, (str, int))):
            return self._reject('bad_election', hostname,
                                {'id': id_, 'clock': clock, 'topic': topic})
        self._election_started.setdefault(id_, monotonic())
        self.consensus_requests[id_].append(
            (clock, f'{hostname}.{pid}', topic, action))
        self.dispatcher.send('worker-elect-ack', id=id_)

    def start(self, c):
        super().start(c)
        self.dispatcher = c.event_dispatcher

    def on_elect_ack(self, event):
        id = event.get('id') if isinstance(event, dict) else None
        try:
            replies = self.consensus_replies[id]
        except (KeyError, TypeError):
            return  # not for us
        hostname = event.get('hostname')
        if hostname not in replies:  # duplicate acks count once
            replies.append(hostname)
        self._maybe_decide(id)

    def _election_ready(self, id, replies):
        """Acks from as many hosts as there are alive workers, and a request
        from every alive worker and from us: every participant then decides
        on the same set of requests, so exactly one of them wins."""
        state = self.state
        if state is not getattr(self._receiver, 'state', None):
            # a state swapped in by the user: stock's rule, acks counted once
            return len(replies) >= len(set(state.alive_workers()))
        if len(replies) < state.alive_count():
            return False
        # request ids are 'hostname.pid'; pids have no dots
        requesters = {request[1].rpartition('.')[0]
                      for request in self.consensus_requests.get(id, ())}
        if self.hostname not in requesters:
            return False
        return all(worker.hostname in requesters for worker in state.alive_workers())

    def _maybe_decide(self, id):
        replies = self.consensus_replies.get(id)
        if replies is None or not self._election_ready(id, replies):
            return
        requests = self.consensus_requests.get(id)
        if requests:
            _, leader, topic, action = min(
                requests, key=lambda request: (request[0], request[1]))
            self.elections['decided'] += 1
            if leader == self.full_hostname:
                info('I won the election %r', id)
                self.elections['won'] += 1
                try:
                    handler = self.election_handlers[topic]
                except KeyError:
                    logger.exception('Unknown election topic %r', topic)
                else:
                    self._call_handlers((handler,), action)
            else:
                info('node %s elected for %r', leader, id)
        self._forget_election(id)

    def _forget_election(self, id):
        self.consensus_requests.pop(id, None)
        self.consensus_replies.pop(id, None)
        self._election_started.pop(id, None)

    def _expire_elections(self, now):
        for id, started in list(self._election_started.items()):
            if id in self.consensus_replies:
                self._maybe_decide(id)  # a participant may have died
            if id in self._election_started and now - started > ELECTION_TIMEOUT:
                if id in self.consensus_replies:
                    logger.warning('election %r timed out without a result', id)
                    self.elections['timed_out'] += 1
                self._forget_election(id)

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
        """Count bad input and log it, at most once per reason per
        :data:`BAD_INPUT_LOG_INTERVAL` seconds."""
        (self.sanitized if reason in SANITIZED else self.dropped)[reason] += 1
        now = monotonic()
        last = self._bad_input_logged.get(reason)
        if last is not None and now - last < BAD_INPUT_LOG_INTERVAL:
            self._bad_input_suppressed[reason] += 1
            return
        self._bad_input_logged[reason] = now
        more = self._bad_input_suppressed.pop(reason, 0)
        logger.warning(
            'gossip: %s event from %s: %s %s%s',
            'cleaned' if reason in SANITIZED else 'dropped',
            hostname if isinstance(hostname, str) else 'unknown sender',
            reason, _describe(detail),
            f' ({more} more like it since the last report)' if more else '')

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
            self._expire_elections(monotonic())

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
        self.register_timer()
        ev = self.Receiver(channel, routing_key='worker.#',
                           queue_ttl=self.heartbeat_interval)
        self._receiver.accept = prepare_accept_content(ev.accept)
        fast = self._start_reader(channel, ev.queue)
        observability.announce(self, channel, info)  # the start line, once
        if fast:
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

    def _start_reader(self, channel, queue):
        """Start the fast receive path (gossip_fast.fastpath) if it applies;
        False means: use kombu's consumer, as stock does."""
        self._stop_reader()
        reader = fastpath.reader_for(self, channel, queue)
        if reader is None:
            return False
        try:
            reader.start()
        except Exception as exc:  # pylint: disable=broad-except
            logger.warning('gossip_fast: fast receive path unavailable (%r); '
                           'using the kombu consumer', exc)
            reader.stop()
            return False
        self._reader = reader
        self._schedule_drain(reader, reader.max_delay)
        return True

    def _schedule_drain(self, reader, delay):
        self._reader_tref = self.timer.call_after(delay, self._drain, (reader,))

    def _drain(self, reader):
        """The reader's timer callback: drain, then come back after
        ``reader.next_delay()`` (sooner while it has a backlog)."""
        if reader is not self._reader:
            return  # stopped, or replaced by a consumer restart
        try:
            reader.drain()
        finally:
            if reader is self._reader:
                self._schedule_drain(reader, reader.next_delay())

    def _stop_reader(self):
        if self._reader_tref is not None:
            self._reader_tref.cancel()
            self._reader_tref = None
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.stop()
            # kombu's consumer step closes only the channels of consumers we
            # returned: the reader's channel is ours to close
            try:
                reader.channel.close()
            except Exception:  # pylint: disable=broad-except
                pass

    def stop(self, c):
        self._stop_reader()
        super().stop(c)

    def _close(self, c, cancel_consumers=True):
        if getattr(c, 'connection', None) is not None:
            return super()._close(c, cancel_consumers)
        # Celery 5.7 drops c.connection before it restarts the consumer's
        # steps after a connection loss; kombu's ignore_errors then fails on
        # None and the step logs "Error on restarting Gossip".  Close quietly.
        for consumer in self.consumers or []:
            for close in ((consumer.cancel,) if cancel_consumers else ()) + (
                    (consumer.channel.close,) if consumer.channel else ()):
                try:
                    close()
                except Exception:  # pylint: disable=broad-except
                    pass

    def shutdown(self, c):
        self._stop_reader()
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
