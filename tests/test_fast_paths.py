"""The compiled core's shortcuts on the per-message path must not change what
happens.  It reads kombu's Message attributes straight from their slots when
a message class leaves them alone; classes that do not must be read as
Python would.  Every case runs on both implementations."""
import time

import pytest

from gossip_fast.simulate import heartbeat_body

from . import wire


def retyped(message, cls):
    """*message* as an instance of *cls* (a subclass of its class, built
    without calling ``__init__``, which would set the attributes)."""
    message.__class__ = cls
    return message


@pytest.mark.parametrize("transport", wire.TRANSPORTS)
def test_message_class_with_properties_is_read_through_them(gossip, fast_prepare, transport):
    other = heartbeat_body("b@x", 7, time.time())

    class Patched(type(wire.heartbeat("a@x", transport=transport))):
        body = property(lambda self: other)
        headers = property(lambda self: {"hostname": "b@x"})
        delivery_info = property(lambda self: {"routing_key": "worker.heartbeat"})

    # the plain class first, so that a compiled core has learnt its slots
    gossip.on_message(fast_prepare, wire.heartbeat("c@x", transport=transport))
    gossip.on_message(fast_prepare, retyped(wire.heartbeat("a@x", transport=transport), Patched))
    gossip.on_message(fast_prepare, wire.heartbeat("d@x", transport=transport))
    assert sorted(gossip.state.workers) == ["b@x", "c@x", "d@x"]
    assert gossip.state.workers["b@x"].clock == 7


def test_routing_key_from_a_property(gossip, fast_prepare):
    seen = []
    gossip.event_handlers["worker.custom"] = seen.append

    class Custom(type(wire.heartbeat("a@x"))):
        delivery_info = property(lambda self: {"routing_key": "worker.custom"})

    gossip.on_message(fast_prepare, retyped(wire.heartbeat("a@x"), Custom))
    assert [event["hostname"] for event in seen] == ["a@x"]
    assert gossip.state.workers == {}


def test_unset_attribute_falls_back_to_getattr(gossip, fast_prepare):
    """A class with ``__getattr__`` answers for an attribute whose slot is
    empty, as Python's lookup would ask it to."""
    other = heartbeat_body("b@x", 7, time.time())

    class Lazy(type(wire.heartbeat("a@x"))):
        def __getattr__(self, name):
            if name == "body":
                return other
            raise AttributeError(name)

    message = retyped(wire.heartbeat("a@x"), Lazy)
    del message.body
    message.headers = {"hostname": "b@x"}
    gossip.on_message(fast_prepare, message)
    assert list(gossip.state.workers) == ["b@x"]


def test_message_without_routing_key_is_counted(gossip, fast_prepare):
    message = wire.heartbeat("a@x")
    del message.delivery_info
    gossip.on_message(fast_prepare, message)
    message = wire.heartbeat("a@x")
    message.delivery_info = None
    gossip.on_message(fast_prepare, message)
    assert gossip.dropped == {"bad_message": 2} and gossip.state.workers == {}


def test_empty_body_slot_raises_like_attribute_access(gossip, fast_prepare):
    message = wire.heartbeat("a@x")
    del message.body
    with pytest.raises(AttributeError):
        gossip.on_message(fast_prepare, message)
