"""What a worker tells its operator (gossip_fast/observability.py): the start
line logged once the consumer connects, and ``gossip_stats`` on every route,
enabled or not."""
import subprocess
import sys
import types

import pytest
from kombu import Connection

import gossip_fast
from gossip_fast import bootstep, fastpath, implementation, observability

from .conftest import gossip_class, make_gossip


def fake_channel(driver):
    """A channel whose transport says *driver* (what reader_for looks at)."""
    transport = types.SimpleNamespace(driver_type=driver)
    client = types.SimpleNamespace(transport=transport)
    return types.SimpleNamespace(connection=types.SimpleNamespace(client=client))


class FakeReader:
    def __init__(self, name='redis', max_delay=0.1):
        self.name, self.max_delay = name, max_delay

    def stats(self):
        return {'path': self.name, 'max_delay': self.max_delay}


def connected(gossip, driver, reader=None, log=None):
    """What ``get_consumers`` does for the start line: the fast path chosen
    (a fake *reader*), or kombu's consumer with the reason the fast path
    gives for a channel of transport *driver* (in a worker with a hub)."""
    if reader is not None:
        gossip._reader = reader
        gossip._driver = types.SimpleNamespace(reader=reader, stats=dict)
        gossip.receive_fallback = None
    else:
        gossip._reader = gossip._driver = None
        gossip.receive_fallback = fastpath.select(gossip.app, fake_channel(driver),
                                                  hub=object())[1]
    if log is not None:
        observability.announce(gossip, log)


class Lines(list):
    """What was logged through :meth:`log` (``info``'s signature), formatted."""

    def log(self, fmt, *args):
        self.append(fmt % args)


@pytest.fixture
def lines():
    return Lines()


@pytest.fixture(autouse=True)
def auto_receive(monkeypatch):
    # the suite may run with GOSSIP_FAST_RECEIVE set; these tests choose it
    monkeypatch.delenv('GOSSIP_FAST_RECEIVE', raising=False)


def expected_core(core):
    if core.__name__.endswith('_py'):
        return 'core python ('  # the reason follows
    return 'core cython,'


# -- the start line ------------------------------------------------------------


def test_start_line_of_the_fast_reader(gossip, core, lines):
    connected(gossip, 'redis', FakeReader('redis', 0.1), lines.log)
    [line] = lines
    assert line.startswith(f'gossip_fast {gossip_fast.__version__}: ')
    assert expected_core(core) in line
    assert line.endswith('receive redis (batched, max delay 0.1 s)')


def test_start_line_once_per_step_and_again_only_if_the_path_changes(gossip, lines):
    for _ in range(3):  # consumer restarts after broker reconnects
        connected(gossip, 'amqp', FakeReader('amqp', 0.25), lines.log)
    assert len(lines) == 1 and lines[0].endswith('receive amqp (batched, max delay 0.25 s)')
    # the fast reader did not come back after a restart: what fastpath.start
    # records then
    gossip._reader = gossip._driver = None
    gossip.receive_fallback = ("the amqp fast reader failed to start: "
                               "ConnectionRefusedError(111, 'Connection refused')")
    observability.announce(gossip, lines.log)
    assert len(lines) == 2
    assert lines[1].startswith('gossip_fast: receive path changed after a consumer '
                               'restart: now kombu (the amqp fast reader failed to start')
    assert lines[1].endswith('(was amqp)')
    observability.announce(gossip, lines.log)
    assert len(lines) == 2


def test_another_step_has_its_own_line(GossipClass, app, lines):
    for pid in (1, 2):
        gossip = make_gossip(GossipClass, app, pid=pid)
        connected(gossip, 'sqs', log=lines.log)
    assert len(lines) == 2


@pytest.mark.parametrize('how, why', [
    ('env', 'classic mode: GOSSIP_FAST_RECEIVE=classic'),
    ('conf', "classic mode: gossip_fast_receive = 'classic'"),
])
def test_kombu_path_says_classic_mode(gossip, lines, monkeypatch, how, why):
    if how == 'env':
        monkeypatch.setenv('GOSSIP_FAST_RECEIVE', 'classic')
    else:
        gossip.app.conf.gossip_fast_receive = 'classic'
    connected(gossip, 'redis', log=lines.log)
    assert lines[0].endswith(f'receive kombu ({why}; no batching delay)')
    assert gossip.stats()['receive'] == {'path': 'kombu', 'why': why}


def test_kombu_path_says_the_transport_has_no_reader(gossip, lines):
    connected(gossip, 'sqs', log=lines.log)
    assert lines[0].endswith("receive kombu (no fast reader for the 'sqs' transport; "
                             "no batching delay)")


def test_kombu_path_without_a_hub_or_greenlets(gossip, lines):
    # no hub and no green library (this process is not monkey-patched):
    # nothing can drive the reader (the green pools: tests/test_green_driver.py)
    gossip._reader = gossip._driver = None
    gossip.receive_fallback = fastpath.select(gossip.app, fake_channel('redis'), hub=None)[1]
    observability.announce(gossip, lines.log)
    assert lines[0].endswith('receive kombu (no event loop in this worker and no green '
                             'library: kombu wakes on data; no batching delay)'), lines


def test_kombu_path_says_which_library_is_missing(gossip, lines, monkeypatch):
    # redis-py missing (celery[redis] not installed): the reader cannot load
    monkeypatch.setitem(sys.modules, 'gossip_fast.fastpath.redis', None)
    connected(gossip, 'redis', log=lines.log)
    assert 'receive kombu (the redis fast reader cannot load: ' in lines[0]
    assert 'gossip_fast.fastpath.redis' in lines[0]


def test_get_consumers_logs_the_line_through_the_bootstep_info(gossip, monkeypatch):
    """The line comes from the step's module (its patchable ``info``), when
    the consumer connects: here on kombu's memory transport (no fast reader)."""
    seen = []
    monkeypatch.setattr(bootstep, 'info', lambda fmt, *args: seen.append(fmt % args))
    with Connection('memory://') as conn:
        gossip.timer = type('T', (), {'call_repeatedly': lambda s, *a: None})()
        gossip.get_consumers(conn.channel())
        gossip.get_consumers(conn.channel())  # a consumer restart: no second line
    assert len(seen) == 1, seen
    assert seen[0].startswith(f'gossip_fast {gossip_fast.__version__}: core ')
    # why kombu: no fast reader for 'memory' (or no event loop here, where the
    # fast path needs one); the line and gossip_stats say the same
    receive = gossip.stats()['receive']
    assert receive['path'] == 'kombu' and receive['why'], receive
    assert seen[0].endswith(f"receive kombu ({receive['why']}; no batching delay)")


# -- why the core is what it is --------------------------------------------------


def test_core_info_of_the_compiled_core(GossipClass, core, app):
    gossip = make_gossip(GossipClass, app)
    name, why = observability.core_info(gossip)
    if core.__name__.endswith('_py'):
        assert name == 'python' and why  # a reason is always given
    else:
        assert (name, why) == ('cython', None)


@pytest.mark.parametrize('error, why', [
    (ImportError("No module named 'gossip_fast._core'"),
     "compiled core unavailable: No module named 'gossip_fast._core'"),
    (None, 'GOSSIP_FAST_NO_EXTENSIONS is set'),
])
def test_core_info_says_why_the_fallback_runs(app, monkeypatch, error, why):
    from gossip_fast import _core_py
    monkeypatch.setattr(implementation, 'core', _core_py)
    monkeypatch.setattr(implementation, 'EXTENSION_ERROR', error)
    monkeypatch.setattr(observability, '_unbuilt_checkout', lambda: None)  # installed
    gossip = make_gossip(gossip_class(_core_py), app)
    assert observability.core_info(gossip) == ('python', why)
    assert observability.start_line(gossip, 'kombu', 'x').startswith(
        f'gossip_fast {gossip_fast.__version__}: core python ({why}), receive kombu')


def test_core_info_points_at_an_unbuilt_checkout(app, monkeypatch, tmp_path):
    """``pip install .`` and then a worker started inside the clone: the
    clone's gossip_fast (no compiled core) hides the installed one."""
    from gossip_fast import _core_py
    checkout = tmp_path / 'clone'
    (checkout / 'src').mkdir(parents=True)
    (checkout / 'src' / '_core.pyx').write_text('')
    (checkout / 'gossip_fast').mkdir()
    monkeypatch.setattr(implementation, '__file__',
                        str(checkout / 'gossip_fast' / 'implementation.py'))
    monkeypatch.setattr(implementation, 'core', _core_py)
    monkeypatch.setattr(implementation, 'EXTENSION_ERROR', ImportError('no _core'))
    name, why = observability.core_info(make_gossip(gossip_class(_core_py), app))
    assert name == 'python'
    assert why == (f'compiled core unavailable: no _core; gossip_fast was imported from '
                   f'the source checkout {checkout}, where it is not built: start the '
                   'worker from another folder, or install with pip install -e .')


# -- gossip_stats ----------------------------------------------------------------------


ENABLED_KEYS = {'version', 'implementation', 'enabled', 'clock', 'events', 'receive',
                'dropped', 'sanitized', 'joins', 'leaves', 'losses', 'elections',
                'sweeps_held_back', 'tracked_workers', 'alive_workers'}


def test_enabled_stats(gossip, core):
    stats = gossip.stats()
    assert set(stats) == ENABLED_KEYS
    assert stats['version'] == gossip_fast.__version__
    assert stats['implementation'] == ('python' if core.__name__.endswith('_py')
                                       else 'cython')
    assert stats['receive'] == {'path': 'kombu'}  # not connected: nothing to say why
    connected(gossip, 'amqp', FakeReader('amqp'))
    assert gossip.stats()['receive'] == {'path': 'amqp', 'max_delay': 0.1}


def test_disabled_by_without_gossip_reports_no_receive_path(GossipClass, app):
    gossip = make_gossip(GossipClass, app, without_gossip=True)
    stats = gossip.stats()
    assert stats == {'version': gossip_fast.__version__,
                     'implementation': stats['implementation'],
                     'enabled': False, 'clock': gossip.clock.value,
                     'why': '--without-gossip'}


def test_disabled_by_the_transport_says_which(GossipClass):
    from celery import Celery
    app = Celery('t', broker='memory://', set_as_current=False)
    gossip = make_gossip(GossipClass, app)
    stats = gossip.stats()
    assert stats['enabled'] is False
    assert stats['why'] == "transport 'memory': gossip needs one of amqp, redis"
    assert 'receive' not in stats and 'joins' not in stats


def test_gossip_stats_command_answers_for_a_disabled_step(GossipClass, app):
    from celery.worker.control import Panel
    gossip = make_gossip(GossipClass, app, without_gossip=True)
    state = types.SimpleNamespace(consumer=types.SimpleNamespace(gossip=gossip))
    assert Panel.data['gossip_stats'](state)['enabled'] is False


@pytest.mark.parametrize('code', [
    'import gossip_fast.consumer',
    "from celery.utils.imports import symbol_by_name; symbol_by_name('gossip_fast:Consumer')",
    'import gossip_fast.bootstep',
])
def test_gossip_stats_is_registered_on_every_route(code):
    """``worker_consumer = 'gossip_fast:Consumer'`` never calls install():
    importing our consumer (or the step) must register the command."""
    check = (f'{code}\nfrom celery.worker.control import Panel\n'
             "assert 'gossip_stats' in Panel.data and 'gossip_stats' in Panel.meta")
    subprocess.run([sys.executable, '-c', check], check=True, timeout=60)



def test_a_recorded_fallback_reason_is_used(gossip, lines):
    """A fast path that records why it fell back to kombu
    (``gossip.receive_fallback``) is taken at its word."""
    gossip.receive_fallback = 'no event loop in this pool'
    observability.announce(gossip, lines.log)
    assert lines[0].endswith('receive kombu (no event loop in this pool; no batching delay)')
    assert gossip.stats()['receive'] == {'path': 'kombu', 'why': 'no event loop in this pool'}


def test_driver_counters_join_the_reader_s(gossip):
    gossip._reader = FakeReader('redis')
    gossip._driver = types.SimpleNamespace(reader=gossip._reader,
                                           stats=lambda: {'wakeups': 3})
    assert gossip.stats()['receive'] == {'path': 'redis', 'max_delay': 0.1, 'wakeups': 3}
