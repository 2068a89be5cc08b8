"""Tests of the broker tooling itself (tests/brokers.py): real kombu round trips
against real Redis and RabbitMQ servers, before and after a broker restart."""

import uuid

import pytest
from kombu import Connection, Exchange, Queue

pytestmark = pytest.mark.broker


def _names(prefix):
    tag = uuid.uuid4().hex[:8]
    return f"{prefix}.x.{tag}", f"{prefix}.q.{tag}", f"{prefix}.rk.{tag}"


def round_trip(url, body, durable=False):
    """Publish ``body`` to a fresh direct exchange, consume it back, return it."""
    ex_name, q_name, rk = _names("test_brokers")
    exchange = Exchange(ex_name, type="direct", durable=durable)
    queue = Queue(q_name, exchange, routing_key=rk, durable=durable)
    received = []
    with Connection(url, connect_timeout=5) as conn:
        bound = queue(conn.default_channel)
        bound.declare()
        try:
            conn.Producer().publish(
                body, exchange=exchange, routing_key=rk, serializer="json"
            )

            def on_message(payload, message):
                received.append(payload)
                message.ack()

            with conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
                conn.drain_events(timeout=10)
        finally:
            bound.delete()
    return received


def _check_restart(server):
    if not server.can_restart:
        pytest.skip(f"{server.url} is an external broker: cannot restart it")
    port, url = server.port, server.url
    assert round_trip(url, {"before": "restart"}) == [{"before": "restart"}]

    server.restart()

    assert server.running
    assert server.port == port and server.url == url
    assert round_trip(server.url, {"after": "restart"}) == [{"after": "restart"}]


def test_redis_round_trip(redis_server):
    assert redis_server.running
    assert redis_server.url.startswith("redis://")
    body = {"hello": "redis", "n": 1}
    assert round_trip(redis_server.url, body) == [body]


def test_redis_restart(redis_server):
    _check_restart(redis_server)


def test_rabbitmq_round_trip(rabbitmq_server):
    assert rabbitmq_server.running
    assert rabbitmq_server.url.startswith("amqp://")
    body = {"hello": "rabbitmq", "n": 1}
    assert round_trip(rabbitmq_server.url, body) == [body]


def test_rabbitmq_restart(rabbitmq_server):
    _check_restart(rabbitmq_server)


def test_rabbitmq_restart_keeps_data_folder(rabbitmq_server):
    """A persistent message in a durable queue survives restart(): same folder."""
    if not rabbitmq_server.can_restart:
        pytest.skip(f"{rabbitmq_server.url} is an external broker: cannot restart it")
    ex_name, q_name, rk = _names("test_brokers_durable")
    exchange = Exchange(ex_name, type="direct", durable=True)
    queue = Queue(q_name, exchange, routing_key=rk, durable=True)
    with Connection(rabbitmq_server.url, connect_timeout=5) as conn:
        queue(conn.default_channel).declare()
        conn.Producer().publish(
            {"kept": True}, exchange=exchange, routing_key=rk, delivery_mode=2,
            serializer="json",
        )

    rabbitmq_server.restart()

    with Connection(rabbitmq_server.url, connect_timeout=5) as conn:
        bound = queue(conn.default_channel)
        message = bound.get(no_ack=True, accept=["json"])
        bound.delete()
    assert message is not None, "durable message lost across restart()"
    assert message.payload == {"kept": True}
