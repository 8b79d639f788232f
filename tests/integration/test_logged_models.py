"""Models the collector and the replay upload become MLflow 3 logged models, exactly once,
however the write of one is interrupted; an MLflow 2 server gets them in the run's artifacts."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.failed_runs.collector import DEFERRED, LOGGED, FailedRunCollector
from mlflow_spark_tools.failed_runs.signing import load_signing_key
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.tools.proxy import RateLimitProxy
from mlflow_spark_tools.tracking.logged_models import LoggedModels, write_logged_model
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests
from mlflow_spark_tools.tracking.retries import fail_fast

from .run_content import (
    MLFLOW_3,
    READY,
    assert_model_loads,
    assert_run_complete,
    log_sample_run,
    logged_models_of,
)
from .store_files import read_document, replace_document

pytestmark = pytest.mark.skipif(not MLFLOW_3, reason="logged models are MLflow 3's")

UNLIMITED = RateLimitProfile.load("unlimited")


class RefusingProxy(RateLimitProxy):
    """Answers 429 to the ``nth`` request that matches the pattern ``refuse`` (``"PATCH /api/..."``),
    and lets everything else through."""

    def __init__(self, upstream: str, refuse: str, nth: int = 1, **kwargs) -> None:
        super().__init__(upstream, UNLIMITED, **kwargs)
        self.refuse = re.compile(refuse)
        self.nth = nth
        self.matched = 0
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def admit(self, api_class, request=""):
        with self._lock:
            if self.refuse.match(request):
                self.matched += 1
                if self.matched == self.nth:
                    self.refused.append(request)
                    return 1.0
        return 0.0


@pytest.mark.parametrize("refuse, nth", [
    ("POST /api/2.0/mlflow/runs/outputs", 1),          # created, not linked, no files
    ("POST /api/2.0/mlflow/runs/log-batch", 2),        # linked, its metrics not
    ("PUT /api/2.0/mlflow-artifacts/artifacts/.*/models/.*/conda.yaml", 1),  # some files
    ("PATCH /api/2.0/mlflow/logged-models/", 1),       # every file uploaded, not finalized
])
def test_a_run_deferred_half_way_through_its_model_is_finished_with_the_same_model(
        refuse, nth, tracking_server, client, experiment, tmp_path, signing_key, make_replayer):
    proxy = RefusingProxy(tracking_server.url, refuse, nth).start()
    try:
        collector = FailedRunCollector(tmp_path / "store", tracking_uri=proxy.url, fail_fast_seconds=0)
        status, run_id, payload_id = log_sample_run(collector, experiment, 1)
    finally:
        proxy.stop()
    assert proxy.refused and status == DEFERRED and run_id is not None
    document = read_document(tmp_path / "store", payload_id)
    (entry,) = document["models"]
    started = logged_models_of(client, client.get_run(run_id), "model")
    assert [m.model_id for m in started] == [entry["logged_model_id"]]
    assert started[0].status.to_int() != READY

    summary = make_replayer(tmp_path / "store", tracking_server.url, UNLIMITED,
                            signing_key=load_signing_key()).run()
    assert summary.replayed == 1 and summary.failed == 0
    run = client.get_run(run_id)
    assert_run_complete(client, run, 1)  # one READY model, linked once, every metric point once
    (model,) = logged_models_of(client, run, "model")
    assert model.model_id == entry["logged_model_id"]
    # the run's points at the model's step are the model's metrics, as MLflow's log_model links them
    assert sorted((m.key, m.step) for m in model.metrics) == [("acc", 0), ("loss", 0), ("nan_metric", 0)]
    assert_model_loads(run_id, 1, tracking_server.url)


def test_a_resumed_write_finds_the_model_an_interrupted_one_created(tracking_server, client, experiment, tmp_path):
    """A replay that crashed after the create: the model is found among the run's outputs,
    its files uploaded and finalized; a model found READY is left as it is."""
    requests = TrackingRequests(tracking_server.url, fail_fast(5))
    models = LoggedModels(requests)
    run_id = client.create_run(experiment, run_name="resumed").info.run_id
    pending = models.create(experiment, "model", run_id, {"p": "1"}, {})
    models.link(run_id, pending.model_id)
    uploads = []
    again = write_logged_model(models, experiment_id=experiment, run_id=run_id, name="model", params={}, tags={},
                               upload=uploads.append, look_up=True)
    assert again == pending.model_id and [m.model_id for m in uploads] == [pending.model_id]
    run = client.get_run(run_id)
    (model,) = logged_models_of(client, run, "model")
    assert model.status.to_int() == READY and len(run.outputs.model_outputs) == 1
    # once more: READY, nothing is uploaded or linked again
    assert write_logged_model(models, experiment_id=experiment, run_id=run_id, name="model", params={}, tags={},
                              upload=uploads.append, look_up=True) == pending.model_id
    assert len(uploads) == 1 and len(client.get_run(run_id).outputs.model_outputs) == 1


def test_a_payload_naming_another_runs_model_cannot_write_into_it(tracking_server, client, experiment, tmp_path,
                                                                   closed_proxy, monkeypatch, make_replayer):
    """An attacker who can write the store (unsigned, replayed with --trust-unsigned) points a
    payload's model at a victim's logged model: the victim's model is untouched, the payload's
    run gets a model of its own."""
    import mlflow
    from sklearn.linear_model import LinearRegression

    monkeypatch.delenv("MLFLOW_SPARK_TOOLS_SIGNING_KEY", raising=False)
    mlflow.set_tracking_uri(tracking_server.url)
    victim_run = client.create_run(experiment, run_name="victim").info.run_id
    with mlflow.start_run(run_id=victim_run):
        victim = mlflow.sklearn.log_model(LinearRegression().fit([[0.0], [1.0]], [0.0, 7.0]), name="model",
                                          pip_requirements=["scikit-learn"], serialization_format="cloudpickle")
    collector = FailedRunCollector(tmp_path / "store", tracking_uri=closed_proxy.url, fail_fast_seconds=0)
    status, _, payload_id = log_sample_run(collector, experiment, 2)
    assert status == DEFERRED
    document = read_document(tmp_path / "store", payload_id)
    document["models"][0]["logged_model_id"] = victim.model_id
    replace_document(tmp_path / "store", payload_id, document)

    summary = make_replayer(tmp_path / "store", tracking_server.url, UNLIMITED, trust_unsigned=True).run()
    assert summary.replayed == 1 and summary.failed == 0
    run_id = FailedRunStore(tmp_path / "store").result(payload_id)["run_id"]
    (own,) = logged_models_of(client, client.get_run(run_id), "model")
    assert own.model_id != victim.model_id and own.status.to_int() == READY
    assert [o.model_id for o in client.get_run(victim_run).outputs.model_outputs] == [victim.model_id]
    assert_model_loads(run_id, 2, tracking_server.url)
    assert abs(mlflow.sklearn.load_model(f"models:/{victim.model_id}").predict([[1.0]])[0] - 7.0) < 1e-9


class _Mlflow2Endpoints(BaseHTTPRequestHandler):
    """What an MLflow 2 server answers for the logged-model API it does not have."""

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = b"<!doctype html><title>404 Not Found</title><h1>Not Found</h1>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_server_without_logged_models_gets_the_model_in_the_runs_artifacts(tracking_server, client, experiment,
                                                                              tmp_path):
    old = ThreadingHTTPServer(("127.0.0.1", 0), _Mlflow2Endpoints)
    threading.Thread(target=old.serve_forever, daemon=True).start()
    proxy = RateLimitProxy(tracking_server.url, UNLIMITED, routes={
        "/api/2.0/mlflow/logged-models": f"http://127.0.0.1:{old.server_address[1]}"}).start()
    try:
        collector = FailedRunCollector(tmp_path / "store", tracking_uri=proxy.url)
        results = [log_sample_run(collector, experiment, i) for i in (3, 4)]
        endpoints = proxy.stats()["endpoints"]
    finally:
        proxy.stop()
        old.shutdown()
    assert [r[0] for r in results] == [LOGGED, LOGGED]
    assert endpoints["logged-models"]["requests"] == 1  # asked once, remembered
    for i, (_, run_id, _) in zip((3, 4), results):
        run = client.get_run(run_id)
        assert logged_models_of(client, run, "model") == []
        assert "model/MLmodel" in {a.path for a in client.list_artifacts(run_id, "model")}
        assert_model_loads(run_id, i, tracking_server.url)


def test_a_resumed_write_of_a_second_model_of_the_same_name_is_not_taken_for_the_first(
        tracking_server, client, experiment):
    """MLflow lets a run log two models named ``model``; a replay resuming at the second must
    write the second, not stop at the first (READY under the same name)."""
    models = LoggedModels(TrackingRequests(tracking_server.url, fail_fast(5)))
    run_id = client.create_run(experiment, run_name="two-models").info.run_id
    uploads = []

    def write(earlier):
        return write_logged_model(models, experiment_id=experiment, run_id=run_id, name="model", params={},
                                  tags={}, upload=uploads.append, look_up=True, earlier_same_name=earlier)

    first = write(0)
    second = write(1)  # nothing of it on the server yet: created, not the first one
    assert second != first and [m.model_id for m in uploads] == [first, second]
    assert write(1) == second and write(0) == first and len(uploads) == 2  # both READY: left alone
    third_pending = models.create(experiment, "model", run_id, {}, {})
    models.link(run_id, third_pending.model_id)
    assert write(2) == third_pending.model_id  # the interrupted third is finished
    assert [m.model_id for m in uploads] == [first, second, third_pending.model_id]
    outputs = [o.model_id for o in client.get_run(run_id).outputs.model_outputs]
    assert sorted(outputs) == sorted([first, second, third_pending.model_id])
