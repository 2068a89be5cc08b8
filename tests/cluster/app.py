"""The Celery app of the cluster tests' workers.

Run as ``celery -A app worker`` with ``tests/cluster`` on ``PYTHONPATH``.
Configured from the environment:

``CLUSTER_BROKER_URL``
    the broker (``redis://...`` or ``amqp://...``).
``CLUSTER_GOSSIP``
    ``fast`` (default): ``gossip_fast.install(app)``; ``consumer``: only
    ``worker_consumer = 'gossip_fast:Consumer'`` (the no-code-change route:
    this module does not import gossip_fast); ``stock``: Celery's own
    Gossip step.  ``GOSSIP_FAST_NO_EXTENSIONS=1`` picks gossip_fast's
    pure-Python fallback, as for any project.
``CLUSTER_EVENTS_DIR``
    folder for the event files: each worker appends JSON lines to
    ``<hostname>.jsonl`` there.
``CLUSTER_DIGEST``
    ``1``: ``app.conf.gossip_fast_digest = True`` (gossip_fast's digest mode,
    docs/digest-mode.md).
``CLUSTER_REMOTE_CONTROL``
    ``0``: no remote control (``worker_enable_remote_control = False``), so
    that what a test counts of the worker's sockets is not Celery's pidbox.
``CLUSTER_SOCKET_ORIGINS``
    a file: which code made each open socket of the worker, written once a
    second (``socket_origins.py``).

The :class:`ClusterStep` below is a user bootstep written as in Celery's
"Extensions and Bootsteps" guide: it requires the *stock* Gossip step by
name and adds handlers to ``c.gossip.on.node_join/node_leave/node_lost``.
It also registers the election topic ``record``, whose handler records the
win.  Every record has ``worker`` (our hostname), ``event``, ``time``
(``time.time()``) and, for membership events, ``peer``.
"""
import json
import os
import time

from celery import Celery, bootsteps

BROKER_URL = os.environ.get('CLUSTER_BROKER_URL', 'redis://127.0.0.1:6379/0')
GOSSIP = os.environ.get('CLUSTER_GOSSIP', 'fast')
EVENTS_DIR = os.environ.get('CLUSTER_EVENTS_DIR') or os.getcwd()

app = Celery('cluster_app', broker=BROKER_URL)
app.conf.update(
    accept_content=['json'],
    task_serializer='json',
    result_serializer='json',
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)

if os.environ.get('CLUSTER_REMOTE_CONTROL') == '0':
    app.conf.worker_enable_remote_control = False

if os.environ.get('CLUSTER_DIGEST') == '1':
    app.conf.gossip_fast_digest = True

if os.environ.get('CLUSTER_SOCKET_ORIGINS'):
    import socket_origins
    socket_origins.install(os.environ['CLUSTER_SOCKET_ORIGINS'])

if GOSSIP == 'fast':
    import gossip_fast
    gossip_fast.install(app)
elif GOSSIP == 'consumer':
    app.conf.worker_consumer = 'gossip_fast:Consumer'
elif GOSSIP != 'stock':
    raise RuntimeError(
        f'CLUSTER_GOSSIP must be "fast", "consumer" or "stock", not {GOSSIP!r}')


def _gossip_steps(c):
    """Names of the steps of this consumer that are a Gossip step."""
    from celery.worker.consumer.gossip import Gossip as StockGossip
    names = []
    for _name, step in c.blueprint.steps.items():
        if isinstance(step, StockGossip) or getattr(step, 'label', None) == 'Gossip':
            names.append(f'{type(step).__module__}.{type(step).__name__}')
    return names


class ClusterStep(bootsteps.StartStopStep):
    """Records what gossip tells it (as in Celery's extending guide)."""

    requires = {'celery.worker.consumer.gossip:Gossip'}

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        self.c = c
        self.path = None

    def start(self, c):
        self.c = c
        self.path = os.path.join(EVENTS_DIR, f'{c.hostname}.jsonl')
        c.gossip.on.node_join.add(self.on_node_join)
        c.gossip.on.node_leave.add(self.on_node_leave)
        c.gossip.on.node_lost.add(self.on_node_lost)
        c.gossip.election_handlers['record'] = self.on_elected
        gossip = c.gossip
        try:
            import gossip_fast
            implementation = gossip_fast.IMPLEMENTATION
        except ImportError:  # pragma: no cover - stock-only environment
            implementation = None
        self.record(
            'started',
            gossip_module=type(gossip).__module__,
            gossip_class=type(gossip).__name__,
            gossip_enabled=gossip.enabled,
            gossip_steps=_gossip_steps(c),
            implementation=(implementation
                            if type(gossip).__module__.startswith('gossip_fast')
                            else 'stock'),
            pid=os.getpid(),
            full_hostname=gossip.full_hostname,
        )

    def cluster_size(self):
        return len(list(self.c.gossip.state.alive_workers()))

    def on_node_join(self, worker):
        # no cluster_size() here: it visits every worker, and the soak's
        # 10,000 joins in 2 s would make the warm-up O(N^2) work (seconds of
        # CPU on a 2-core machine that the broker needs too)
        self.record('join', peer=worker.hostname)

    def on_node_leave(self, worker):
        self.record('leave', peer=worker.hostname, alive=self.cluster_size())

    def on_node_lost(self, worker):
        self.record('lost', peer=worker.hostname, alive=self.cluster_size())

    def on_elected(self, action):
        self.record('elected', action=action)

    def record(self, event, **fields):
        line = json.dumps(dict(worker=self.c.hostname, event=event,
                               time=time.time(), **fields), default=repr)
        # One write of a whole line on an O_APPEND file: never interleaved.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + '\n').encode())
        finally:
            os.close(fd)


app.steps['consumer'].add(ClusterStep)
