"""Exchange, routing keys and Redis channels of digest mode.

Digest-mode messages travel on their own exchange, ``<event_exchange>.digest``
(``celeryev.digest`` by default), never on ``celeryev``: monitors (Flower,
``celery events``) bind ``#`` on ``celeryev`` (Redis: PSUBSCRIBE
``/{db}.celeryev/*``) and so never see them, and stock workers' ``worker.#``
queues never get them either.

Routing keys on the digest exchange:

``digest``
    relay -> everyone in digest mode: the changes (at most one digest per
    digest interval; an empty one as keepalive when nothing changed).
``pulse``
    relay -> its successors (the next in line), every second: "I am alive".
``announce``
    member -> relays: "I run digest mode" (and snapshot requests).
``snapshot.<16 hex digits>``
    relay -> one member: its snapshot.  The suffix is a hash of the
    member's hostname, not the hostname: hostnames may hold ``*`` or ``#``
    (topic wildcards on RabbitMQ, glob characters for Redis patterns) and
    be up to 255 bytes, the limit of a whole AMQP routing key.

On Redis, kombu publishes a message for exchange ``E`` and routing key
``K`` to the pub/sub channel ``<global_keyprefix>/<db>.E/K`` (the fanout
prefix ``/{db}.`` formatted with the database number; see kombu's
``Channel._get_publish_topic`` and ``PrefixedStrictRedis``), and a queue
bound with key ``worker.#`` PSUBSCRIBEs ``.../worker.*``.  A member
SUBSCRIBEs exact channels instead: a PUBLISH costs Redis a dictionary
lookup for exact subscribers, and a glob match per distinct pattern.
"""
from hashlib import blake2b

__all__ = ('DigestNames', 'snapshot_suffix', 'ELECT_KEYS', 'WORKER_KEY')

#: the stock Gossip queue's binding (celery/worker/consumer/gossip.py)
WORKER_KEY = 'worker.#'
#: what a member still gets from ``celeryev``: the election messages
ELECT_KEYS = ('worker.elect', 'worker.elect.ack')
DIGEST_KEY = 'digest'
PULSE_KEY = 'pulse'
ANNOUNCE_KEY = 'announce'
SNAPSHOT_PREFIX = 'snapshot.'
EXCHANGE_SUFFIX = '.digest'


def snapshot_suffix(hostname):
    """16 hex digits naming *hostname*'s snapshot key (stable everywhere)."""
    data = hostname.encode('utf-8', 'surrogatepass')
    return blake2b(data, digest_size=8, person=b'gf-snap1').hexdigest()


class DigestNames:
    """Names for one app and broker connection.

    *event_exchange* is ``app.conf.event_exchange``; *db*, *fanout_prefix*,
    *fanout_patterns* and *global_keyprefix* are the Redis transport's
    (ignored on RabbitMQ).  :meth:`from_kombu_channel` reads them from a
    kombu Redis channel, so the names follow whatever the worker's own
    connection uses.
    """

    def __init__(self, event_exchange='celeryev', db=0, fanout_prefix=True,
                 fanout_patterns=True, global_keyprefix=''):
        self.event_exchange = event_exchange
        self.exchange = event_exchange + EXCHANGE_SUFFIX
        self.db = int(db or 0)
        if fanout_prefix is True:
            self.fanout_prefix = f'/{self.db}.'
        elif fanout_prefix:
            self.fanout_prefix = str(fanout_prefix).format(db=self.db)
        else:
            self.fanout_prefix = ''
        self.fanout_patterns = bool(fanout_patterns)
        self.global_keyprefix = global_keyprefix or ''

    @classmethod
    def from_kombu_channel(cls, channel, event_exchange='celeryev'):
        """From a connected kombu Redis ``Channel`` (its prefix is formatted
        with the db once connected)."""
        db = 0
        try:  # kombu formats keyprefix_fanout with this db when it makes the pool
            db = int(channel.pool.connection_kwargs.get('db') or 0)
        except (AttributeError, TypeError, ValueError):
            pass
        prefix = getattr(channel, 'keyprefix_fanout', '/{db}.')
        if '{db}' in prefix:
            prefix = prefix.format(db=db)
        return cls(event_exchange, db=db, fanout_prefix=prefix or False,
                   fanout_patterns=getattr(channel, 'fanout_patterns', True),
                   global_keyprefix=getattr(channel, 'global_keyprefix', ''))

    # -- routing keys ---------------------------------------------------------------

    digest_key = DIGEST_KEY
    pulse_key = PULSE_KEY
    announce_key = ANNOUNCE_KEY

    @staticmethod
    def snapshot_key(hostname):
        return SNAPSHOT_PREFIX + snapshot_suffix(hostname)

    def kombu_exchange(self, transport):
        """The digest exchange as kombu declares it: topic on RabbitMQ
        (durable, like ``celeryev``: a broker restart keeps the bindings'
        exchange), fanout on Redis (pub/sub, as Celery's
        ``get_exchange`` makes ``celeryev``)."""
        from kombu import Exchange
        kind = 'fanout' if transport in ('redis', 'gcpubsub') else 'topic'
        return Exchange(self.exchange, type=kind, durable=True, auto_delete=False)

    # -- where digest mode works ------------------------------------------------------

    def unsupported_reason(self, transport):
        """Why digest mode cannot cut deliveries here (None: it can)."""
        if transport == 'redis' and not self.fanout_patterns:
            # kombu then publishes every celeryev event to one channel,
            # /{db}.celeryev: a member could not take elections alone.
            return 'the Redis transport option fanout_patterns is off'
        if transport not in ('redis', 'amqp'):
            return f'transport {transport!r} (digest mode needs redis or amqp)'
        return None

    # -- RabbitMQ ---------------------------------------------------------------------

    def amqp_bindings(self, role, hostname):
        """``[(exchange, routing_key), ...]`` for the worker's one queue.

        A relay keeps the stock binding (every ``worker.*`` event) and takes
        the digests and pulses (to follow another publisher) and the
        announces; a member takes only the elections, the digests and its
        own snapshots; a successor (next in line) also the pulses."""
        own = self.snapshot_key(hostname)
        if role == 'relay':
            return [(self.event_exchange, WORKER_KEY),
                    (self.exchange, DIGEST_KEY), (self.exchange, PULSE_KEY),
                    (self.exchange, ANNOUNCE_KEY), (self.exchange, own)]
        if role in ('member', 'successor'):
            out = ([(self.event_exchange, key) for key in ELECT_KEYS]
                   + [(self.exchange, DIGEST_KEY), (self.exchange, own)])
            if role == 'successor':
                out.append((self.exchange, PULSE_KEY))
            return out
        raise ValueError(f'unknown role {role!r}')

    # -- Redis --------------------------------------------------------------------------

    def redis_channel(self, exchange, routing_key):
        """The pub/sub channel kombu publishes (exchange, routing_key) to."""
        if routing_key and self.fanout_patterns:
            name = f'{self.fanout_prefix}{exchange}/{routing_key}'
        else:
            name = f'{self.fanout_prefix}{exchange}'
        return self.global_keyprefix + name

    def redis_pattern(self, exchange, binding_key):
        """The pattern kombu PSUBSCRIBEs for a fanout queue bound with
        *binding_key* (``#`` becomes ``*``)."""
        return self.redis_channel(exchange, binding_key.replace('#', '*'))

    def redis_subscriptions(self, role, hostname):
        """``(patterns, channels)``: what the worker PSUBSCRIBEs and SUBSCRIBEs."""
        own = self.redis_channel(self.exchange, self.snapshot_key(hostname))
        digest = self.redis_channel(self.exchange, DIGEST_KEY)
        pulse = self.redis_channel(self.exchange, PULSE_KEY)
        if role == 'relay':
            return ([self.redis_pattern(self.event_exchange, WORKER_KEY)],
                    [digest, pulse, self.redis_channel(self.exchange, ANNOUNCE_KEY), own])
        if role in ('member', 'successor'):
            channels = ([self.redis_channel(self.event_exchange, key) for key in ELECT_KEYS]
                        + [digest, own])
            if role == 'successor':
                channels.append(pulse)
            return [], channels
        raise ValueError(f'unknown role {role!r}')
