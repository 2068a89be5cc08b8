"""The two cores have the same public API, and ``gossip_fast/_core.pyi``
describes both.

``tests/test_differential.py`` holds them to the same behaviour; this holds
them to the same shape: module-level names, classes, the members of their
instances, and the parameters of every function, method and constructor.
The compiled core is imported explicitly (``load_core``): a missing build
fails here instead of comparing the fallback with itself.

Names a core takes from ``gossip_fast._common`` (the half both share)
count as its own.
"""
import ast
import inspect

import pytest

from gossip_fast import _common

from .conftest import load_core
from .test_packaging import _instances, _runtime_params, _stub_functions, _stub_names

#: What only the compiled core has, and why the fallback does without:
#: coalesce(), PubSubScanner and DeliveryScanner speed up
#: gossip_fast.fastpath, whose readers do the same in Python with the
#: fallback (base.coalesce; hiredis and envelope_parts; AMQPReader._split);
#: held() untracks a tuple from the cyclic garbage collector, which Python
#: code cannot ask for; scan_body() lets tests see
#: what the compiled scanner reads.
COMPILED_ONLY = frozenset({'coalesce', 'held', 'PubSubScanner', 'DeliveryScanner',
                           'scan_body'})
CLASSES = ('Clock', 'Worker', 'State', 'Receiver')


@pytest.fixture(scope='module')
def cores():
    return load_core('cython'), load_core('python')


def module_names(core):
    """Public names defined by *core* or taken from _common (not the
    modules, classes and functions it imports from elsewhere)."""
    names = set()
    for name in dir(core):
        if name.startswith('_'):
            continue
        value = getattr(core, name)
        if inspect.ismodule(value):
            continue
        if callable(value) and getattr(value, '__module__', None) not in (
                core.__name__, _common.__name__):
            continue
        names.add(name)
    return names


def members(instance):
    """Public names of *instance*: of its class and its own."""
    try:
        own = set(vars(instance))
    except TypeError:  # no instance __dict__
        own = set()
    return {n for n in set(dir(type(instance))) | own if not n.startswith('_')}


def has(obj, name):
    """hasattr(), but a property that raises something else (a Worker's
    heartbeat_expires before its first heartbeat: IndexError) is there."""
    try:
        getattr(obj, name)
    except AttributeError:
        return False
    except Exception:
        return True
    return True


def constructor_params(cls):
    """The parameters of *cls*(...) as _runtime_params() gives them.  A
    compiled class has no introspectable __init__; Cython's embedsignature
    puts its signature on the first line of the class docstring."""
    params = _runtime_params(cls)
    if params is not None:
        return params
    first = (cls.__doc__ or '').split('\n', 1)[0]
    assert first.startswith(cls.__name__ + '('), (cls, first)
    fn = ast.parse(f'def f{first[len(cls.__name__):]}: pass').body[0]
    a = fn.args
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    return [(p.arg, d is not None) for p, d in zip(pos, defaults, strict=True)]


def test_same_module_level_names(cores):
    compiled, fallback = cores
    assert compiled.__all__ == fallback.__all__ == _common.CORE_ALL
    assert module_names(compiled) - COMPILED_ONLY == module_names(fallback)
    assert COMPILED_ONLY <= module_names(compiled)


def test_shared_values_are_the_same_objects(cores):
    """The limits come from _common, not from a copy of their own."""
    for core in cores:
        for name in ('MAX_PEER_CLOCK', 'CLOCK_CEILING', 'MAX_FREQ', 'MAX_TIME',
                     'EXPIRE_FACTOR', 'DRIFT_MAX', 'SLOTS_PER_SECOND', 'RESERVED_FIELDS',
                     'DEFAULT_FIELDS', 'REJECTED'):
            assert getattr(core, name) is getattr(_common, name), (core.__name__, name)
        assert core.Worker.heartbeat_max == _common.HEARTBEAT_MAX
        assert core.Worker.expire_window == _common.EXPIRE_WINDOW


def test_same_members(cores):
    """Every public member of one core's instance is there on the other's
    (a compiled Worker serves the stock fields it was not sent from
    __getattr__, so they are looked up, not listed)."""
    found = [_instances(core) for core in cores]
    for name in CLASSES:
        pair = [instances[name] for instances in found]
        for one, other in (pair, pair[::-1]):
            missing = sorted(m for m in members(one) if not has(other, m))
            assert not missing, f'{name}: {missing} only in {type(one).__module__}'


def test_same_signatures(cores):
    compiled, fallback = cores
    for name in CLASSES:
        assert constructor_params(getattr(compiled, name)) == constructor_params(
            getattr(fallback, name)), name
        for member in sorted(members(_instances(fallback)[name])):
            ours = inspect.getattr_static(getattr(fallback, name), member, None)
            if not callable(ours):  # properties and data
                continue
            params = [_runtime_params(getattr(getattr(core, name), member)) for core in cores]
            assert None not in params and params[0] == params[1], (name, member, params)
    for name in module_names(fallback):
        if callable(getattr(fallback, name)) and not inspect.isclass(getattr(fallback, name)):
            assert (_runtime_params(getattr(compiled, name))
                    == _runtime_params(getattr(fallback, name))), name


@pytest.mark.parametrize('implementation', ['cython', 'python'])
def test_stub_describes_the_core(implementation):
    """_core.pyi against each core (tests/test_packaging.py checks the
    compiled one in more detail): every public name, class member and
    parameter list it declares is the core's, and the other way round."""
    core = load_core(implementation)
    stub_module, stub_classes, stub_all = _stub_names()
    expected = stub_module - (COMPILED_ONLY if implementation == 'python' else set())
    assert module_names(core) == expected
    assert tuple(stub_all) == core.__all__
    lazy = {field for field, _ in _common.DEFAULT_FIELDS}  # served by a Worker's __getattr__
    for name, instance in _instances(core).items():
        present = members(instance)
        declared = stub_classes[name]
        assert present <= declared, (name, sorted(present - declared))
        stale = {m for m in declared - present if not has(instance, m)}
        assert not stale, (name, sorted(stale), sorted(lazy & declared))
    for (owner, name), declared in _stub_functions().items():
        if name.startswith('__') or (implementation == 'python'
                                     and (owner or name) in COMPILED_ONLY):
            continue
        obj = getattr(getattr(core, owner) if owner else core, name, None)
        assert obj is not None, (owner, name)
        actual = _runtime_params(obj)
        assert actual in (None, declared), (owner, name, declared, actual)
