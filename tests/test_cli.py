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
