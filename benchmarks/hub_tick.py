"""What one turn of kombu's event loop costs when nothing has to wake up.

``python benchmarks/hub_tick.py [BROKER_URL]`` (default
``redis://127.0.0.1:6379/0``): a kombu ``Hub`` with the broker's transport
registered on it and a consumer on a queue, as a worker's main connection
has, then, back to back and warm (no sleep between turns):

* the transport's ``on_tick`` callbacks (on Redis: the poller's restart,
  which registers its sockets with the hub again);
* what else the hub's loop does in a turn where a timer is due (a drain's
  turn, without the drain): fire the timer, run the callbacks, poll the
  sockets without waiting.  (The loop itself would wait in the poll, as
  ``fire_timers`` never returns a delay of 0.)

docs/receive-path.md compares them with what a turn costs a worker that
sleeps between turns, where the wake-up itself is most of the cost.
"""
import sys
import time

from kombu import Connection, Consumer, Exchange, Queue
from kombu.asynchronous import Hub

TURNS = 20000


def per_turn(function, turns=TURNS):
    function()  # warm
    best = float('inf')
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(turns):
            function()
        best = min(best, (time.perf_counter() - started) / turns)
    return best * 1e6


def main(url):
    hub = Hub()
    connection = Connection(url)
    connection.transport.register_with_event_loop(connection.connection, hub)
    queue = Queue('hub-tick', Exchange('hub-tick'), 'hub-tick', auto_delete=True)
    consumer = Consumer(connection.default_channel, [queue], callbacks=[lambda body, message: None])
    consumer.consume()
    ticks = list(hub.on_tick)

    def tick():
        for callback in ticks:
            callback()

    tick()  # the transport registers its sockets on its first tick

    hub.call_repeatedly(0.0, lambda: None)  # a timer due at every turn
    fire_timers, poll = hub.fire_timers, hub.poller.poll

    def turn():
        fire_timers()
        tick()
        poll(0)
    try:
        print(f'{connection.transport_cls} transport, {len(ticks)} on_tick callback(s), '
              f'{len(hub.readers)} reader(s), best of 5 x {TURNS:,} turns, warm:')
        print(f'  on_tick callbacks:               {per_turn(tick):6.1f} us a turn')
        print(f'  timers + callbacks + poll(0):    {per_turn(turn):6.1f} us a turn')
    finally:
        consumer.cancel()
        hub.close()
        connection.release()


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'redis://127.0.0.1:6379/0')
