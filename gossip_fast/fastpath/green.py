"""The fast reader in a greenlet of its own: gevent and eventlet workers.

Their workers have no event-loop hub: Celery's green loop takes one message
at a time from the consumer's connection and, after each, waits up to
0.1 s on the event dispatcher's connection (``_quick_drain`` in
``celery.worker.loops.synloop``), which paces gossip taken there (README,
"On gevent").  :class:`GreenDriver` takes gossip out of that loop: one
greenlet waits on the reader's socket (cooperatively, as every green socket
does) and drains as :class:`~.pacing.Pacing` says, the same schedule as on
the hub: at once while events arrive seldom, ``max_delay`` apart once they
arrive more often.  A greenlet runs until it waits, and a drain (at most
the reader's ``budget``) waits on nothing but what user handlers may wait
on, so other greenlets never see a batch half-applied, as with kombu's
consumer callbacks.
"""
import socket

from celery.utils.log import get_logger
from kombu.utils.compat import detect_environment

from .pacing import POLLING, STOPPED, WATCHING, Pacing

__all__ = ('GreenDriver', 'green_library', 'GREEN')

logger = get_logger(__name__)

#: What :func:`kombu.utils.compat.detect_environment` calls green.
GREEN = ('gevent', 'eventlet')


class _Gevent:
    """The calls the driver needs, from gevent."""

    def __init__(self):
        import gevent
        from gevent.socket import wait_read
        self.spawn, self.sleep, self._wait_read = gevent.spawn, gevent.sleep, wait_read
        self.getcurrent = gevent.getcurrent

    def wait_readable(self, fd, timeout):
        try:
            self._wait_read(fd, timeout, socket.timeout)
        except socket.timeout:
            return False
        return True

    def kill(self, greenlet):
        greenlet.kill(block=True, timeout=5.0)


class _Eventlet:
    """The same calls, from eventlet."""

    def __init__(self):
        import eventlet
        from eventlet.greenthread import getcurrent
        from eventlet.hubs import trampoline
        self.spawn, self.sleep, self._trampoline = eventlet.spawn, eventlet.sleep, trampoline
        self.getcurrent = getcurrent

    def wait_readable(self, fd, timeout):
        try:
            self._trampoline(fd, read=True, timeout=timeout, timeout_exc=socket.timeout)
        except socket.timeout:
            return False
        return True

    def kill(self, greenthread):
        greenthread.kill()


def green_library():
    """The green library this process runs on (``'gevent'``,
    ``'eventlet'``), as kombu and Celery detect it, or None."""
    environment = detect_environment()
    return environment if environment in GREEN else None


class GreenDriver(Pacing):
    """Drains *reader* from a greenlet of *library* (``'gevent'`` or
    ``'eventlet'``)."""

    def __init__(self, reader, library):
        super().__init__(reader)
        self.green = _Gevent() if library == 'gevent' else _Eventlet()
        self.library = library
        self._greenlet = None

    def start(self, retry=False):
        """Connect the reader (see :meth:`Pacing.start_reader`), then drain
        it from a new greenlet."""
        first = self.start_reader(retry)
        self._greenlet = self.green.spawn(self._run, first)

    def stop(self):
        """End the greenlet, then stop the reader (closes its socket)."""
        self.mode = STOPPED
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None and greenlet is not self.green.getcurrent():
            self.green.kill(greenlet)  # it is waiting: it ends there
        self.reader.stop()
        self.reader.watcher = None

    @property
    def where(self):
        """Said in the start line: where drains run."""
        return f'{self.library} greenlet'

    def stats(self):
        return dict(super().stats(), greenlet=self.library)

    # the greenlet waits on whatever socket the reader has when it waits
    def socket_ready(self, sock):
        pass

    def socket_closing(self, sock):
        pass

    def _run(self, delay):
        while self.mode != STOPPED:
            try:
                delay = self._wait_and_drain(delay)
            except Exception as exc:  # pylint: disable=broad-except
                # never a busy loop, never a dead reader
                logger.exception('gossip_fast: error in the %s reader greenlet: %r',
                                 self.reader.name, exc)
                delay = self.reader.max_delay

    def _wait_and_drain(self, delay):
        """Wait as *delay* says (None: for the socket), drain; returns the
        next delay."""
        if delay is not None:
            self.mode = POLLING
            self.green.sleep(delay)
            return self.on_timer()
        self.mode = WATCHING
        sock = self.reader.sock
        wait = self.until_housekeeping()
        if sock is None:  # stopped under us; or no socket without a retry time
            self.green.sleep(wait or self.reader.max_delay)
            return self.on_housekeeping()
        if wait > 0 and self.green.wait_readable(sock.fileno(), wait):
            return self.on_readable()
        return self.on_housekeeping()
