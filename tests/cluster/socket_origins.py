"""Where each open socket of a worker was created (imported by app.py when
``CLUSTER_SOCKET_ORIGINS`` names a folder).

On the gevent pool Celery's own connections leak a socket on some broker
restarts (the event dispatcher's reconnect on publish, the loop's
``heartbeat_check``), so a worker's count of open descriptors cannot say
whether gossip_fast's reader leaked one there.  This says which code made
each socket that is still open: every socket object gets the stack of its
creation, and once a second the open ones are written to ``<pid>.json``
in the folder ``CLUSTER_SOCKET_ORIGINS`` names (JSON: ``[{"fd": ...,
"gossip_fast": true if code of the gossip_fast package made it, "stack":
[its innermost frames]}]``),
replaced atomically.  Sockets are held by weak references: one that nobody
holds any more is not kept open by this.
"""
import importlib.util
import json
import os
import socket
import threading
import time
import traceback
import weakref

INTERVAL = 1.0


def install(folder):
    # the package's folder, found without importing it (a stock worker does not)
    [package_dir] = importlib.util.find_spec('gossip_fast').submodule_search_locations
    package_dir = os.path.join(os.path.realpath(package_dir), '')
    path = os.path.join(folder, f'{os.getpid()}.json')
    origins = {}
    live = weakref.WeakValueDictionary()
    original_init = socket.socket.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        live[id(self)] = self
        stack = traceback.extract_stack(limit=40)[:-1]
        ours = any(os.path.realpath(frame.filename).startswith(package_dir) for frame in stack)
        # for a failure's message: the innermost frames, innermost first
        where = [f'{os.path.basename(f.filename)}:{f.lineno}:{f.name}' for f in stack[::-1][:24]]
        origins[id(self)] = {'gossip_fast': ours, 'stack': where}

    socket.socket.__init__ = init

    def write():
        while True:
            time.sleep(INTERVAL)  # a greenlet's sleep on gevent and eventlet
            found = []
            for key, sock in list(live.items()):
                fd = sock.fileno()
                if fd != -1:
                    found.append(dict(origins.get(key, {'gossip_fast': False}), fd=fd))
            with open(path + '.tmp', 'w') as f:
                json.dump(found, f)
            os.replace(path + '.tmp', path)

    threading.Thread(target=write, name='socket-origins', daemon=True).start()


def read(folder, pid):
    """The open sockets of process *pid*, as it last wrote them."""
    with open(os.path.join(folder, f'{pid}.json')) as f:
        return json.load(f)
