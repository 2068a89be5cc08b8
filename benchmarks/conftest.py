"""pytest-benchmark suite: stock Celery vs the pure-Python fallback vs the
Cython core, side by side (one ``benchmark.group`` per measurement).

Not part of the test suite (``testpaths = tests``); run it explicitly::

    pytest benchmarks/ --benchmark-only --benchmark-json=bench.json
    python benchmarks/summary.py bench.json
"""
import importlib

import pytest

from gossip_fast import bench

EXPECTED_MODULE = {'python': 'gossip_fast._core_py', 'cython': 'gossip_fast._core'}


@pytest.fixture(params=bench.IMPLEMENTATIONS)
def implementation(request):
    """``stock``, ``python`` or ``cython``; the last fails (never skips) when
    the compiled core is missing, so the fallback is never measured twice."""
    if request.param == 'cython':
        try:
            importlib.import_module('gossip_fast._core')
        except ImportError as exc:
            pytest.fail(f'{bench.BUILD_HINT} ({exc})')
    return request.param


@pytest.fixture
def gossip(implementation, benchmark):
    """``(gossip, prepare)`` of the implementation, outside a worker."""
    g, prepare = bench.make_gossip(implementation)
    if implementation != 'stock':
        assert type(g._receiver).__module__ == EXPECTED_MODULE[implementation]
    benchmark.extra_info['implementation'] = implementation
    return g, prepare
