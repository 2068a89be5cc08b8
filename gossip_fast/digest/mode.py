"""Digest mode in the Gossip step (docs/digest-mode.md): the wiring.

The step calls in here in a few places (``gossip_fast/bootstep.py``):
:func:`attach` at construction (None unless ``gossip_fast_digest`` is set:
then nothing changes), :meth:`DigestMode.get_consumers` instead of its own
(None: digest mode cannot run here, the step goes on as normal gossip, and
says why), :meth:`DigestMode.stop` when the consumer stops.

What a digest-mode worker does:

* ``gossip.state`` is the relay's view (:class:`.members.ViewState`);
  ``node_join``/``node_leave``/``node_lost`` fire as the view changes
  (applying digests and snapshots: :class:`.view.MemberView`).
* It reads only what its role needs (:mod:`.readers`, woken by their
  socket), sends an announce at start (with a snapshot request), applies
  digests at once and a snapshot when one is needed, and adjusts the
  Lamport clock from every relay message.
* Its role (:mod:`.role`) decides when it takes over; as relay
  (:mod:`.relay`) it also reads the full heartbeat stream through the normal
  fast reader into the step's table, and on its tick (1 s) sweeps, pulses,
  publishes a digest when one is due and answers snapshot requests.  The
  relay's own ``state`` follows its own digests as they come back from the
  broker, so it fires what every member fires.
* Bad input on the digest exchange is counted and logged through the
  step's ``_reject`` (reason ``bad_digest``); nothing raises out of it.
"""
import random
import time
import uuid

from celery.utils.log import get_logger
from kombu import Producer
from kombu.serialization import prepare_accept_content

from .. import fastpath
from ..fastpath.loop import HubDriver
from . import settings as digest_settings
from .codec import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    FLAG_DIGEST,
    FLAG_ELIGIBLE,
    Announce,
    Pulse,
    decode,
    encode,
)
from .members import ViewState
from .names import WORKER_KEY, DigestNames
from .relay import Relay
from .relays import eligible
from .role import NEW_TERM, RELAY, STEP_DOWN, SUCCESSOR, Role
from .view import MemberView

__all__ = ('DigestMode', 'attach')

logger = get_logger(__name__)

#: a member sends an announce at most this often when it finds itself
#: missing from the view (it may simply not be in it yet)
ANNOUNCE_AGAIN = 5.0
#: message TTL of a digest reader's queue on RabbitMQ (section 4.3)
QUEUE_TTL = 10.0
#: at most one log line per this many seconds for failed publishes
LOG_INTERVAL = 10.0


def attach(gossip, c):
    """The step's :class:`DigestMode`, or None: not asked for, gossip off,
    or no way to run it here (said at WARNING)."""
    app = gossip.app
    if not digest_settings.enabled(app) or not gossip.enabled:
        return None
    why = None
    if c.hub is None:
        why = ('this pool has no event loop (gevent, eventlet): digest mode needs '
               'the prefork, solo or threads pool')
    elif fastpath.receive_mode(app) == 'classic':
        why = 'gossip_fast_receive is classic (digest mode needs the fast reader)'
    if why is not None:
        logger.warning('gossip_fast: digest mode is off: %s; running normal gossip', why)
        gossip.digest_off = why
        return None
    return DigestMode(gossip, digest_settings.load(
        app, gossip.heartbeat_interval, gossip.interval), consumer=c)


class DigestMode:
    """Digest mode of one Gossip step (see the module docstring)."""

    def __init__(self, gossip, config, rng=random.random, consumer=None):
        self.gossip = gossip
        self.consumer = consumer
        self.app = gossip.app
        self.config = config
        self.timing = timing = config.timing
        self.me = gossip.hostname
        try:
            self.pid = int(gossip.full_hostname.rpartition('.')[2])
        except ValueError:
            self.pid = 0
        self.flags = FLAG_DIGEST | (FLAG_ELIGIBLE if config.relay else 0)
        self._rng = rng
        self.active = True
        self.why = None
        self.table = gossip.state            # the core's State: the relay's table
        self._callbacks = (self.table.on_node_join, self.table.on_node_leave)
        self.table.on_node_join = self._table_join
        self.table.on_node_leave = self._table_leave
        self.view = MemberView(self.me)
        self.state = gossip.state = ViewState(self.me)
        self.role = Role(self.me, config.relay, timing, rng=rng)
        self.relay = None
        self.transport = self.names = self.channel = None
        self._producer = None
        self._stream_queue = None
        self._digest_driver = None           # HubDriver of the digest reader
        self._stream = None                  # HubDriver of the relay's full stream
        self._stream_reconnects = 0
        self._digest_reconnects = 0
        self._tref = None
        self._tick_period = None
        self._snapshot_tref = None
        self._requested = None               # our pending snapshot request id
        self._requested_at = None
        self._announced_at = None
        self._started = False
        self._publish_failed_at = None
        self.counts = dict.fromkeys((
            'digests_applied', 'digests_stale', 'digests_published', 'pulses_published',
            'snapshots_requested', 'snapshots_applied', 'snapshots_served',
            'announces_sent', 'announces_received', 'bad_digests', 'publish_errors',
            'stale_publisher'), 0)
        self.bad = {}

    # -- the step's life cycle ------------------------------------------------------

    def get_consumers(self, channel):
        """Start (or restart, after a lost connection) on *channel*: returns
        ``[]`` (the readers are ours), or None if digest mode cannot run
        on this broker (then the step runs normal gossip)."""
        gossip = self.gossip
        transport = fastpath.transport_of(channel)
        _, why = fastpath.select(self.app, channel, gossip._hub)
        names = None
        if why is None:
            names = self._names(channel, transport)
            why = names.unsupported_reason(transport)
        if why is not None:
            self._fall_back(why)
            return None
        ev = gossip.Receiver(channel, routing_key=WORKER_KEY,
                             queue_ttl=gossip.heartbeat_interval)
        gossip._receiver.accept = prepare_accept_content(ev.accept)
        self.channel, self.transport, self.names = channel, transport, names
        self._stream_queue = ev.queue
        self._producer = Producer(self._publish_channel(channel),
                                  exchange=names.kombu_exchange(transport))
        now = time.monotonic()
        self._start_digest_reader()
        self.role.subscribed(now)
        if self.role.role == RELAY:
            self._start_stream(hold=True)
        self._schedule_tick()
        if not self._started:
            self._started = True
            logger.info('gossip_fast digest mode: %s, %s%s', self.me, transport,
                        '' if self.config.relay else ' (never relays)')
            self._request_snapshot()
        elif not self.view.synced:
            self._request_snapshot()
        return []

    def stop(self):
        """Stop the readers and timers (the consumer stops or restarts)."""
        for name in ('_tref', '_snapshot_tref'):
            tref = getattr(self, name)
            setattr(self, name, None)
            if tref is not None:
                tref.cancel()
        self._tick_period = None
        self._stop_stream()
        driver, self._digest_driver = self._digest_driver, None
        if driver is not None:
            driver.stop()
        channel, self.channel, self._producer = self.channel, None, None
        if channel is not None:
            fastpath.close_channel(channel)

    def _publish_channel(self, channel):
        """Where to publish: the connection of the worker's event
        dispatcher, as Celery's own heartbeats are (the Events step starts
        before Gossip); else the consumer's *channel*.  Not the consumer's
        connection when there is another: RabbitMQ blocks a connection that
        publishes during a memory alarm, consuming included."""
        dispatcher = getattr(self.consumer, 'event_dispatcher', None)
        connection = getattr(dispatcher, 'connection', None)
        if getattr(dispatcher, 'enabled', False) and connection is not None:
            return connection
        return channel

    def _fall_back(self, why):
        logger.warning('gossip_fast: digest mode is off: %s; running normal gossip', why)
        self.active = False
        self.why = why
        self.gossip.digest_off = why
        self.table.on_node_join, self.table.on_node_leave = self._callbacks
        self.gossip.state = self.table

    def _names(self, channel, transport):
        exchange = self.app.conf.event_exchange
        if transport == 'redis':
            return DigestNames.from_kombu_channel(channel, exchange)
        return DigestNames(exchange)

    # -- readers --------------------------------------------------------------------------

    def _subscriptions(self):
        """Redis channels or RabbitMQ bindings of the digest reader now."""
        role, names = self.role.role, self.names
        if self.transport == 'redis':
            return names.redis_subscriptions(role, self.me)[1]
        return [b for b in names.amqp_bindings(role, self.me)
                if b != (names.event_exchange, WORKER_KEY)]

    def _start_digest_reader(self):
        # imported here: the readers need the fast path's libraries, which
        # fastpath.select() has found (importing the step must not need them)
        from .readers import DigestAMQPReader, DigestRedisReader, Dispatch, digest_queue
        gossip = self.gossip
        dispatch = Dispatch(gossip._receiver, self.names.exchange, self.on_message)
        delay = fastpath.max_delay(self.app)
        if self.transport == 'redis':
            reader = DigestRedisReader(gossip, self.channel, self._subscriptions(),
                                       dispatch, max_delay=delay)
        else:
            queue = digest_queue(self.app, self.channel.connection.client,
                                 self._subscriptions(), QUEUE_TTL)
            reader = DigestAMQPReader(gossip, self.channel, queue, dispatch, max_delay=delay)
        self._digest_driver = HubDriver(reader, gossip._hub)
        self._digest_driver.start(retry=True)
        self._digest_reconnects = reader.reconnects

    def _resubscribe(self):
        driver = self._digest_driver
        if driver is None:
            return
        reader = driver.reader
        if self.transport == 'redis':
            reader.resubscribe(self._subscriptions())
        else:
            from .readers import digest_queue
            reader.rebind(digest_queue(self.app, self.channel.connection.client,
                                       self._subscriptions(), QUEUE_TTL,
                                       name=reader.queue.name))
        if reader.retry_at is not None:
            driver.wake()

    def _start_stream(self, hold):
        """The relay's full heartbeat stream: the normal fast reader (its
        own connection; the channel is ours, for its settings)."""
        self._stop_stream()
        driver = fastpath.start(self.gossip, self.channel, self._stream_queue,
                                self.gossip._hub)
        if driver is None:  # it could not start: the next tick tries again
            return
        self._stream = driver
        self._stream_reconnects = driver.reader.reconnects
        if hold and self.relay is not None:
            self.relay.hold_until = time.time() + 2 * self.timing.heartbeat

    def _stop_stream(self):
        driver, self._stream = self._stream, None
        if driver is not None:
            driver.stop()

    # -- timers ------------------------------------------------------------------------------

    def _schedule_tick(self):
        role = self.role
        fast = role.role in (RELAY, SUCCESSOR) or not role.heard_any
        period = self.timing.tick if fast else self.timing.member_tick
        if period == self._tick_period and self._tref is not None:
            return
        if self._tref is not None:
            self._tref.cancel()
        self._tick_period = period
        self._tref = self.gossip.timer.call_repeatedly(period, self.tick)

    def tick(self):
        try:
            self._catch_up()
            if self.role.role == RELAY:
                self._relay_tick(time.time())
            else:
                self._member_tick(time.monotonic())
            if self.gossip._election_started:
                self.gossip.expire_elections(time.monotonic())
        except Exception as exc:  # pylint: disable=broad-except
            logger.exception('gossip_fast: digest mode tick failed: %r', exc)

    def _catch_up(self):
        """Read what waits in our sockets before judging anything: kombu's
        event loop runs due timers before it looks at readable sockets, so
        after the loop was held up (a long task in the solo pool) the relay's
        pulses, or the peers' heartbeats, may be there unread."""
        for driver in (self._digest_driver, self._stream):
            if driver is not None and driver.reader.retry_at is None:
                driver.reader.drain()

    def _member_tick(self, now):
        driver = self._digest_driver
        if driver is not None:
            reader = driver.reader
            if reader.retry_at is not None:
                return None  # we hear nothing now: no judgement of others' silence
            if reader.reconnects != self._digest_reconnects:
                self._digest_reconnects = reader.reconnects
                self.role.subscribed(now)  # what it missed is not the relay's silence
        reason = self.role.should_promote(now, self._candidates)
        if reason is not None:
            return self._promote(reason, now)
        if self._requested is not None and now - self._requested_at >= self.timing.snapshot_retry:
            self._request_snapshot()
        elif self._announced_at is None or now - self._announced_at >= self.timing.announce_every:
            self._announce()
        return None

    def _candidates(self):
        return eligible(self.view.members.values())

    def _relay_tick(self, now):
        relay = self.relay
        if self._stream is None:
            self._start_stream(hold=True)
        self._judge(now)
        relays = relay.relays()
        self.role.relays = relays
        clock = self.gossip.clock.forward
        log = relay.log
        if log.due(now):
            self._publish(self.names.digest_key, encode(log.build(now, clock(), relays)))
            self.counts['digests_published'] += 1
        self._publish(self.names.pulse_key, encode(Pulse(
            self.me, self.pid, clock(), now, log.term, max(1, log.seq),
            log.hash.count, log.hash.value, relays, float(log.interval))))
        self.counts['pulses_published'] += 1
        for hostname, body in relay.snapshots(now, clock):
            self._publish(self.names.snapshot_key(hostname), body)
            self.counts['snapshots_served'] += 1

    def _judge(self, now):
        """The sweep, unless the stream cannot be trusted yet: not
        connected, reconnected less than 2F ago, or behind (then as of the
        moment it last caught up)."""
        relay, driver = self.relay, self._stream
        if driver is None:
            return
        reader = driver.reader
        if reader.reconnects != self._stream_reconnects:
            self._stream_reconnects = reader.reconnects
            relay.hold_until = now + 2 * self.timing.heartbeat
        if reader.retry_at is not None or now < relay.hold_until:
            return
        relay.sweep(reader.caught_up_at if reader.backlog() else now)

    # -- roles ---------------------------------------------------------------------------------

    def _promote(self, reason, now):
        role = self.role
        silent = role.publisher
        last = role.last_heard_from(silent) if silent else None
        wall = time.time()
        silent_at = wall - (now - max(last or role.since, role.since)) if silent else None
        term = role.promote(reason)
        self.relay = Relay(self.me, self.pid, self.flags, self.table, self.timing,
                           self.config.successors, term, self.view)
        self.relay.seed(wall, self.view.fields, silent, silent_at)
        logger.info('gossip_fast digest mode: %s relays now (%s, term %d)',
                    self.me, reason, term)
        self._start_stream(hold=False)
        self._resubscribe()
        self._schedule_tick()
        self._relay_tick(wall)

    def _step_down(self, now, winner, term):
        logger.info('gossip_fast digest mode: %s stops relaying: %s publishes (term %d)',
                    self.me, winner, term)
        self.role.step_down(now)
        self.relay = None
        self._resubscribe()    # the elections again, before the stream stops
        self._stop_stream()
        self.table.clear()
        self._schedule_tick()

    def _table_join(self, worker):
        if self.relay is not None:
            self.relay.joined(worker)

    def _table_leave(self, worker):
        if self.relay is not None:
            self.relay.left(worker)

    # -- what arrives ----------------------------------------------------------------------------

    def on_message(self, routing_key, headers, body, content_type):
        """A message of the digest exchange (never raises)."""
        sender = headers.get('hostname') if type(headers) is dict else None
        try:
            if content_type != CONTENT_TYPE:
                return self._bad('content_type', sender, content_type)
            msg, reason = decode(body)
            if msg is None:
                return self._bad(reason, sender, routing_key)
            if sender is not None and sender != msg.hostname:
                return self._bad('sender', sender, msg.hostname)
            if msg.kind == 'a':
                return self._on_announce(msg)
            if msg.relays[0] != msg.hostname:
                return self._bad('publisher', sender, msg.relays[0])
            return self._on_relay_message(msg)
        except Exception as exc:  # pylint: disable=broad-except
            self.counts['bad_digests'] += 1
            logger.exception('gossip_fast: error handling a digest-mode message: %r', exc)
            return None

    def _bad(self, reason, sender, detail):
        self.counts['bad_digests'] += 1
        self.bad[reason] = self.bad.get(reason, 0) + 1
        self.gossip._reject('bad_digest', sender, f'{reason}: {detail!r}')

    def _on_announce(self, announce):
        if self.relay is None or announce.hostname == self.me:
            return
        self.counts['announces_received'] += 1
        self.gossip.clock.adjust(announce.clock)
        self.relay.announced(announce)

    def _on_relay_message(self, msg):
        role = self.role
        now = time.monotonic()
        if msg.hostname == self.me:
            if msg.kind == 'd' and self.relay is not None and msg.term == self.relay.term:
                self.relay.log.came_back(msg.term, msg.seq)
                self._apply_digest(msg, own=True)
            return
        self.gossip.clock.adjust(msg.clock)
        if role.role == RELAY:
            decision = role.heard(msg.hostname, msg.term, now)
            if decision == NEW_TERM:
                self.relay.new_term(role.new_term())
                return
            if decision != STEP_DOWN:
                return
            self._step_down(now, msg.hostname, msg.term)
        if not role.current(msg.hostname, msg.term):
            self.counts['stale_publisher'] += 1
            return
        first = not role.heard_any
        role.heard(msg.hostname, msg.term, now, msg.relays)
        if msg.kind == 'd':
            self._apply_digest(msg)
        elif msg.kind == 's':
            self._apply_snapshot(msg)
        if role.settle():
            self._resubscribe()
            self._schedule_tick()
        elif first:
            self._schedule_tick()

    def _apply_digest(self, digest, own=False):
        applied = self.view.apply_digest(digest)
        if applied.stale:
            self.counts['digests_stale'] += 1
            return
        self.counts['digests_applied'] += 1
        self._fire(*self.state.apply(applied, self.view, time.time()))
        if own:
            if applied.snapshot_needed:  # our own view: from our change log
                self._resync_from_log()
            return
        self._want_snapshot(applied.snapshot_needed)
        self._check_self()

    def _resync_from_log(self):
        relay = self.relay
        snap = relay.log.snapshot(time.time(), self.gossip.clock.value, relay.relays())
        self.view.apply_snapshot(snap)
        joined, lost = self.state.reconcile(self.view, time.time())
        self._fire(joined, (), lost)

    def _apply_snapshot(self, snap):
        if self.relay is not None:
            return
        if snap.request != self._requested and self.view.synced:
            return  # not ours (an old request): the stream is enough
        self.view.apply_snapshot(snap, needed=True)
        self.counts['snapshots_applied'] += 1
        self._requested = None
        self._want_snapshot(False)
        joined, lost = self.state.reconcile(self.view, time.time(), fields=True)
        self._fire(joined, (), lost)
        self._check_self()

    def _fire(self, joined, left, lost):
        gossip = self.gossip
        for worker in joined:
            gossip.on_node_join(worker)
        for worker in left:
            gossip.on_node_leave(worker)
        for worker in lost:
            gossip.on_node_lost(worker)

    # -- what we send ----------------------------------------------------------------------------

    def _want_snapshot(self, needed):
        """A gap or a mismatch: ask for a snapshot after U[0, J) s, unless a
        later digest closes it first."""
        tref = self._snapshot_tref
        if needed:
            if tref is None and self._requested is None:
                delay = self._rng() * self.timing.snapshot_jitter
                self._snapshot_tref = self.gossip.timer.call_after(
                    delay, self._request_snapshot)
        elif tref is not None:
            self._snapshot_tref = None
            tref.cancel()

    def _request_snapshot(self):
        self._snapshot_tref = None
        if self.relay is not None or self.names is None:
            return
        self._requested = uuid.uuid4().hex[:16]
        self._requested_at = time.monotonic()
        self.counts['snapshots_requested'] += 1
        self._announce(self._requested)

    def _announce(self, request=None):
        view = self.view
        self._announced_at = time.monotonic()
        self.counts['announces_sent'] += 1
        self._publish(self.names.announce_key, encode(Announce(
            self.me, self.pid, self.gossip.clock.forward(), time.time(), self.flags,
            view.term, view.seq, view.hash.count, view.hash.value, request)))

    def _check_self(self):
        """Announce again if the view lacks us, or our flags."""
        if not self.view.synced or self.relay is not None:
            return
        mine = self.view.members.get(self.me)
        if mine is not None and mine.flags == self.flags:
            return
        if (self._announced_at is None
                or time.monotonic() - self._announced_at >= ANNOUNCE_AGAIN):
            self._announce()

    def _publish(self, routing_key, body):
        producer = self._producer
        if producer is None:
            return
        try:
            producer.publish(body, routing_key=routing_key, content_type=CONTENT_TYPE,
                             content_encoding=CONTENT_ENCODING,
                             headers={'hostname': self.me}, delivery_mode=1,
                             retry=False)
        except Exception as exc:  # pylint: disable=broad-except
            self.counts['publish_errors'] += 1
            now = time.monotonic()
            if self._publish_failed_at is None or now - self._publish_failed_at >= LOG_INTERVAL:
                self._publish_failed_at = now
                logger.warning('gossip_fast: digest publish failed: %r', exc)

    # -- observability ---------------------------------------------------------------------------

    def describe(self):
        return f'{self.transport} digest mode' if self.transport else 'digest mode'

    def receive_stats(self):
        out = {}
        for name, driver in (('digest', self._digest_driver), ('stream', self._stream)):
            if driver is not None:
                out[name] = dict(driver.reader.stats(), **driver.stats())
        out['path'] = self.describe()
        return out

    def stats(self):
        view, role, relay = self.view, self.role, self.relay
        out = {
            'active': True,
            'role': role.role,
            'term': role.term,
            'seq': relay.log.seq if relay is not None else view.seq,
            'publisher': role.publisher,
            'relays': list(role.relays),
            'view_size': view.hash.count,
            'view_hash': f'{view.hash.value:016x}',
            'synced': view.synced,
            'takeovers': role.counts['takeovers'],
            'bootstraps': role.counts['bootstraps'],
            'step_downs': role.counts['step_downs'],
            'new_terms': role.counts['new_terms'],
            'eligible': self.config.relay,
        }
        out.update(self.counts)
        out['bad_digest_reasons'] = dict(self.bad)
        if relay is not None:
            out['snapshot_queue'] = len(relay.requests)
            out['tracked_heartbeats'] = len(self.table.workers)
        return out
