"""Fixtures of the cluster tests: brokers, implementations, clusters of workers.

* ``broker`` (class scope, params ``redis`` / ``rabbitmq``): the session's
  broker server from ``tests/brokers.py`` (``redis_server`` /
  ``rabbitmq_server``; started once per session, skipped when not installed
  except under ``CI=true``).
* ``implementation`` (class scope, params ``cython`` / ``python``): which
  gossip_fast hot path the workers run (``python`` sets
  ``GOSSIP_FAST_NO_EXTENSIONS=1`` in their environment).
* ``cluster_folder`` and :func:`harness.running_cluster`: class fixtures of the tests
  run their :class:`harness.Cluster` in ``with running_cluster(...)``.

On failure, each running cluster's worker logs and event files are added to
the report.  Measurements (detection times, ...) are printed at the end of
the run and written to ``$GOSSIP_FAST_CLUSTER_RESULTS`` (default:
``cluster-results.json`` in pytest's base temporary folder).
"""

import importlib
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# ``tests.brokers`` lives at the repository root's tests/ (a namespace
# package), which plain ``pytest`` does not put on sys.path.
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from . import harness  # noqa: E402

BROKERS_PLUGIN = "tests.brokers"


def pytest_configure(config):
    # The broker fixtures come from the tests.brokers plugin; a top-level
    # conftest may already have registered it (pytest_plugins there).
    if not config.pluginmanager.has_plugin(BROKERS_PLUGIN):
        config.pluginmanager.import_plugin(BROKERS_PLUGIN)
    config.addinivalue_line("markers", "cluster: starts real celery worker processes")


@pytest.fixture(scope="class", params=["redis", "rabbitmq"])
def broker(request):
    """The session's running broker server (``.url``, ``.restart()``)."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture(scope="class")
def broker_name(broker):
    return "redis" if broker.url.startswith("redis") else "rabbitmq"


def compiled_core_error():
    """Why the compiled core cannot be imported here (None if it can)."""
    try:
        importlib.import_module("gossip_fast._core")
    except ImportError as exc:
        return f"gossip_fast._core does not import: {exc}"
    return None


@pytest.fixture(scope="class", params=["cython", "python"])
def implementation(request):
    """The gossip_fast hot path the workers run.

    As in tests/conftest.py: ``cython`` is skipped only when the fallback is
    asked for on purpose (``GOSSIP_FAST_NO_EXTENSIONS`` set for the tests);
    otherwise a missing or broken build fails instead of testing the
    fallback twice (the workers' ``gossip_stats`` say which one they run).
    """
    if request.param == "cython":
        if harness.NO_EXTENSIONS:
            pytest.skip("GOSSIP_FAST_NO_EXTENSIONS is set: testing the fallback only")
        error = compiled_core_error()
        if error:
            pytest.fail(error, pytrace=False)
    return request.param


@pytest.fixture(scope="session")
def fast_kinds():
    """The two gossip_fast workers of mixed clusters: one of each
    implementation (both ``python`` when the fallback is asked for)."""
    return ("python", "python") if harness.NO_EXTENSIONS else ("cython", "python")


@pytest.fixture(scope="session")
def cluster_folder(tmp_path_factory):
    """``cluster_folder(label) -> str``: a new folder for a cluster's files."""
    return lambda label: str(tmp_path_factory.mktemp(label, numbered=True))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and harness.ACTIVE:
        for cluster in sorted(harness.ACTIVE, key=lambda c: c.prefix):
            report.sections.append((f"cluster {cluster.prefix} (worker logs)",
                                    cluster.report()))
    return report


def _results_path(config):
    path = os.environ.get("GOSSIP_FAST_CLUSTER_RESULTS")
    if path:
        return path
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None:
        return None
    return str(factory.getbasetemp() / "cluster-results.json")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not harness.RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("gossip_fast cluster measurements")
    write(f"{'scenario':<28} {'broker':<9} {'event':<11} {'observer':<8} "
          f"{'subject':<8} {'seconds':>8} {'bound':>6}  note")
    for r in harness.RESULTS:
        if "seconds" not in r:
            continue
        bound = f"{r['bound']:.1f}" if r.get("bound") is not None else "-"
        write(f"{r['scenario']:<28} {r['broker']:<9} {r['event']:<11} "
              f"{r.get('observer_kind', '-'):<8} {r.get('subject_kind', '-'):<8} "
              f"{r['seconds']:>8.2f} {bound:>6}  {r.get('note', '')}")
    for r in harness.RESULTS:
        if "seconds" not in r:
            write(json.dumps(r, sort_keys=True))
    path = _results_path(config)
    if path:
        try:
            with open(path, "w") as f:
                json.dump(harness.RESULTS, f, indent=1, sort_keys=True)
            write(f"(written to {path})")
        except OSError as exc:
            write(f"(could not write {path}: {exc})")
