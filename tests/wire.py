"""The captured Celery 5.7 event messages of tests/data/wire, as real kombu
messages, plus helpers to build more of the same shape."""
import base64
import json
import os
import time

from gossip_fast.simulate import event_body, heartbeat_body, make_message

HERE = os.path.join(os.path.dirname(__file__), "data", "wire")
TRANSPORTS = ("redis", "amqp")


def captured(transport):
    """``{routing_key: (body bytes, headers)}`` as captured from a worker."""
    name = "redis-events.jsonl" if transport == "redis" else "amqp-events.jsonl"
    result = {}
    with open(os.path.join(HERE, name)) as lines:
        for line in lines:
            record = json.loads(line)
            if transport == "redis":
                envelope = json.loads(record["data"])
                body = base64.b64decode(envelope["body"])
                key = envelope["properties"]["delivery_info"]["routing_key"]
                headers = envelope["headers"]
            else:
                body = record["body"].encode()
                key = record["routing_key"]
                headers = record["properties"]["application_headers"]
            result[key] = (body, headers)
    return result


def heartbeat(hostname, clock=1, timestamp=None, transport="redis", type_="worker-heartbeat",
              **fields):
    timestamp = time.time() if timestamp is None else timestamp
    body = heartbeat_body(hostname, clock, timestamp, type_=type_, **fields)
    key = type_.replace("-", ".")
    return make_message(transport, key, body, hostname)


def event(type_, hostname, clock=1, timestamp=None, transport="redis", headers=None,
          routing_key=None, **fields):
    timestamp = time.time() if timestamp is None else timestamp
    body = event_body(type_, hostname, clock, timestamp, **fields)
    return make_message(transport, routing_key or type_.replace("-", "."), body,
                        hostname, headers=headers)


def raw(routing_key, body, transport="redis", hostname=None, **kwargs):
    """A message with an arbitrary body (bytes) and properties."""
    return make_message(transport, routing_key, body, hostname, **kwargs)
