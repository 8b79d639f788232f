"""Dataset inputs and metrics linked to models or datasets, logged through the collector directly
or deferred and replayed: the run ends up as MLflow's own fluent API would have made it."""

from __future__ import annotations

import json
import re
import threading

import pandas as pd
import pytest

from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.failed_runs.collector import DEFERRED, LOGGED, FailedRunCollector
from mlflow_spark_tools.failed_runs.signing import load_signing_key
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.tools.proxy import RateLimitProxy

from .run_content import MLFLOW_3, logged_models_of
from .store_files import read_document, replace_document

UNLIMITED = RateLimitProfile.load("unlimited")
T0 = 1_700_000_000_000


def datasets():
    import mlflow.data

    train = mlflow.data.from_pandas(pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 4.0]}),
                                    source="/data/my train.csv", name="train", targets="y")
    test = mlflow.data.from_pandas(pd.DataFrame({"x": [3.0], "y": [9.0]}), source="/data/test.csv", name="test")
    return train, test


def log_run_with_inputs(collector, experiment_id, with_model=MLFLOW_3):
    from sklearn.linear_model import LinearRegression

    train, test = datasets()
    with collector.start_run(experiment_id=experiment_id, run_name="inputs") as run:
        run.log_input(train, context="training", tags={"split": "a"})
        run.log_input(test, context="eval")
        for step in range(3):
            run.log_metric("loss", 1.0 / (step + 1), step=step, timestamp=T0 + step, dataset=train)
        if with_model:
            run.log_model(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), "model", flavor="sklearn",
                          pip_requirements=["scikit-learn"], serialization_format="cloudpickle")
            run.log_metric("test_mse", 0.25, step=0, timestamp=T0 + 10, model="model", dataset=test)
    return run


def fluent_oracle(tracking_uri, experiment_id):
    """The same run logged with MLflow's own fluent API: what ours must equal."""
    import mlflow

    train, test = datasets()
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="oracle") as active:
        mlflow.log_input(train, context="training", tags={"split": "a"})
        mlflow.log_input(test, context="eval")
    return mlflow.MlflowClient(tracking_uri).get_run(active.info.run_id)


def inputs_of(run):
    return sorted(
        (d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source, d.dataset.schema,
         d.dataset.profile, tuple(sorted((t.key, t.value) for t in d.tags)))
        for d in run.inputs.dataset_inputs)


def assert_like_the_oracle(client, run_id, oracle):
    run = client.get_run(run_id)
    assert inputs_of(run) == inputs_of(oracle) and len(inputs_of(run)) == 2
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert history == [(0, 1.0), (1, 0.5), (2, 1 / 3)]  # each point once
    if MLFLOW_3:
        (model,) = logged_models_of(client, run, "model")
        linked = [(m.key, m.value, m.dataset_name, m.dataset_digest) for m in model.metrics if m.key == "test_mse"]
        _, test = datasets()
        assert linked == [("test_mse", 0.25, "test", test.digest)]
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "test_mse")] == [(0, 0.25)]


@pytest.mark.compat
def test_inputs_and_links_logged_directly(tracking_server, client, experiment, tmp_path):
    collector = FailedRunCollector(tmp_path / "store", tracking_uri=tracking_server.url)
    run = log_run_with_inputs(collector, experiment)
    assert run.status == LOGGED
    assert_like_the_oracle(client, run.run_id, fluent_oracle(tracking_server.url, experiment))


@pytest.mark.compat
def test_inputs_and_links_deferred_and_replayed(tracking_server, client, experiment, tmp_path, closed_proxy,
                                                signing_key, make_replayer):
    collector = FailedRunCollector(tmp_path / "store", tracking_uri=closed_proxy.url, fail_fast_seconds=0)
    run = log_run_with_inputs(collector, experiment)
    assert run.status == DEFERRED
    document = read_document(tmp_path / "store", run.payload_id)
    assert [d["name"] for d in document["run"]["inputs"]] == ["train", "test"]
    summary = make_replayer(tmp_path / "store", tracking_server.url, UNLIMITED,
                       signing_key=load_signing_key()).run()
    assert summary.replayed == 1 and summary.failed == 0
    run_id = FailedRunStore(tmp_path / "store").result(run.payload_id)["run_id"]
    assert_like_the_oracle(client, run_id, fluent_oracle(tracking_server.url, experiment))


class RefusingProxy(RateLimitProxy):
    """Answers 429 to the ``nth`` request matching ``refuse`` and lets the rest through."""

    def __init__(self, upstream, refuse, nth=1):
        super().__init__(upstream, UNLIMITED)
        self.refuse, self.nth, self.matched, self._lock = re.compile(refuse), nth, 0, threading.Lock()

    def admit(self, api_class, request=""):
        with self._lock:
            if self.refuse.match(request):
                self.matched += 1
                if self.matched == self.nth:
                    return 1.0
        return 0.0


@pytest.mark.skipif(not MLFLOW_3, reason="metric links are MLflow 3's")
@pytest.mark.parametrize("refuse, nth", [
    ("POST /api/2.0/mlflow/runs/log-inputs", 1),   # history logged, inputs not
    ("POST /api/2.0/mlflow/runs/log-batch", 2),    # inputs logged, the dataset links not
])
def test_a_run_deferred_at_its_inputs_or_links_is_finished_once(refuse, nth, tracking_server, client, experiment,
                                                                 tmp_path, signing_key, make_replayer):
    proxy = RefusingProxy(tracking_server.url, refuse, nth).start()
    try:
        collector = FailedRunCollector(tmp_path / "store", tracking_uri=proxy.url, fail_fast_seconds=0)
        run = log_run_with_inputs(collector, experiment)
    finally:
        proxy.stop()
    assert run.status == DEFERRED and run.run_id is not None
    summary = make_replayer(tmp_path / "store", tracking_server.url, UNLIMITED,
                       signing_key=load_signing_key()).run()
    assert summary.replayed == 1 and summary.failed == 0
    assert_like_the_oracle(client, run.run_id, fluent_oracle(tracking_server.url, experiment))


@pytest.mark.skipif(not MLFLOW_3, reason="metric links are MLflow 3's")
def test_a_payload_cannot_link_points_to_another_runs_model(tracking_server, client, experiment, tmp_path,
                                                             closed_proxy, monkeypatch, make_replayer):
    """An attacker who can write the store edits unsigned payloads to link their points to a
    victim's logged model, from the payload's own experiment or from the victim's (the document
    names it): the points are logged, the victim's model gains nothing; a link to a model name
    the run does not log is quarantined."""
    import mlflow
    from sklearn.linear_model import LinearRegression

    monkeypatch.delenv("MLFLOW_SPARK_TOOLS_SIGNING_KEY", raising=False)
    mlflow.set_tracking_uri(tracking_server.url)
    victim_experiment = client.create_experiment(f"victim-{experiment}")
    # start_run(experiment_id=...), not set_experiment: the active experiment is process-wide
    # and would make later tests' start_run(run_id=...) of other experiments fail
    with mlflow.start_run(experiment_id=victim_experiment):
        victim = mlflow.sklearn.log_model(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), name="model",
                                          pip_requirements=["scikit-learn"], serialization_format="cloudpickle")
    collector = FailedRunCollector(tmp_path / "store", tracking_uri=closed_proxy.url, fail_fast_seconds=0)
    ids = []
    for _ in range(3):
        with collector.start_run(experiment_id=experiment, run_name="hostile") as run:
            run.log_metric("score", 0.5, step=0, timestamp=T0, model_id="m-0000000000000000000000000000000a")
        ids.append(run.payload_id)
    store = tmp_path / "store"
    first = read_document(store, ids[0])
    first["run"]["links"][0][5] = victim.model_id
    replace_document(store, ids[0], first)
    second = read_document(store, ids[1])
    second["run"]["links"][0][4:6] = ["not-a-model-of-the-run", None]
    replace_document(store, ids[1], second)

    third = read_document(store, ids[2])
    third["run"]["experiment_id"] = victim_experiment
    third["run"]["links"][0][5] = victim.model_id
    third["run"]["links"].append(["only_linked", 9.0, T0, 0, None, victim.model_id, None, None])
    replace_document(store, ids[2], third)

    summary = make_replayer(tmp_path / "store", tracking_server.url, UNLIMITED, trust_unsigned=True).run()
    assert (summary.replayed, summary.failed) == (2, 1)
    for payload_id in (ids[0], ids[2]):
        run_id = FailedRunStore(tmp_path / "store").result(payload_id)["run_id"]
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "score")] == [(0, 0.5)]
    # a point the document had only as a link is logged without it, as the warning says
    assert [m.value for m in client.get_metric_history(run_id, "only_linked")] == [9.0]
    assert [m.key for m in client.get_logged_model(victim.model_id).metrics or []] == []
    reason = json.loads((tmp_path / "store" / "failed" / f"{ids[1]}.reason.json").read_text())["reason"]
    assert "not-a-model-of-the-run" in reason and "does not log" in reason


def test_a_link_to_a_model_the_run_does_not_log_is_refused_in_the_task(tracking_server, experiment, tmp_path):
    collector = FailedRunCollector(tmp_path / "store", tracking_uri=tracking_server.url)
    with pytest.raises(ValueError, match="'champion'.*does not log"):
        with collector.start_run(experiment_id=experiment) as run:
            run.log_metric("acc", 0.9, model="champion")
