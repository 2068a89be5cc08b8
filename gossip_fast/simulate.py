"""Byte-realistic gossip traffic, in process, for tests and benchmarks.

Builds real kombu messages exactly as a Celery 5.7 worker's events arrive
(see ``tests/data/wire``): the JSON body with Celery's field order and
kombu's separators, wrapped either as kombu's Redis envelope (base64 body,
decoded by kombu's own virtual-transport ``Message``) or as a py-amqp
delivery (``kombu.transport.pyamqp.Message``).  Also a minimal stand-in for
the worker's Consumer, enough to construct the Gossip bootstep (stock or
ours) outside a worker.
"""
import base64
import json
import uuid
from types import SimpleNamespace

from amqp.basic_message import Message as AMQPMessage
from kombu.transport import pyamqp
from kombu.transport.virtual import base as virtual

__all__ = ('event_body', 'heartbeat_body', 'redis_message', 'amqp_message',
           'make_message', 'SimulatedConsumer', 'SimulatedDispatcher',
           'simulated_cluster')

#: A Redis channel stand-in that has only what kombu's Message needs.
_REDIS_CHANNEL = SimpleNamespace(codecs=virtual.Channel.codecs)
_REDIS_CHANNEL.decode_body = lambda body, encoding=None: (
    virtual.Channel.decode_body(_REDIS_CHANNEL, body, encoding))


def event_body(type_, hostname, clock, timestamp, pid=4242, **fields):
    """JSON bytes of one event as Celery's EventDispatcher serializes it."""
    event = {'hostname': hostname, 'utcoffset': 0.0, 'pid': pid,
             'clock': clock}
    event.update(fields)
    event['timestamp'] = timestamp
    event['type'] = type_
    return json.dumps(event).encode()


def heartbeat_body(hostname, clock, timestamp, pid=4242, type_='worker-heartbeat',
                   freq=2.0, active=0, processed=0):
    """A ``worker-heartbeat`` (or online/offline) body, byte for byte."""
    return event_body(
        type_, hostname, clock, timestamp, pid=pid, freq=freq, active=active,
        processed=processed, loadavg=[0.17, 0.36, 0.46], sw_ident='py-celery',
        sw_ver='5.7.0', sw_sys='Linux')


def redis_message(routing_key, body, hostname=None,
                  content_type='application/json', content_encoding='utf-8',
                  headers=None):
    """A kombu Message as the Redis transport delivers it."""
    if headers is None:
        headers = {'hostname': hostname} if hostname is not None else {}
    envelope = json.dumps({
        'body': base64.b64encode(body).decode(),
        'content-encoding': content_encoding,
        'content-type': content_type,
        'headers': headers,
        'properties': {
            'delivery_mode': 1,
            'delivery_info': {'exchange': 'celeryev',
                              'routing_key': routing_key},
            'priority': 0, 'body_encoding': 'base64',
            'delivery_tag': str(uuid.uuid4()),
        },
    })
    return virtual.Message(json.loads(envelope), channel=_REDIS_CHANNEL)


def amqp_message(routing_key, body, hostname=None,
                 content_type='application/json', content_encoding='utf-8',
                 headers=None):
    """A kombu Message as the py-amqp transport delivers it."""
    if headers is None:
        headers = {'hostname': hostname} if hostname is not None else {}
    raw = AMQPMessage(body=body, content_type=content_type,
                      content_encoding=content_encoding,
                      application_headers=headers, delivery_mode=1, priority=0)
    if hasattr(raw, 'content_encoding'):
        # py-amqp's channel decodes what it delivers (auto_decode, its
        # default): kombu's consumer gets the body as text
        try:
            raw.body = raw.body.decode(raw.content_encoding)
        except Exception:
            pass
    raw.delivery_info = {'consumer_tag': 'None4', 'delivery_tag': 1,
                         'redelivered': False, 'exchange': 'celeryev',
                         'routing_key': routing_key}
    return pyamqp.Message(raw, channel=None)


def make_message(transport, routing_key, body, hostname=None, **kwargs):
    factory = redis_message if transport == 'redis' else amqp_message
    return factory(routing_key, body, hostname, **kwargs)


class SimulatedDispatcher:
    """Records what Gossip sends (``worker-elect``, ``worker-elect-ack``)."""

    def __init__(self):
        self.sent = []

    def send(self, type_, **fields):
        self.sent.append((type_, fields))


class SimulatedConsumer:
    """The parts of ``celery.worker.consumer.Consumer`` Gossip uses."""

    def __init__(self, app, hostname='local@sim', pid=1000, timer=None, hub=None):
        self.app = app
        self.hostname = hostname
        self.pid = pid
        self.hub = hub
        self.timer = hub.timer if hub is not None and timer is None else timer
        self.gossip = None
        self.event_dispatcher = SimulatedDispatcher()
        self.connection = None


def simulated_cluster(size, transport='redis', start=1_700_000_000.0,
                      freq=2.0, prefix='sim'):
    """Yield ``(time, message)`` for heartbeats of *size* workers, forever.

    Each worker sends one heartbeat every *freq* seconds, spread evenly,
    with its own growing clock, as a real cluster would.
    """
    step = freq / size
    clock = 0
    beat = 0
    while True:
        for index in range(size):
            clock += 1
            now = start + beat * freq + index * step
            hostname = f'{prefix}{index}@node{index % 64}'
            body = heartbeat_body(hostname, clock, now, pid=10_000 + index)
            yield now, make_message(transport, 'worker.heartbeat', body, hostname)
        beat += 1
