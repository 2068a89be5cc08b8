"""The fast reader in a greenlet, in a process of its own (run by
tests/test_green_driver.py): ``python -m tests.green_child LIBRARY URL CORE``.

Green libraries must patch the process before anything imports ``socket``,
as Celery's ``-P gevent`` / ``-P eventlet`` do, so this cannot run in the
pytest process.  Our step (core CORE: ``cython`` or ``python``) starts on a
real consumer connection to URL with no hub, as in a green worker, and
peers publish real events (Celery's own dispatchers) from the main
greenlet.  Prints one JSON object of what it saw; the test judges it.
"""
import sys

LIBRARY, URL, CORE = sys.argv[1:4]
if LIBRARY == 'gevent':
    from gevent import monkey
    monkey.patch_all()
    import gevent
    sleep, getcurrent = gevent.sleep, gevent.getcurrent
else:
    import eventlet
    eventlet.monkey_patch()
    from eventlet.greenthread import getcurrent
    sleep = eventlet.sleep

import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

from celery import Celery  # noqa: E402
from kombu import Connection  # noqa: E402
from kombu.asynchronous.timer import Timer  # noqa: E402

from gossip_fast import fastpath  # noqa: E402
from gossip_fast.simulate import SimulatedConsumer  # noqa: E402
from tests.conftest import gossip_class  # noqa: E402

PEERS = 10


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    core = importlib.import_module({'cython': 'gossip_fast._core',
                                    'python': 'gossip_fast._core_py'}[CORE])
    cls = gossip_class(core)
    app = Celery('t', broker=URL, set_as_current=False)
    # a green worker's consumer: no hub (its timer is not run here)
    consumer = SimulatedConsumer(app, hostname='green@test', timer=Timer(), hub=None)
    gossip = cls(consumer)
    gossip.dispatcher = consumer.event_dispatcher
    connection = Connection(URL)
    channel = connection.channel()
    out = {'consumers': len(gossip.get_consumers(channel)),
           'driver': type(gossip._driver).__name__, 'why': gossip.receive_fallback}
    driver, reader = gossip._driver, gossip._reader
    peer = Celery('peer', broker=URL, set_as_current=False)
    producer = peer.connection_for_write()
    dispatchers = [peer.events.Dispatcher(producer, hostname=f'p{i}@h', enabled=True)
                   for i in range(PEERS)]

    def publish(seconds, rate):
        sent, began = 0, time.monotonic()
        while time.monotonic() - began < seconds:
            for dispatcher in dispatchers:
                dispatcher.send('worker-heartbeat', freq=2.0, active=0, processed=sent)
                sent += 1
            sleep(PEERS / rate)
        return sent

    def settle(expected, timeout=10.0):
        deadline = time.monotonic() + timeout
        while reader.received < expected and time.monotonic() < deadline:
            sleep(0.05)

    # one event: drained as it arrives (watching), no added delay
    began = time.monotonic()
    dispatchers[0].send('worker-heartbeat', freq=2.0, active=0, processed=0)
    settle(1)
    out['first_latency'] = time.monotonic() - began
    out['after_first'] = dict(driver.wakeups)
    # sustained traffic: batched, max_delay apart
    before = dict(driver.wakeups)
    seconds = 2.0
    sent = 1 + publish(seconds, 200)
    settle(sent)
    out.update(sent=sent, received=reader.received, seconds=seconds,
               timer=driver.wakeups['timer'] - before['timer'],
               readable=driver.wakeups['readable'] - before['readable'],
               alive=sorted(w.hostname for w in gossip.state.alive_workers()))
    # idle: nothing wakes it
    sleep(0.3)
    idle_before = dict(driver.wakeups)
    sleep(1.0)
    out['idle_wakeups'] = {k: driver.wakeups[k] - idle_before[k] for k in idle_before}
    out['mode_idle'] = driver.mode
    # the connection lost under it: it reconnects from its greenlet
    import socket
    reader.sock.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 15
    while reader.reconnects == 0 and time.monotonic() < deadline:
        publish(0.05, 200)  # the drain that finds the connection gone
    sleep(0.5)  # resubscribed
    received = reader.received
    more = publish(0.5, 200)
    settle(received + more)
    out.update(reconnects=reader.reconnects, errors=reader.errors,
               after_reconnect=reader.received - received, sent_after_reconnect=more)
    # stop from the main greenlet: the greenlet ends, the socket closes
    sock, greenlet = reader.sock, driver._greenlet
    out['stats'] = gossip.stats()['receive']
    gossip._stop_reader()
    out.update(greenlet_dead=bool(greenlet.dead), socket_closed=sock.fileno() == -1,
               reader_sock=reader.sock is None, not_main=greenlet is not getcurrent())
    fastpath.close_channel(channel)
    connection.release()
    producer.release()
    print(json.dumps(out))


if __name__ == '__main__':
    main()
