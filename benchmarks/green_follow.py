"""Does a worker on a green pool follow the gossip stream on RabbitMQ?

``python -m benchmarks.green_follow POOL [RATE] [SECONDS]`` (POOL: solo,
gevent, eventlet, or ``kombu``: a bare kombu consumer under gevent's
monkey-patching instead of a worker).  Starts its own RabbitMQ on loopback
(tests/brokers.py), a plain ``celery worker -P POOL -c 1`` of a one-line
app (stock Celery: no gossip_fast), and the cluster benchmark's publisher
at RATE heartbeats/s (default 50: a 100-worker cluster) for SECONDS
(default 30).  Prints how far behind the worker got: Celery's drift warning
("Current drift is N seconds") appears once a heartbeat is applied more
than 16 s after it was sent.  For the bare consumer, the events it took a
second.  With ``GREEN_FOLLOW_BROKER_HEARTBEAT=0`` the worker's app sets
``broker_heartbeat = 0``: Celery's loop for the green pools then skips the
0.1 s drain of the event dispatcher's connection it makes after every
message it takes (``_quick_drain`` in ``celery.worker.loops.synloop``).
README ("On gevent") quotes it.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = ("import os\nfrom celery import Celery\napp = Celery('proj', broker=os.environ['GREEN_FOLLOW_URL'])\n"
       "if os.environ.get('GREEN_FOLLOW_BROKER_HEARTBEAT'):\n"
       "    app.conf.broker_heartbeat = float(os.environ['GREEN_FOLLOW_BROKER_HEARTBEAT'])\n")


def publisher(url, rate):
    pub = subprocess.Popen([sys.executable, '-m', 'benchmarks.cluster.publisher', url],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    pub.stdin.write(json.dumps({'cmd': 'rate', 'rate': rate, 'size': 2 * rate,
                                'offset': 0, 'stride': 1}) + '\n')
    pub.stdin.flush()
    return pub


def follow_worker(url, pool, rate, seconds):
    folder = tempfile.mkdtemp(prefix='green-follow-')
    with open(os.path.join(folder, 'proj.py'), 'w') as f:
        f.write(APP)
    log_path = os.path.join(folder, 'worker.log')
    env = dict(os.environ, GREEN_FOLLOW_URL=url, PYTHONPATH=folder)
    with open(log_path, 'w') as log:
        worker = subprocess.Popen([sys.executable, '-m', 'celery', '-A', 'proj', 'worker', '-P', pool,
                                   '-c', '1', '-l', 'info', '-n', f'green-{pool}@%h'],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    time.sleep(8)  # started and connected
    pub = publisher(url, rate)
    time.sleep(seconds)
    pub.kill()
    worker.terminate()
    worker.wait(30)
    with open(log_path) as f:
        drifts = [int(d) for d in re.findall(r'Current drift is (\d+) seconds', f.read())]
    behind = f'{max(drifts)} s behind at most' if drifts else 'never 16 s behind'
    print(f'celery worker -P {pool}: {rate} heartbeats/s for {seconds} s: {len(drifts)} drift '
          f'warnings, {behind} (log: {log_path})')


def follow_kombu(url, rate, seconds):
    import gevent.monkey
    gevent.monkey.patch_all()
    from kombu import Connection, Exchange, Queue
    got = []
    with Connection(url) as conn:
        queue = Queue('green-follow', Exchange('celeryev', 'topic'), 'worker.#', auto_delete=True)
        consumer = conn.Consumer([queue], callbacks=[lambda body, message: got.append(1)], no_ack=True)
        consumer.consume()
        pub = publisher(url, rate)
        end = time.time() + seconds
        while time.time() < end:
            try:
                conn.drain_events(timeout=1.0)
            except TimeoutError:
                pass
        pub.kill()
    print(f'kombu consumer under gevent: {rate} heartbeats/s for {seconds} s: '
          f'{len(got) / seconds:.1f} events/s taken')


def main(argv):
    pool = argv[0] if argv else 'gevent'
    rate = int(argv[1]) if len(argv) > 1 else 50
    seconds = float(argv[2]) if len(argv) > 2 else 30.0
    sys.path.insert(0, ROOT)
    from tests.brokers import RabbitMQServer
    server = RabbitMQServer().start()
    try:
        if pool == 'kombu':
            follow_kombu(server.url, rate, seconds)
        else:
            follow_worker(server.url, pool, rate, seconds)
    finally:
        server.stop()


if __name__ == '__main__':
    main(sys.argv[1:])
