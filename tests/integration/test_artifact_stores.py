"""Every request paced and counted, on the three artifact stores users have.

- ``proxied``: the tracking server serves artifacts (``mlflow-artifacts:/`` URIs);
- ``direct``: ``--default-artifact-root DIR`` (plain path URIs, MLflow's local repository);
- ``databricks``: ``dbfs:/databricks/mlflow-tracking/...`` URIs written by MLflow's real
  ``DatabricksArtifactRepository``, which asks a loopback stand-in of the workspace for signed
  URLs through the rate-limit proxy (routed there) and uploads to the stand-in's storage.

Runs with an artifact file, an artifact directory and (every third) a model are deferred by the
collector and replayed through a proxy with tight limits: the replay's own per-endpoint counts
must equal what the proxy saw (no request it did not pace), with no 429, and every run must
arrive exactly once with the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.failed_runs.collector import DEFERRED, FailedRunCollector
from mlflow_spark_tools.failed_runs.signing import load_signing_key
from mlflow_spark_tools.tools.proxy import RateLimitProxy
from tests.support.databricks_artifacts import DEFAULT_ARTIFACT_ROOT, DatabricksArtifactStore, routes
from tests.support.local_server import LocalTrackingServer

from .run_content import MLFLOW_3, READY, logged_models_of, runs_by_index

SETUPS = ("proxied", "direct", "databricks")
TIGHT = {"experiment_management": 5, "search_runs": 5, "log_batch": 8, "other": 30}
CLOSED = {"experiment_management": 0.001, "search_runs": 0.001, "log_batch": 0.001, "other": 0.001}


class Setup:
    """A tracking server with one kind of artifact store, and how to read a run's bytes back."""

    def __init__(self, name: str, server: LocalTrackingServer, store: DatabricksArtifactStore | None = None,
                 token: str | None = None) -> None:
        self.name, self.server, self.store, self.token = name, server, store, token

    def proxy(self, limits: dict[str, float], safety_factor: float = 1.0) -> RateLimitProxy:
        profile = RateLimitProfile(name="test", limits=limits, safety_factor=safety_factor)
        return RateLimitProxy(self.server.url, profile,
                              routes=routes(self.store) if self.store is not None else None).start()

    def artifact_bytes(self, run, path: str) -> bytes:
        return self.bytes_at(run.info.artifact_uri, run.info.run_id, path)

    def model_bytes(self, model, path: str) -> bytes:
        """A file of an MLflow 3 logged model, from its own artifact location."""
        return self.bytes_at(model.artifact_location, model.model_id, path)

    def bytes_at(self, uri: str, owner: str, path: str) -> bytes:
        if self.name == "databricks":
            return self.store.file(owner, path).read_bytes()
        if self.name == "direct":
            return (Path(urllib.parse.urlsplit(uri).path) / path).read_bytes()
        root = uri.split(":", 1)[1].strip("/")
        url = f"{self.server.url}/api/2.0/mlflow-artifacts/artifacts/{root}/{path}"
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()


@pytest.fixture(scope="module")
def setups(tracking_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifact-setups")
    token = "dapi" + uuid.uuid4().hex
    store = DatabricksArtifactStore(root / "cloud", token).start()
    direct = LocalTrackingServer(root / "direct", artifact_root=str(root / "direct-artifacts")).start()
    databricks = LocalTrackingServer(root / "databricks", artifact_root=DEFAULT_ARTIFACT_ROOT).start()
    yield {"proxied": Setup("proxied", tracking_server), "direct": Setup("direct", direct),
           "databricks": Setup("databricks", databricks, store, token)}
    direct.stop()
    databricks.stop()
    store.stop()


def _content(i: int) -> dict[str, bytes]:
    seed = f"run {i} ".encode()
    return {"reports/report.bin": os.urandom(64) + seed * 50, "bundle/a.txt": seed * 3,
            "bundle/deep/b.json": json.dumps({"i": i}).encode()}


def _log(collector, experiment: str, i: int, tmp: Path):
    files = _content(i)
    work = tmp / f"w{i}"
    for rel, data in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)
    with collector.start_run(experiment_id=experiment, run_name=f"run-{i:04d}") as run:
        run.log_params({"i": i})
        run.log_metric("loss", 1.0 / (i + 1), step=1)
        run.log_artifact(str(work / "reports" / "report.bin"), "reports")
        run.log_artifact(str(work / "bundle"))
        if i % 3 == 0:
            from sklearn.linear_model import LinearRegression

            model = LinearRegression().fit([[0.0], [1.0]], [0.0, float(i)])
            run.log_model(model, "model", flavor="sklearn", pip_requirements=["scikit-learn"])
    return run.status, files


@pytest.mark.parametrize("name", SETUPS)
def test_replay_paces_every_request_and_delivers_the_same_bytes(name, setups, tmp_path, monkeypatch, signing_key,
                                                               make_replayer):
    setup = setups[name]
    from mlflow import MlflowClient

    client = MlflowClient(setup.server.url)
    experiment = client.create_experiment(f"{name}-{uuid.uuid4().hex[:8]}")
    closed = setup.proxy(CLOSED)
    tight = setup.proxy(TIGHT)
    calls_before = Counter(setup.store.calls) if setup.store is not None else Counter()
    if setup.store is not None:  # MLflow's Databricks repository finds the workspace here
        monkeypatch.setenv("DATABRICKS_HOST", tight.url)
        monkeypatch.setenv("DATABRICKS_TOKEN", setup.token)
    try:
        collector = FailedRunCollector(tmp_path / "store", tracking_uri=closed.url, fail_fast_seconds=0.3)
        expected = {}
        for i in range(6):
            status, files = _log(collector, experiment, i, tmp_path)
            assert status == DEFERRED
            expected[i] = files
        tight.reset()
        profile = RateLimitProfile(name="tight", limits=TIGHT, safety_factor=0.9)
        summary = make_replayer(tmp_path / "store", tight.url, profile, max_workers=4,
                                signing_key=load_signing_key()).run_until_empty(pause=0.2)
        seen = tight.stats()
    finally:
        closed.stop()
        tight.stop()
    assert summary.replayed == 6 and summary.failed == 0 and summary.pending == 0
    # every request the replay caused, MLflow's repository's own included, was paced and counted
    ours = {k: v["requests"] for k, v in summary.endpoints.items()}
    theirs = {k: v["requests"] for k, v in seen["endpoints"].items()}
    assert ours == theirs, (ours, theirs)
    assert sum(seen["rate_limited"].values()) == 0 and sum(summary.throttled.values()) == 0
    if name == "databricks":
        # each file one signed URL (run 0's files went up before its deferral: the first
        # requests of the closed proxy pass), the replay's through the proxy
        calls = setup.store.calls - calls_before
        assert calls["credentials-for-write"] == 6 * 3 and theirs["artifacts/credentials-for-write"] >= 5 * 3
        if MLFLOW_3:  # two models, each file through the logged-model credentials
            model_credentials = theirs["logged-models/{id}/artifacts/credentials-for-upload"]
            assert model_credentials == calls["logged-models/credentials-for-upload"] >= 2 * 4
    else:
        assert "artifacts/credentials-for-write" not in theirs
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == list(range(6))
    for i, files in expected.items():
        assert len(runs[i]) == 1, f"run {i} arrived {len(runs[i])} times"
        run = runs[i][0]
        assert run.data.params == {"i": str(i)} and run.info.status == "FINISHED"
        for rel, data in files.items():
            assert setup.artifact_bytes(run, rel) == data, (i, rel)
        if i % 3 == 0:
            assert_model_logged(setup, client, run, i)


def assert_model_logged(setup: Setup, client, run, i: int) -> None:
    """Run ``i``'s model is where MLflow 3 keeps it (a logged model of its own, READY, linked
    to the run once, MLmodel naming both) or, under MLflow 2, in the run's artifacts."""
    import yaml

    if not MLFLOW_3:
        assert b"flavors" in setup.artifact_bytes(run, "model/MLmodel")
        return
    (model,) = logged_models_of(client, run, "model")
    assert model.status.to_int() == READY and model.params == {"i": str(i)}
    assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs] == [model.model_id]
    mlmodel = yaml.safe_load(setup.model_bytes(model, "MLmodel"))
    assert mlmodel["model_id"] == model.model_id and mlmodel["run_id"] == run.info.run_id
    assert "sklearn" in mlmodel["flavors"] and setup.model_bytes(model, "model.pkl")
    if setup.name == "databricks":
        assert model.artifact_location.startswith(f"{DEFAULT_ARTIFACT_ROOT}/{run.info.experiment_id}/logged_models/")


JOB = Path(__file__).parents[1] / "support" / "udf_sweep_job.py"


def test_udf_sweep_on_a_databricks_shaped_store_loses_nothing(setups, tmp_path, signing_key, make_replayer):
    """Collector in the Python workers of classic Spark, artifacts through MLflow's Databricks
    repository, limits that defer runs mid-way: every run once, every artifact in storage."""
    setup = setups["databricks"]
    from mlflow import MlflowClient

    client = MlflowClient(setup.server.url)
    experiment = client.create_experiment(f"udf-dbx-{uuid.uuid4().hex[:8]}")
    proxy = setup.proxy({**TIGHT, "other": 40, "log_batch": 1})
    runs = 24
    try:
        out = tmp_path / "results.json"
        env = dict(os.environ, PYSPARK_PYTHON=sys.executable, RUST_LOG="error",
                   DATABRICKS_HOST=proxy.url, DATABRICKS_TOKEN=setup.token)
        for variable in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "MLFLOW_TRACKING_URI"):
            env.pop(variable, None)
        done = subprocess.run(
            [sys.executable, str(JOB), "--engine", "classic", "--tracking-uri", proxy.url, "--experiment-id",
             experiment, "--store", str(tmp_path / "store"), "--runs", str(runs), "--fail-fast-seconds", "2",
             "--out", str(out)],
            capture_output=True, text=True, timeout=900, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads(out.read_text())["results"]
        assert any(r[1] == "deferred" for r in results)
        proxy.reset()
        os.environ["DATABRICKS_HOST"], os.environ["DATABRICKS_TOKEN"] = proxy.url, setup.token
        try:
            summary = make_replayer(tmp_path / "store", proxy.url,
                                    RateLimitProfile(name="t", limits=proxy.profile.limits, safety_factor=0.9),
                                    max_workers=8, signing_key=load_signing_key()).run_until_empty(pause=0.2)
        finally:
            del os.environ["DATABRICKS_HOST"], os.environ["DATABRICKS_TOKEN"]
        assert summary.failed == 0 and summary.pending == 0 and sum(summary.throttled.values()) == 0
    finally:
        proxy.stop()
    by_index = runs_by_index(client, experiment)
    assert sorted(by_index) == list(range(runs)) and all(len(by_index[i]) == 1 for i in range(runs))
    for i in range(runs):
        run = by_index[i][0]
        assert setup.store.file(run.info.run_id, "reports/report.txt").read_text() == f"report of run {i}\n" * 20
        if MLFLOW_3:
            (model,) = logged_models_of(client, run, "model")
            assert model.status.to_int() == READY and setup.store.file(model.model_id, "MLmodel").is_file()
        else:
            assert setup.store.file(run.info.run_id, "model/MLmodel").is_file()


def test_a_replay_meeting_429s_slows_down_and_goes_on_with_the_same_payloads(closed_proxy, make_proxy, client,
                                                                          experiment, tmp_path, signing_key, make_replayer):
    """Back-pressure: with a profile far above what the server grants, 429s lower the rate and
    are waited out; no payload goes back to pending for them."""
    from .run_content import assert_run_complete, log_sample_run

    collector = FailedRunCollector(tmp_path / "store", tracking_uri=closed_proxy.url, fail_fast_seconds=0.3)
    for i in range(10):
        assert log_sample_run(collector, experiment, i, with_model=False)[0] == DEFERRED
    stingy = make_proxy({"other": 4, "log_batch": 2}, safety_factor=1.0)
    generous = RateLimitProfile(name="generous", limits=dict.fromkeys(
        ("experiment_management", "search_runs", "log_batch", "other"), 50), safety_factor=1.0)
    summary = make_replayer(tmp_path / "store", stingy.url, generous, max_workers=8).run()
    assert summary.replayed == 10 and summary.released == 0 and summary.failed == 0
    assert summary.throttled["other"] > 0  # the server pushed back...
    assert summary.rates["other"] < 50  # ...and the class slowed down
    assert stingy.stats()["rate_limited"]["other"] == summary.throttled["other"]
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == list(range(10))
    for i in range(10):
        assert len(runs[i]) == 1
        assert_run_complete(client, runs[i][0], i, with_model=False)
