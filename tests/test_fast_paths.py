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


# -- the hostname index: hostname strs found by the bytes of a scanned body ---

def test_worker_leaves_and_rejoins(gossip, fast_prepare):
    joins, leaves = [], []
    gossip.on.node_join.add(joins.append)
    gossip.on.node_leave.add(leaves.append)
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=1))
    first = gossip.state.workers["a@x"]
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=2, type_="worker-offline"))
    assert gossip.state.workers == {} and leaves == [first]
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=3))
    again = gossip.state.workers["a@x"]
    assert again is not first and joins == [first, again]
    assert again.hostname == "a@x" and again.clock == 3 and again.alive


def test_lost_worker_rejoins(gossip, fast_prepare):
    joins = []
    gossip.on.node_join.add(joins.append)
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", freq=0.001))
    time.sleep(0.01)
    assert [w.hostname for w in gossip.state.sweep()] == ["a@x"]
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=2))
    assert list(gossip.state.workers) == ["a@x"] and len(joins) == 2


def test_table_entry_replaced_or_removed_by_user_code(gossip, fast_prepare, core):
    joins = []
    gossip.on.node_join.add(joins.append)
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=1))
    mine = core.Worker("a@x")
    gossip.state.workers["a@x"] = mine
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=2))
    assert gossip.state.workers["a@x"] is mine and mine.clock == 2 and len(joins) == 1
    del gossip.state.workers["a@x"]
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=3))
    assert gossip.state.workers["a@x"] is not mine and len(joins) == 2
    gossip.state.workers = {}
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=4))
    assert list(gossip.state.workers) == ["a@x"] and len(joins) == 3


def test_many_workers_many_rounds(gossip, fast_prepare):
    """More names than the index first holds: it grows, nobody re-joins.
    Half the messages have no hostname header (protocol 1), which would
    otherwise catch a wrong name."""
    joins = []
    gossip.on.node_join.add(joins.append)
    names = [f"w{i}@node{i % 7}" for i in range(700)]
    for clock in range(1, 4):
        for i, name in enumerate(names):
            message = wire.heartbeat(name, clock=clock)
            if i % 2:
                message.headers.clear()
            gossip.on_message(fast_prepare, message)
    assert sorted(gossip.state.workers) == sorted(names) and len(joins) == len(names)
    assert all(gossip.state.workers[name].clock == 3 for name in names)


def test_known_name_with_another_header_or_own(gossip, fast_prepare):
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=1))
    mismatch = wire.heartbeat("a@x", clock=2)
    mismatch.headers["hostname"] = "b@x"
    gossip.on_message(fast_prepare, mismatch)
    assert gossip.dropped == {"hostname_mismatch": 1}
    assert gossip.state.workers["a@x"].clock == 1
    gossip.hostname = "a@x"  # now it is us
    clock = gossip.clock.value
    gossip.on_message(fast_prepare, wire.heartbeat("a@x", clock=3))
    assert gossip.state.workers["a@x"].clock == 1 and gossip.clock.value == clock + 1


# -- the event handlers: looked up by comparing a few keys --------------------

class AnyCase(str):
    """A key that matches its name in any case, as a dict lookup asks it."""

    def __hash__(self):
        return hash(self.lower())

    def __eq__(self, other):
        return isinstance(other, str) and self.lower() == other.lower()


def test_event_handler_lookup(gossip, fast_prepare):
    seen = []
    handlers = gossip.event_handlers
    handlers["worker.heartbeat"] = seen.append  # takes it from the state
    gossip.on_message(fast_prepare, wire.heartbeat("a@x"))
    assert [event["hostname"] for event in seen] == ["a@x"] and gossip.state.workers == {}
    del handlers["worker.heartbeat"]
    for i in range(6):  # more than a few
        handlers[f"worker.custom{i}"] = seen.append
    gossip.on_message(fast_prepare, wire.event("worker-custom5", "b@x"))
    for i in range(6):
        del handlers[f"worker.custom{i}"]
    handlers[AnyCase("WORKER.Custom")] = seen.append
    handlers[7] = None
    gossip.on_message(fast_prepare, wire.event("worker-custom", "c@x"))
    gossip.on_message(fast_prepare, wire.heartbeat("d@x"))
    assert [event["hostname"] for event in seen] == ["a@x", "b@x", "c@x"]
    assert list(gossip.state.workers) == ["d@x"]


def test_text_body_that_does_not_encode_goes_through_kombu(gossip, fast_prepare):
    """A text body (py-amqp's ``auto_decode``) that is not valid Unicode
    text (a lone surrogate) is left to kombu's decoder: no raw bytes, no
    exception out of the consumer."""
    message = wire.heartbeat("a@x", transport="amqp")
    assert type(message.body) is str  # as py-amqp delivers it (gossip_fast.simulate)
    assert gossip._receiver._message_raw(message) == message.body.encode()
    message.body = message.body.replace('"a@x"', '"a\\ud800@x"').replace("a\\ud800", "a\ud800")
    assert gossip._receiver._message_raw(message) is None
    gossip.on_message(fast_prepare, message)  # must not raise
