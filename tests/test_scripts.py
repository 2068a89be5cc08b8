"""scripts/setup.sh installs only when something it depends on changed.

It runs here in a copy of the source tree, with a stand-in venv whose
``python`` is this interpreter except that ``-m pip`` only records the call:
so the test sees when setup.sh would install, without installing.
"""
import glob
import os
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, 'scripts', 'setup.sh')
COMPILED = glob.glob(os.path.join(ROOT, 'gossip_fast', '_core.*.so'))

pytestmark = pytest.mark.skipif(
    not os.path.exists(SETUP) or not COMPILED or not shutil.which('sha256sum'),
    reason='needs a source checkout with the compiled core built in place '
           '(scripts/setup.sh), and sha256sum')


@pytest.fixture
def tree(tmp_path):
    """A copy of what setup.sh reads, and a stand-in venv; ``tree.run()``
    runs setup.sh and returns (exit status, output, pip calls)."""
    root = tmp_path / 'checkout'
    root.mkdir()
    for name in ('pyproject.toml', 'setup.py'):
        shutil.copy(os.path.join(ROOT, name), root)
    for name in ('src', 'gossip_fast', 'scripts'):
        shutil.copytree(os.path.join(ROOT, name), root / name,
                        ignore=shutil.ignore_patterns('__pycache__'))
    calls = tmp_path / 'pip-calls'
    python = root / '.venv' / 'bin' / 'python'
    python.parent.mkdir(parents=True)
    # the copy's gossip_fast (with its compiled core) comes first on sys.path
    python.write_text(
        '#!/bin/sh\n'
        'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then\n'
        f'    echo "$*" >> "{calls}"; exit 0\n'
        'fi\n'
        f'PYTHONPATH="{root}" exec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)

    def run(**env):
        calls.write_text('')
        proc = subprocess.run(
            ['bash', str(root / 'scripts' / 'setup.sh')], capture_output=True, text=True,
            env=dict(os.environ, **env), timeout=120)
        return proc.returncode, proc.stdout + proc.stderr, calls.read_text().splitlines()

    tree.root, tree.run = root, run
    return tree


def installs(result):
    status, output, pip = result
    assert status == 0, output
    return any(' install ' in f' {call} ' and '-e' in call.split() for call in pip)


def test_installs_once_then_skips(tree):
    status, output, pip = tree.run()
    assert status == 0, output
    assert pip[-1].endswith("-e .[dev]"), pip
    assert 'implementation: cython' in output
    assert (tree.root / '.venv' / '.gossip-fast-setup').exists()
    status, output, pip = tree.run()
    assert (status, pip) == (0, []), output
    assert 'is up to date' in output


def test_a_change_in_src_rebuilds(tree):
    assert installs(tree.run())
    with open(tree.root / 'src' / '_core.pyx', 'a') as f:
        f.write('\n# changed\n')
    assert installs(tree.run())
    assert not installs(tree.run())


def test_a_new_file_in_src_rebuilds(tree):
    assert installs(tree.run())
    (tree.root / 'src' / 'extra.pxi').write_text('# new\n')
    assert installs(tree.run())


@pytest.mark.parametrize('name', ['pyproject.toml', 'setup.py', 'gossip_fast/_version.py'])
def test_a_change_in_the_build_files_reinstalls(tree, name):
    assert installs(tree.run())
    with open(tree.root / name, 'a') as f:
        f.write('\n# changed\n')
    assert installs(tree.run())


def test_python_code_needs_no_reinstall(tree):
    """The install is editable: gossip_fast/*.py is read in place."""
    assert installs(tree.run())
    with open(tree.root / 'gossip_fast' / 'bench.py', 'a') as f:
        f.write('\n# changed\n')
    assert not installs(tree.run())


def test_other_pins_force_and_no_extensions(tree):
    assert installs(tree.run())
    status, output, pip = tree.run(GOSSIP_FAST_PINS='celery==5.5.3 kombu==5.5.4')
    assert status == 0 and 'celery==5.5.3 kombu==5.5.4 -e .[dev]' in pip[-1], pip
    assert installs(tree.run(GOSSIP_FAST_SETUP_FORCE='1'))
    # the environment's GOSSIP_FAST_NO_EXTENSIONS does not hide the built core
    assert not installs(tree.run(GOSSIP_FAST_NO_EXTENSIONS='1'))


def test_no_compiled_core_reinstalls_and_fails_if_still_missing(tree):
    assert installs(tree.run())
    for path in glob.glob(str(tree.root / 'gossip_fast' / '_core.*.so')):
        os.remove(path)
    status, output, pip = tree.run()
    assert any(call.endswith('-e .[dev]') for call in pip), pip  # it tried
    assert status == 1
    assert 'the compiled core does not import' in output
    assert not (tree.root / '.venv' / '.gossip-fast-setup').exists()
