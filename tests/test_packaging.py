"""Packaging checks: what the sdist and the wheel contain, the type stubs of
the compiled core, and which gossip_fast the test run imported.

``test_sdist_and_wheel_contents`` builds both distributions from the source
tree once per session (``python -m build --no-isolation``, about 20 s here)
and checks their listings.  It needs ``build`` and the build requirements of
pyproject.toml (setuptools, Cython) installed; without them it skips, except
under CI (``CI=true``), which never skips it: there it builds in isolation
instead (fetching ``build``, setuptools and Cython from the package index).

The two environment variables below are set by the wheel tests
(``[tool.cibuildwheel] test-environment`` and ``scripts/check-wheel.sh``),
which run this suite against an installed distribution, outside the source
tree:

- ``GOSSIP_FAST_EXPECT_IMPLEMENTATION=cython|python``: the active hot path
  must be that one.
- ``GOSSIP_FAST_EXPECT_INSTALLED=1``: ``gossip_fast`` must have been imported
  from site-packages, not from a source tree that found its way onto
  ``sys.path``.
"""
import ast
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import pytest

import gossip_fast
from gossip_fast import implementation

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(gossip_fast.__file__).resolve().parent
BUILD_TIMEOUT = 300  # seconds; a build takes about 20 s on a 2-core machine


def _truthy(name):
    return os.environ.get(name, '').strip().lower() in ('1', 'true', 'yes', 'on')


def _skip_or_fail(reason):
    """Skip, or fail under CI: CI must never skip the packaging checks."""
    if _truthy('CI'):
        pytest.fail(f'{reason} (CI=true: this test must run there)')
    pytest.skip(reason)


# -- which gossip_fast is under test -------------------------------------------

def test_imported_gossip_fast_is_the_expected_one():
    core = implementation.core
    assert gossip_fast.IMPLEMENTATION in ('cython', 'python')
    assert (gossip_fast.IMPLEMENTATION == 'cython') == (
        core.__name__ == 'gossip_fast._core'), core.__name__

    expected = os.environ.get('GOSSIP_FAST_EXPECT_IMPLEMENTATION', '').strip()
    if expected:
        assert gossip_fast.IMPLEMENTATION == expected, (
            f'expected the {expected} core, got {gossip_fast.IMPLEMENTATION} '
            f'({core.__file__}); extension error: {implementation.EXTENSION_ERROR!r}')

    if _truthy('GOSSIP_FAST_EXPECT_INSTALLED'):
        site_dirs = {Path(sysconfig.get_paths()[key]).resolve()
                     for key in ('purelib', 'platlib')}
        assert any(site in PACKAGE_DIR.parents for site in site_dirs), (
            f'gossip_fast was imported from {PACKAGE_DIR}, not from the installed '
            f'distribution in {sorted(map(str, site_dirs))}; sys.path={sys.path}')
        assert PACKAGE_DIR != ROOT / 'gossip_fast', PACKAGE_DIR


# -- the type stubs of the compiled core --------------------------------------

def _stub_names():
    """(module-level names, {class: member names}, __all__) of _core.pyi."""
    path = PACKAGE_DIR / '_core.pyi'
    assert path.is_file(), f'{path} is missing (it must ship with the package)'
    tree = ast.parse(path.read_text(encoding='utf-8'), str(path))

    def public(name):
        return not name.startswith('_')

    def targets(node):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            return [node.target.id]
        if isinstance(node, ast.Assign):
            return [t.id for t in node.targets if isinstance(t, ast.Name)]
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            return [node.name]
        return []

    module, classes, all_ = set(), {}, None
    for node in tree.body:
        module.update(n for n in targets(node) if public(n))
        if isinstance(node, ast.ClassDef):
            classes[node.name] = {
                n for child in node.body for n in targets(child) if public(n)}
        if '__all__' in targets(node):
            all_ = ast.literal_eval(node.value)
    return module, classes, all_


def _runtime_module_names(module):
    """Public names defined by *module* itself (not the modules, classes and
    functions it imports)."""
    names = set()
    for name in dir(module):
        if name.startswith('_'):
            continue
        value = getattr(module, name)
        if isinstance(value, type(os)):
            continue
        if callable(value) and getattr(value, '__module__', module.__name__) != module.__name__:
            continue
        names.add(name)
    return names


def _instances(core):
    """One instance of each class of *core*, so instance attributes count."""
    state = core.State()
    clock = core.Clock()
    gossip = SimpleNamespace(hostname='me@host', clock=clock, event_handlers={},
                             update_state=state.event)
    return {
        'Clock': clock,
        'Worker': core.Worker('peer@host'),
        'State': state,
        'Receiver': core.Receiver(gossip, state, clock, {'application/json'}),
    }


def _stub_functions():
    """{(class name or None, function name): parameters} of the functions and
    methods in _core.pyi (properties left out); a parameter is
    ``(name, has a default)``, with ``*``/``**`` before the variadic ones."""
    tree = ast.parse((PACKAGE_DIR / '_core.pyi').read_text(encoding='utf-8'))

    def params(fn):
        a = fn.args
        pos = a.posonlyargs + a.args
        defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
        out = [(p.arg, d is not None) for p, d in zip(pos, defaults, strict=True)]
        if a.vararg:
            out.append(('*' + a.vararg.arg, False))
        out += [(p.arg, d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
        if a.kwarg:
            out.append(('**' + a.kwarg.arg, False))
        return out

    def is_property(fn):
        return any((isinstance(d, ast.Name) and d.id == 'property')
                   or (isinstance(d, ast.Attribute) and d.attr in ('setter', 'deleter'))
                   for d in fn.decorator_list)

    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[None, node.name] = params(node)
        elif isinstance(node, ast.ClassDef):
            for child in node.body:
                if isinstance(child, ast.FunctionDef) and not is_property(child):
                    found[node.name, child.name] = params(child)
    return found


def _runtime_params(obj):
    """Like the parameters of _stub_functions(), or None if unknown."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    out = []
    for p in signature.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            out.append(('*' + p.name, False))
        elif p.kind is p.VAR_KEYWORD:
            out.append(('**' + p.name, False))
        else:
            out.append((p.name, p.default is not p.empty))
    if out in ([('self', False), ('*args', False), ('**kwargs', False)],
               [('*args', False), ('**kwargs', False)]):
        return None  # a slot wrapper (e.g. the __init__ of a cdef class)
    return out


def test_core_stub_matches_the_compiled_module():
    """Every public name of gossip_fast._core is in _core.pyi, and the other
    way round (the stub is checked against the module it describes)."""
    try:
        module = importlib.import_module('gossip_fast._core')
    except ImportError as exc:
        pytest.skip(f'the compiled core is not built here: {exc}')
    stub_module, stub_classes, stub_all = _stub_names()
    problems = []
    runtime = _runtime_module_names(module)
    if stub_module != runtime:
        problems.append(f'module: not in _core.pyi: {sorted(runtime - stub_module)}; '
                        f'only in _core.pyi: {sorted(stub_module - runtime)}')
    if sorted(stub_all or ()) != sorted(module.__all__):
        problems.append(f'__all__: {stub_all} in _core.pyi, {module.__all__} in the module')
    # a Worker serves the stock event fields (pid, freq, ...) from its last
    # event, so a fresh one need not have them
    lazy = {name for name, _ in getattr(module, 'DEFAULT_FIELDS', ())}
    for name, instance in _instances(module).items():
        try:
            own = set(vars(instance))
        except TypeError:  # no instance __dict__
            own = set()
        present = {n for n in set(dir(type(instance))) | own if not n.startswith('_')}
        declared = stub_classes.get(name, set())
        missing = present - declared
        stale = declared - present - (lazy if name == 'Worker' else set())
        if missing or stale:
            problems.append(f'{name}: not in _core.pyi: {sorted(missing)}; '
                            f'only in _core.pyi: {sorted(stale)}')
    # the parameters of every function and method whose signature is known
    for (owner, name), declared_params in sorted(
            _stub_functions().items(), key=lambda item: (item[0][0] or '', item[0][1])):
        if name.startswith('__'):
            continue
        obj = getattr(getattr(module, owner) if owner else module, name, None)
        actual = None if obj is None else _runtime_params(obj)
        if actual is not None and actual != declared_params:
            problems.append(f'{owner + "." if owner else ""}{name}: parameters '
                            f'{declared_params} in _core.pyi, {actual} in the module')
    assert not problems, 'gossip_fast/_core.pyi is out of step with src/_core.pyx:\n' + (
        '\n'.join(problems))


# -- the sdist and the wheel ---------------------------------------------------

def _source_version():
    text = (ROOT / 'gossip_fast' / '_version.py').read_text(encoding='utf-8')
    for node in ast.parse(text).body:
        if (isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == '__version__' for t in node.targets)):
            return ast.literal_eval(node.value)
    raise AssertionError('no __version__ in gossip_fast/_version.py')


def _load_toml(path):
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest depends on tomli there
        import tomli as tomllib
    with open(path, 'rb') as f:
        return tomllib.load(f)


def _missing_build_requirements():
    """The build requirements that are not installed (or too old)."""
    from packaging.requirements import Requirement

    missing = []
    if importlib.util.find_spec('build') is None:
        missing.append('build')
    requires = _load_toml(ROOT / 'pyproject.toml')['build-system']['requires']
    for text in requires:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if not req.specifier.contains(version, prereleases=True):
            missing.append(f'{text} (have {version})')
    return missing


def _have_compiler():
    if sys.platform == 'win32':
        return shutil.which('cl') is not None or bool(os.environ.get('VSINSTALLDIR'))
    cc = os.environ.get('CC') or sysconfig.get_config_var('CC') or 'cc'
    words = shlex.split(cc)
    return bool(words) and shutil.which(words[0]) is not None


def _source_files(folder):
    """Files of *folder* (relative to ROOT) that a release must carry."""
    skip_dirs = {'__pycache__', '.hypothesis', '.pytest_cache', '.benchmarks'}
    found = set()
    for path in (ROOT / folder).rglob('*'):
        rel = path.relative_to(ROOT)
        if path.is_file() and not skip_dirs & set(rel.parts) and path.suffix not in (
                '.pyc', '.pyo', '.so', '.pyd', '.c', '.html'):
            found.add(rel.as_posix())
    return found


@pytest.fixture(scope='session')
def dists(tmp_path_factory):
    """Build the sdist and, from it, the wheel, once per session."""
    for needed in ('pyproject.toml', 'setup.py', 'src/_core.pyx', 'gossip_fast/_version.py'):
        if not (ROOT / needed).is_file():
            _skip_or_fail(f'not a source checkout: {ROOT / needed} is missing')
    out = tmp_path_factory.mktemp('dist')
    cmd = [sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(out), str(ROOT)]
    env = dict(os.environ)
    missing = _missing_build_requirements()
    if missing:
        reason = ('the build requirements are not installed (needed for '
                  f'python -m build --no-isolation): {", ".join(missing)}')
        if not _truthy('CI'):
            pytest.skip(reason)
        # CI never skips: build in isolation instead (pip fetches setuptools
        # and Cython from the index), bootstrapping `build` itself if needed.
        cmd.remove('--no-isolation')
        if importlib.util.find_spec('build') is None:
            tool = tmp_path_factory.mktemp('build-tool')
            subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet',
                            '--disable-pip-version-check', '--target', str(tool), 'build'],
                           check=True, timeout=BUILD_TIMEOUT)
            env['PYTHONPATH'] = os.pathsep.join(
                filter(None, [str(tool), env.get('PYTHONPATH')]))
        print(f'{reason}; CI=true, so: {shlex.join(cmd)}')
    compiled = _have_compiler()
    env.pop('GOSSIP_FAST_NO_EXTENSIONS', None)
    if compiled:  # a wheel without the compiled core is then an error
        env['GOSSIP_FAST_REQUIRE_EXTENSIONS'] = '1'
    else:
        env.pop('GOSSIP_FAST_REQUIRE_EXTENSIONS', None)
    before = {
        'package': {p.relative_to(ROOT).as_posix() for p in (ROOT / 'gossip_fast').rglob('*.py')
                    if '__pycache__' not in p.parts},
        'tests': _source_files('tests'),
        # the Cython sources: the shell, the files it includes, the .pxd
        # declarations (src/gossip_fast/_core.pxd included)
        'src': _source_files('src'),
        'docs': _source_files('docs') if (ROOT / 'docs').is_dir() else set(),
    }
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f'{shlex.join(cmd)} took more than {BUILD_TIMEOUT} s:\n'
                    f'{(exc.output or "")[-4000:]}')
    if proc.returncode:
        pytest.fail(f'{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}')
    sdists = sorted(out.glob('*.tar.gz'))
    wheels = sorted(out.glob('*.whl'))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return SimpleNamespace(sdist=sdists[0], wheel=wheels[0], compiled=compiled,
                           version=_source_version(), log=proc.stdout, **before)


def _check_wheel(d):
    version = d.version
    assert d.wheel.name.startswith(f'gossip_fast-{version}-'), d.wheel.name
    with zipfile.ZipFile(d.wheel) as whl:
        names = set(whl.namelist())
        dist_info = f'gossip_fast-{version}.dist-info'
        metadata = whl.read(f'{dist_info}/METADATA').decode()
        wheel_meta = whl.read(f'{dist_info}/WHEEL').decode()
        entry_points = whl.read(f'{dist_info}/entry_points.txt').decode() if (
            f'{dist_info}/entry_points.txt' in names) else ''

    # only the package and its metadata
    tops = {PurePosixPath(n).parts[0] for n in names}
    assert tops == {'gossip_fast', dist_info}, sorted(tops)
    for name in sorted(names):
        path = PurePosixPath(name)
        assert path.suffix not in ('.c', '.pyx', '.pxd', '.h', '.html', '.pyc', '.pyo'), name
        assert '__pycache__' not in path.parts, name
        assert not {'src', 'tests', 'benchmarks', 'scripts'} & set(path.parts), name

    # every module of the package, subpackages included
    absent = sorted(d.package - names)
    assert not absent, f'not in the wheel: {absent}'
    assert 'gossip_fast/py.typed' in names
    assert 'gossip_fast/_core.pyi' in names
    assert 'gossip_fast/_core_py.py' in names
    compiled = sorted(n for n in names if re.fullmatch(r'gossip_fast/_core\.[^/]+', n)
                      and n.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)))
    if d.compiled:
        assert len(compiled) == 1, f'compiled core in the wheel: {compiled}'
        assert 'Root-Is-Purelib: false' in wheel_meta, wheel_meta
        assert 'Tag: py3-none-any' not in wheel_meta, wheel_meta

    # metadata: the single-sourced version, the license, the entry points
    assert re.search(rf'^Version: {re.escape(version)}$', metadata, re.M), metadata[:400]
    assert re.search(r'^License-Expression: BSD-3-Clause$', metadata, re.M), metadata[:800]
    assert f'{dist_info}/licenses/LICENSE' in names, sorted(names)
    assert re.search(r'^Requires-Python: >=3\.10$', metadata, re.M)
    for target in re.findall(r'^\s*[\w.-]+\s*=\s*([\w.]+):', entry_points, re.M):
        module = target.replace('.', '/')
        assert f'{module}.py' in names or f'{module}/__init__.py' in names, (
            f'entry point target {target} is not in the wheel')


def _check_sdist(d):
    version = d.version
    top = f'gossip_fast-{version}'
    assert d.sdist.name == f'{top}.tar.gz', d.sdist.name
    with tarfile.open(d.sdist) as tar:
        members = tar.getmembers()
        pkg_info = tar.extractfile(f'{top}/PKG-INFO').read().decode()
    names = set()
    for member in members:
        path = PurePosixPath(member.name)
        assert path.parts[0] == top and '..' not in path.parts, member.name
        if member.isfile():
            names.add(PurePosixPath(*path.parts[1:]).as_posix())

    required = {
        'src/_core.pyx', 'setup.py', 'pyproject.toml', 'README.md', 'LICENSE',
        'CHANGELOG.md', 'MANIFEST.in', 'PKG-INFO',
        'gossip_fast/py.typed', 'gossip_fast/_core.pyi',
    }
    required |= d.package
    required |= d.src | d.tests | d.docs
    assert {'src/_core.pyx', 'src/gossip_fast/_core.pxd'} <= d.src, sorted(d.src)
    assert not required - names, f'missing from the sdist: {sorted(required - names)}'

    allowed_tops = {
        'CHANGELOG.md', 'LICENSE', 'MANIFEST.in', 'PKG-INFO', 'README.md',
        'pyproject.toml', 'setup.py', 'setup.cfg', 'src', 'gossip_fast',
        'gossip_fast.egg-info', 'tests', 'scripts', 'docs',
    }
    tops = {PurePosixPath(n).parts[0] for n in names}
    assert tops <= allowed_tops, f'unexpected in the sdist: {sorted(tops - allowed_tops)}'
    for name in sorted(names):
        path = PurePosixPath(name)
        assert path.suffix not in ('.so', '.pyd', '.dylib', '.c', '.pyc', '.pyo', '.o'), name
        assert not {'__pycache__', '.venv', 'build', 'dist', 'wheelhouse', 'benchmarks',
                    '.git', '.hypothesis', '.pytest_cache'} & set(path.parts), name
    assert re.search(rf'^Version: {re.escape(version)}$', pkg_info, re.M), pkg_info[:400]


@pytest.mark.slow
def test_sdist_and_wheel_contents(dists):
    _check_sdist(dists)
    _check_wheel(dists)


# -- the wheel matrix and its workflow -------------------------------------------

#: What [tool.cibuildwheel] must build: CPython 3.10-3.15 on every platform
#: of the wheels issue (free-threaded and PyPy deliberately not: see
#: pyproject.toml).
PYTHONS = ('cp310', 'cp311', 'cp312', 'cp313', 'cp314', 'cp315')
PLATFORMS = {
    'linux': ('manylinux_x86_64', 'manylinux_aarch64', 'musllinux_x86_64', 'musllinux_aarch64'),
    'macos': ('macosx_x86_64', 'macosx_arm64'),
    'windows': ('win_amd64',),
}


def _source_tree_file(relative):
    """A file of the source checkout; the wheel tests run this suite
    outside it (only tests/ and pyproject.toml), where there is nothing to
    check."""
    path = ROOT / relative
    if not path.is_file() or not (ROOT / 'gossip_fast').is_dir():
        pytest.skip(f'no {relative}: not a source checkout')
    return path


@pytest.mark.parametrize('platform', sorted(PLATFORMS))
def test_cibuildwheel_builds_the_whole_matrix(platform):
    _source_tree_file('pyproject.toml')
    if importlib.util.find_spec('cibuildwheel') is None:
        _skip_or_fail('cibuildwheel is not installed (the dev extra has it)')
    result = subprocess.run(
        [sys.executable, '-m', 'cibuildwheel', '--print-build-identifiers',
         '--platform', platform, str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith('CIBW_')})
    assert result.returncode == 0, result.stderr[-2000:]
    built = set(result.stdout.split())
    expected = {f'{py}-{tag}' for py in PYTHONS for tag in PLATFORMS[platform]}
    assert built == expected, (sorted(built - expected), sorted(expected - built))


def test_wheel_workflow_builds_what_pyproject_says():
    if importlib.util.find_spec('yaml') is None:
        _skip_or_fail('PyYAML is not installed (the dev extra has it)')
    import yaml
    workflow = yaml.safe_load(_source_tree_file('.github/workflows/wheels.yml').read_text())
    jobs = workflow['jobs']
    assert {'sdist', 'check', 'wheels', 'publish'} <= set(jobs)
    wheels = jobs['wheels']
    steps = wheels['steps']
    build = [s for s in steps if str(s.get('uses', '')).startswith('pypa/cibuildwheel@')]
    assert len(build) == 1, steps
    # the runners together cover every architecture of [tool.cibuildwheel]
    # and nothing overrides its choice of builds
    env = build[0].get('env', {})
    assert not {'CIBW_BUILD', 'CIBW_SKIP', 'CIBW_ENVIRONMENT', 'CIBW_TEST_COMMAND'} & set(env), env
    archs = {entry['archs'] for entry in wheels['strategy']['matrix']['include']}
    assert archs == {'x86_64', 'aarch64', 'arm64', 'AMD64'}, archs
    assert 'scripts/check-wheel.sh' in str(jobs['check']['steps'])
    assert set(jobs['publish']['needs']) == {'sdist', 'check', 'wheels'}
