"""The ``gossip-fast bench`` command line (gossip_fast/cli.py, bench.py)."""
import json
import subprocess
import sys

import pytest

from gossip_fast import implementation
from gossip_fast.cli import main

TINY = ['bench', '--workers', '50', '--seconds', '2', '--repeat', '2']
# Without the compiled core the all-implementations runs must fail, not
# skip, unless the fallback was asked for on purpose.
needs_cython = pytest.mark.skipif(
    implementation.NO_EXTENSIONS, reason='GOSSIP_FAST_NO_EXTENSIONS: no compiled core')


def run_error(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(['bench', *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('usage: gossip-fast bench')
    return err


@pytest.mark.parametrize('args, message', [
    (['--workers', '0'], "argument --workers/-n: must be a positive integer, got '0'"),
    (['--workers', '-5'], 'must be a positive integer'),
    (['--workers', 'many'], 'must be a positive integer'),
    (['--seconds', 'nan'], "argument --seconds/-s: must be a positive number, got 'nan'"),
    (['--repeat', '0'], 'argument --repeat/-r: must be a positive integer'),
    (['--transport', 'kafka'], "invalid choice: 'kafka'"),
    (['--implementations', 'stock,pypy'],
     "unknown implementation 'pypy'; choose from stock,python,cython"),
    (['--implementations', ','], 'unknown implementation'),
])
def test_bad_arguments_exit_2(capsys, args, message):
    assert message in run_error(capsys, *args)


def test_no_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert 'required: COMMAND' in capsys.readouterr().err


def test_cython_not_built_says_how_to_build(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'gossip_fast._core', None)  # import fails
    err = run_error(capsys, '--workers', '10', '--implementations', 'python,cython')
    assert 'cannot benchmark cython' in err
    assert 'pip install -e . --no-build-isolation' in err


@needs_cython
def test_tiny_run_prints_all_implementations(capsys):
    assert main(TINY) == 0
    out, err = capsys.readouterr()
    header, table = out.split('\n\n', 1)
    assert '50 workers x 2 s of cluster time = 50 heartbeats' in header
    assert 'celery' in header and 'kombu' in header and 'CPython' in header
    assert table.split('\n', 1)[0].split() == ['stock', 'python', 'cython']
    for row in ('events/s', 'us per event', 'sweep (us)', 'memory/worker (B)',
                'speedup on_message'):
        assert row in table
    assert 'repeat 2/2: 100%' in err and 'memory: 50 workers, cython' in err


@needs_cython
def test_json_output(capsys):
    assert main([*TINY, '--json', '--transport', 'amqp']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['config']['transport'] == 'amqp'
    assert report['config']['heartbeats_per_repeat'] == 50
    assert list(report['results']) == ['stock', 'python', 'cython']
    for result in report['results'].values():
        assert result['events_per_second'] > 0 and result['bytes_per_worker'] > 0
        assert result['tracked_workers'] == 50 and result['joins_in_steady_state'] == 0
        assert result['speedup_vs_stock']['on_message'] > 0
    assert report['results']['stock']['speedup_vs_stock']['sweep'] == 1.0


def test_python_dash_m_and_quiet():
    proc = subprocess.run(
        [sys.executable, '-m', 'gossip_fast', 'bench', '-n', '5', '-s', '2', '-r', '1',
         '-i', 'stock,python', '--json', '--quiet'],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ''
    assert list(json.loads(proc.stdout)['results']) == ['stock', 'python']


# -- bench --plot ------------------------------------------------------------------


def png_size(path):
    """(width, height) from a PNG's IHDR chunk."""
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n', head
    return int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')


@needs_cython
def test_plot_draws_the_three_implementations(capsys, tmp_path):
    pytest.importorskip('matplotlib')  # the bench extra (in dev, not in test)
    path = tmp_path / 'bench.png'
    assert main([*TINY, '--plot', str(path)]) == 0
    out, err = capsys.readouterr()
    assert 'speedup on_message' in out  # the table is still printed
    assert f'chart written to {path}' in err
    width, height = png_size(path)
    assert width > 800 and height > 300


def test_plot_needs_matplotlib_and_says_so_before_running(capsys, monkeypatch, tmp_path):
    from gossip_fast import bench
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import fails
    monkeypatch.setitem(sys.modules, 'matplotlib.pyplot', None)

    def must_not_run(*args, **kwargs):
        raise AssertionError('the benchmark ran before --plot was checked')
    monkeypatch.setattr(bench, 'simulate', must_not_run)
    err = run_error(capsys, '--plot', str(tmp_path / 'x.png'))
    assert "--plot: needs matplotlib" in err
    assert "pip install 'gossip-fast[bench]'" in err
    assert not (tmp_path / 'x.png').exists()


def test_plot_into_a_missing_folder_fails_before_running(capsys, monkeypatch, tmp_path):
    pytest.importorskip('matplotlib')
    from gossip_fast import bench
    monkeypatch.setattr(bench, 'simulate', lambda *a, **k: pytest.fail('ran'))
    err = run_error(capsys, '--plot', str(tmp_path / 'nowhere' / 'x.png'))
    assert '--plot: no such folder' in err


# -- stats ---------------------------------------------------------------------------


def stats_error(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(['stats', *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('usage: gossip-fast stats')
    return err


def test_stats_needs_an_app_or_a_broker(capsys):
    assert 'one of the arguments -A/--app -b/--broker is required' in stats_error(capsys)


def test_stats_app_that_does_not_load(capsys):
    err = stats_error(capsys, '-A', 'no_such_module_here_at_all')
    assert "cannot load the Celery app 'no_such_module_here_at_all'" in err


def test_stats_summary_lines():
    from gossip_fast.cli import _summary
    assert _summary({'error': "KeyError('gossip_stats')"}).startswith(
        "does not know gossip_stats (KeyError('gossip_stats')): stock Gossip")
    assert _summary({'version': '1.0', 'implementation': 'python', 'enabled': False,
                     'clock': 3, 'why': '--without-gossip'}) == (
        'gossip_fast 1.0, core python; gossip OFF: --without-gossip')
    assert _summary({
        'version': '1.0', 'implementation': 'cython', 'enabled': True, 'clock': 9,
        'receive': {'path': 'kombu', 'why': 'classic mode: GOSSIP_FAST_RECEIVE=classic'},
        'events': {'applied': 1234}, 'dropped': {'bad_freq': 2}, 'alive_workers': 3,
        'tracked_workers': 4, 'joins': 5, 'leaves': 1, 'losses': 0}) == (
        'gossip_fast 1.0, core cython, receive kombu (classic mode: '
        'GOSSIP_FAST_RECEIVE=classic); 3 of 4 peers alive; 1,234 events applied, '
        '2 dropped; joins 5, leaves 1, losses 0; clock 9')


@pytest.mark.broker
def test_stats_with_no_worker_replies_exits_1(redis_server, capsys):
    # db 15: no other test's workers share its pidbox
    url = redis_server.url.rsplit('/', 1)[0] + '/15'
    assert main(['stats', '-b', url, '-t', '0.3']) == 1
    assert 'no worker replied within 0.3 s' in capsys.readouterr().err
