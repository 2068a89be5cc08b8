"""Elections among the workers of a cluster (the Gossip step's part).

``Gossip.election(id, topic, action)`` sends ``worker-elect``; every worker
queues ``(clock, 'host.pid', topic, action)`` for each request it receives
and acknowledges it (``worker-elect-ack``).  The lowest ``(clock,
'host.pid')`` wins, and the winner runs ``election_handlers[topic](action)``.

Stock decides as soon as it has as many acks as alive workers, and with a
single request crashes (kombu's ``sort_heap``).  Here a worker decides once
it has acks from as many hosts as there are alive workers **and** a request
from every alive worker and from itself, so every participant decides on
the same set of requests: exactly one winner.  Duplicate acks count once; a
pending election expires after :data:`ELECTION_TIMEOUT` seconds.

Celery's tests and users patch ``logger`` and ``info`` of the module that
defines the step (CONTRACT 11): they are looked up there when called.
"""
from operator import itemgetter
from time import monotonic

from .badinput import step_log as _log

__all__ = ('Elections', 'ELECTION_TIMEOUT')

#: A pending election that has not completed after this many seconds is
#: dropped (a peer died mid-election, or a request came after the result).
ELECTION_TIMEOUT = 30.0


class Elections:
    """The election members of the Gossip step (a mixin: the step's
    ``state``, ``dispatcher``, ``hostname``, ``full_hostname``,
    ``_receiver`` and ``_reject`` are used)."""

    _cons_stamp_fields = itemgetter(
        'id', 'clock', 'hostname', 'pid', 'topic', 'action', 'cver',
    )

    def _init_elections(self):
        self._election_started = {}

    def election(self, id, topic, action=None):
        self.consensus_replies[id] = []
        self._election_started.setdefault(id, monotonic())
        self.elections['started'] += 1
        self.dispatcher.send(
            'worker-elect',
            id=id, topic=topic, action=action, cver=1,
        )

    def call_task(self, task):
        try:
            self.app.signature(task).apply_async()
        except Exception as exc:  # pylint: disable=broad-except
            _log().logger.exception('Could not call task: %r', exc)

    def on_elect(self, event):
        try:
            (id_, clock, hostname, pid,
             topic, action, _) = self._cons_stamp_fields(event)
        except KeyError as exc:
            return self._reject('bad_election', event.get('hostname'),
                                f'election request missing field {exc}')
        if (type(clock) is not int or type(hostname) is not str
                or not hostname or type(topic) is not str
                or not isinstance(id_, (str, int))):
            return self._reject('bad_election', hostname,
                                {'id': id_, 'clock': clock, 'topic': topic})
        self._election_started.setdefault(id_, monotonic())
        self.consensus_requests[id_].append(
            (clock, f'{hostname}.{pid}', topic, action))
        self.dispatcher.send('worker-elect-ack', id=id_)

    def on_elect_ack(self, event):
        id = event.get('id') if isinstance(event, dict) else None
        try:
            replies = self.consensus_replies[id]
        except (KeyError, TypeError):
            return  # not for us
        hostname = event.get('hostname')
        if hostname not in replies:  # duplicate acks count once
            replies.append(hostname)
        self._maybe_decide(id)

    def _election_ready(self, id, replies):
        """Acks from as many hosts as there are alive workers, and a request
        from every alive worker and from us: every participant then decides
        on the same set of requests, so exactly one of them wins."""
        state = self.state
        if (state is not getattr(self._receiver, 'state', None)
                and not getattr(state, 'digest_view', False)):
            # a state swapped in by the user: stock's rule, acks counted once
            return len(replies) >= len(set(state.alive_workers()))
        if len(replies) < state.alive_count():
            return False
        # request ids are 'hostname.pid'; pids have no dots
        requesters = {request[1].rpartition('.')[0]
                      for request in self.consensus_requests.get(id, ())}
        if self.hostname not in requesters:
            return False
        return all(worker.hostname in requesters for worker in state.alive_workers())

    def _maybe_decide(self, id):
        replies = self.consensus_replies.get(id)
        if replies is None or not self._election_ready(id, replies):
            return
        requests = self.consensus_requests.get(id)
        if requests:
            _, leader, topic, action = min(
                requests, key=lambda request: (request[0], request[1]))
            self.elections['decided'] += 1
            log = _log()
            if leader == self.full_hostname:
                log.info('I won the election %r', id)
                self.elections['won'] += 1
                try:
                    handler = self.election_handlers[topic]
                except KeyError:
                    log.logger.exception('Unknown election topic %r', topic)
                else:
                    self._call_handlers((handler,), action)
            else:
                log.info('node %s elected for %r', leader, id)
        self._forget_election(id)

    def _forget_election(self, id):
        self.consensus_requests.pop(id, None)
        self.consensus_replies.pop(id, None)
        self._election_started.pop(id, None)

    def expire_elections(self, now):
        """Decide or drop pending elections (from the periodic sweep)."""
        for id, started in list(self._election_started.items()):
            if id in self.consensus_replies:
                self._maybe_decide(id)  # a participant may have died
            if id in self._election_started and now - started > ELECTION_TIMEOUT:
                if id in self.consensus_replies:
                    _log().logger.warning('election %r timed out without a result', id)
                    self.elections['timed_out'] += 1
                self._forget_election(id)
