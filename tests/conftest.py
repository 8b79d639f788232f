"""Shared fixtures: a real MLflow tracking server, the Spark engine (the embedded one, or classic
local JVM Spark with Delta Lake), replayers holding their store's lease on it, and the failed-run
store on a local disk and on a FUSE mount with the semantics of Databricks' object-store mounts.

A test process runs on one engine, named by ``MLFLOW_SPARK_TOOLS_TEST_ENGINE``: ``embedded``
(the default: every test) or ``classic`` (only the tests marked ``jvm``). pyspark cannot hold a
classic session and a Spark Connect session in one process, so ``make test`` runs the marked
tests a second time in a process of their own.
"""

from __future__ import annotations

import itertools
import math
import os
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
os.environ.setdefault("MLFLOW_SPARK_TOOLS_CONF", str(Path(__file__).parent / "support" / "tests_conf.yaml"))

UNIT_TESTS = Path(__file__).parent / "unit"
EMBEDDED, CLASSIC = "embedded", "classic"
TEST_ENGINE = os.environ.get("MLFLOW_SPARK_TOOLS_TEST_ENGINE", EMBEDDED)
if TEST_ENGINE not in (EMBEDDED, CLASSIC):
    raise SystemExit(f"MLFLOW_SPARK_TOOLS_TEST_ENGINE={TEST_ENGINE!r}: use {EMBEDDED} or {CLASSIC}.")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "compat: part of `make compat`, the run on the oldest supported stack (Databricks Runtime "
        "15.4 LTS ML: pyspark 3.5.0, MLflow 2.13.1, pandas 1.5.3, pyarrow 14; constraints-compat.txt)",
    )
    config.addinivalue_line(
        "markers",
        "jvm: also run on classic local JVM Spark (local[2]) with Delta Lake's jars, the engine "
        "Databricks runs (MLFLOW_SPARK_TOOLS_TEST_ENGINE=classic; `make test` and `make compat` do)",
    )


def pytest_collection_modifyitems(config, items):
    # The unit tests take seconds: all of them are in the compat run. Integration tests are
    # marked one by one, the core paths within a few minutes.
    for item in items:
        if UNIT_TESTS in item.path.parents:
            item.add_marker(pytest.mark.compat)
    if TEST_ENGINE == CLASSIC:
        kept = [item for item in items if item.get_closest_marker("jvm")]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    from tests.support.local_server import LocalTrackingServer

    server = LocalTrackingServer(tmp_path_factory.mktemp("mlflow-server"), workers=2).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(tracking_server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_server.url)


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    """The process's Spark engine (see the module docstring)."""
    if TEST_ENGINE == CLASSIC:
        from tests.support.classic_spark import start_classic

        eng = start_classic(tmp_path_factory.mktemp("warehouse"))
        yield eng
        eng.spark.stop()
        return
    from mlflow_spark_tools.spark.engine import start_embedded

    eng = start_embedded(tmp_path_factory.mktemp("warehouse"))
    yield eng
    eng.stop()


@pytest.fixture(autouse=True)
def _stays_classic():
    """On the classic engine, a test that opened a Spark Connect session has switched the whole
    process to Spark Connect: fail it by name rather than every test after it."""
    yield
    if TEST_ENGINE == CLASSIC and "SPARK_CONNECT_MODE_ENABLED" in os.environ:
        pytest.fail("This test opened a Spark Connect session in the classic engine's process; "
                    "give it the `engine` fixture or leave it out of the `jvm` tests.")


LISTING_DELAY = 0.25  # a listing on the object-store mount shows a new file this late


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """A FUSE mount that refuses rename, link, symlink and utime, takes files written once and
    sequentially only, lists new files late and reports mtimes from another clock
    (tests/support/object_store_fuse.py)."""
    from tests.support.object_store_fuse import ObjectStoreMount, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no object-store FUSE mount: {reason}")
    base = tmp_path_factory.mktemp("objectstore")
    with ObjectStoreMount(base / "backing", base / "mount", listing_delay=LISTING_DELAY) as mount:
        yield mount


@pytest.fixture(params=["local disk", "object store"])
def store_path(request, tmp_path):
    """Where a test's failed-run store goes: a local directory, or a folder with a space in its
    name on the object-store FUSE mount."""
    if request.param == "local disk":
        return tmp_path / "store"
    return request.getfixturevalue("object_store") / f"store {uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_replayer(engine):
    """``make_replayer(store_path, tracking_uri, profile=unlimited, lease_seconds=30, **kwargs)``:
    a :class:`Replayer` holding its store's lease through the session's engine; closed (its
    lease given up) after the test."""
    from mlflow_spark_tools.config import RateLimitProfile
    from mlflow_spark_tools.failed_runs.lease import DeltaLease
    from mlflow_spark_tools.failed_runs.replayer import Replayer

    made = []

    def make(store, tracking_uri, profile=None, *, lease_seconds=30.0, **kwargs):
        lease = DeltaLease(engine, "replay_leases", store, lease_seconds=lease_seconds)
        kwargs.setdefault("marker_settle_seconds", 0.2)
        replayer = Replayer(str(store), tracking_uri, profile or RateLimitProfile.load("unlimited"), lease=lease,
                            **kwargs)
        made.append(replayer)
        return replayer

    yield make
    for replayer in made:
        replayer.close()


@pytest.fixture
def settings(tracking_server):
    from mlflow_spark_tools.config import load_settings

    # Tests assert which kind of refresh a build makes: not chosen by the time the last ones
    # took (tests/integration/test_refresh_cost.py tests that choice).
    return load_settings(environ={}).with_overrides(
        tracking_uri=tracking_server.url, rate_limit_profile="unlimited", tables__refresh_by_cost=False
    )


_counter = itertools.count()


@pytest.fixture
def experiment(client):
    """A new, empty experiment; returns its id."""
    return client.create_experiment(f"test-{next(_counter)}-{uuid.uuid4().hex[:8]}")


def cells_equal(a, b) -> bool:
    """Cell equality where NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.fixture
def make_proxy(tracking_server):
    """Start rate-limit proxies in front of the test server: ``make_proxy(limits, latency_ms)``."""
    from mlflow_spark_tools.config import RateLimitProfile
    from mlflow_spark_tools.tools.proxy import RateLimitProxy

    started = []

    def make(limits: dict[str, float] | None = None, latency_ms: float = 0.0, safety_factor: float = 0.9):
        all_limits = {"experiment_management": 1000, "search_runs": 1000, "log_batch": 1000, "other": 1000}
        all_limits.update(limits or {})
        profile = RateLimitProfile(name="test", limits=all_limits, safety_factor=safety_factor)
        proxy = RateLimitProxy(tracking_server.url, profile, latency_ms=latency_ms).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def closed_proxy(make_proxy):
    """A proxy that lets (almost) nothing through: every run a collector writes is deferred."""
    import urllib.request

    proxy = make_proxy({"other": 0.001, "log_batch": 0.001, "search_runs": 0.001,
                        "experiment_management": 0.001})
    for path in ("runs/create", "runs/log-batch", "runs/search", "experiments/create"):
        request = urllib.request.Request(f"{proxy.url}/api/2.0/mlflow/{path}", data=b"{}",
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).close()  # spends the one token
        except Exception:
            pass
    return proxy


@pytest.fixture
def signing_key(monkeypatch):
    """A signing key in the environment, as a job cluster would have it from a secret."""
    key = "test-signing-key-" + uuid.uuid4().hex
    monkeypatch.setenv("MLFLOW_SPARK_TOOLS_SIGNING_KEY", key)
    return key


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory):
    """This checkout built with ``pip wheel`` (no dependencies), once per test session."""
    from pathlib import Path

    from mlflow_spark_tools.databricks.deploy import build_wheel

    return build_wheel(Path(__file__).resolve().parents[1], tmp_path_factory.mktemp("dist"), isolated=False)


@pytest.fixture
def conf(tmp_path):
    """A copy of the shipped conf/ (deployment.yaml, jobs/ ...) to edit."""
    import shutil

    from mlflow_spark_tools.config import conf_dir

    target = tmp_path / "conf"
    shutil.copytree(conf_dir(), target)
    return target


@pytest.fixture
def workspace(monkeypatch):
    """The loopback workspace API, with databricks-sdk pointed at it through the environment."""
    from tests.integration.workspace_api import WorkspaceAPI

    token = "dapi-test-" + uuid.uuid4().hex
    api = WorkspaceAPI(token).start()
    for name in [n for n in os.environ if n.startswith(("DATABRICKS_", "ARM_", "AZURE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_HOST", api.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", token)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", os.devnull)
    yield api
    api.stop()
