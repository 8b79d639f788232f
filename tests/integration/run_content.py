"""A deterministic run to log through the collector, and checks that it arrived whole."""

from __future__ import annotations

import os
import tempfile

T0 = 1_700_000_000_000
try:  # MLflow 3 logs a model as a logged model of its own, MLflow 2 into the run's artifacts
    from mlflow.entities import LoggedModelStatus

    MLFLOW_3, READY = True, LoggedModelStatus.READY.to_int()
except ImportError:
    MLFLOW_3, READY = False, None


def log_sample_run(collector, experiment_id: str, i: int, with_model: bool = True, points: int = 8):
    """Log run ``i`` (params, two metric histories with steps and timestamps, tags, an artifact,
    optionally a small scikit-learn model); returns (status, run_id, payload_id)."""
    with tempfile.TemporaryDirectory() as tmp:  # executor-local: gone after the task
        artifact = os.path.join(tmp, "report.txt")
        with open(artifact, "w") as f:
            f.write(f"report of run {i}\n" * 20)
        with collector.start_run(experiment_id=experiment_id, run_name=f"run-{i:04d}",
                                 tags={"sweep": "test"}) as run:
            run.log_params({"i": i, "alpha": i / 10, "solver": "lbfgs"})
            for step in range(points):
                run.log_metric("loss", 1.0 / (step + 1 + i), step=step, timestamp=T0 + step)
            run.log_metrics({"acc": i / 1000, "nan_metric": float("nan")}, step=0)
            run.set_tag("task", f"t{i}")
            run.log_artifact(artifact, "reports")
            if with_model:
                from sklearn.ensemble import RandomForestRegressor
                from sklearn.linear_model import LinearRegression

                # every other one a forest: its trees are types MLflow 3's skops format refuses
                estimator = (RandomForestRegressor(n_estimators=3, bootstrap=False, random_state=0) if i % 2
                             else LinearRegression())
                model = estimator.fit([[0.0], [1.0], [2.0]], [0.0, i, 2.0 * i])
                # explicit requirements: inferring them starts a Python process per model
                run.log_model(model, "model", flavor="sklearn", pip_requirements=["scikit-learn"])
    return run.status, run.run_id, run.payload_id


def expected_params(i: int) -> dict[str, str]:
    return {"i": str(i), "alpha": str(i / 10), "solver": "lbfgs"}


def assert_run_complete(client, run, i: int, points: int = 8, with_model: bool = True) -> None:
    """The run holds exactly what ``log_sample_run(i)`` logged, once."""
    import math

    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params == expected_params(i)
    assert run.data.tags["sweep"] == "test" and run.data.tags["task"] == f"t{i}"
    loss = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert loss == [(s, T0 + s, 1.0 / (s + 1 + i)) for s in range(points)]
    acc = client.get_metric_history(run_id, "acc")
    assert [(m.step, m.value) for m in acc] == [(0, i / 1000)]
    nan = client.get_metric_history(run_id, "nan_metric")
    assert len(nan) == 1 and math.isnan(nan[0].value)
    assert artifact_text(client, run, "reports/report.txt") == f"report of run {i}\n" * 20
    names = {f["path"].rsplit("/", 1)[-1] for f in _artifact_listing(client, run)}
    if MLFLOW_3:  # a logged model of its own, linked to the run once; not in the run's artifacts
        models = logged_models_of(client, run, "model")
        assert len(models) == int(with_model), [m.model_id for m in models]
        outputs = client.get_run(run_id).outputs
        assert [o.model_id for o in (outputs.model_outputs if outputs else [])] == [m.model_id for m in models]
        assert all(m.status.to_int() == READY for m in models)
        # the points at the model's step (0) are linked to it, as MLflow's log_model does
        assert all(sorted((p.key, p.step) for p in m.metrics) == [("acc", 0), ("loss", 0), ("nan_metric", 0)]
                   for m in models)
        assert "model" not in names
    else:
        assert ("model" in names) == with_model


def assert_has_model(client, run_id: str, name: str = "model") -> None:
    """The run logged one model ``name``: a READY logged model (MLflow 3) or a folder of its
    artifacts (MLflow 2)."""
    if MLFLOW_3:
        (model,) = logged_models_of(client, client.get_run(run_id), name)
        assert model.status.to_int() == READY
    else:
        assert name in {a.path for a in client.list_artifacts(run_id)}


def logged_models_of(client, run, name: str) -> list:
    """The MLflow 3 logged models named ``name`` whose source is the run."""
    run_id = run.info.run_id
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string=f"name = '{name}' AND source_run_id = '{run_id}'")
    assert not found.token
    return list(found)


def _artifact_url(client, run, path: str = "") -> str:
    # the server proxies artifacts: mlflow-artifacts:/<experiment>/<run>/artifacts
    root = run.info.artifact_uri.split(":", 1)[1].strip("/")
    return f"{client.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/{root}/{path}".rstrip("/")


def artifact_text(client, run, path: str) -> str:
    """An artifact's bytes straight from the server (MLflow's download machinery is slow)."""
    import urllib.request

    with urllib.request.urlopen(_artifact_url(client, run, path), timeout=60) as response:
        return response.read().decode()


def _artifact_listing(client, run) -> list[dict]:
    import json
    import urllib.parse
    import urllib.request

    root = run.info.artifact_uri.split(":", 1)[1].strip("/")
    query = urllib.parse.urlencode({"path": root})
    url = f"{client.tracking_uri}/api/2.0/mlflow-artifacts/artifacts?{query}"
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read()).get("files", [])


def assert_model_loads(run_id: str, i: int, tracking_uri: str) -> None:
    import mlflow
    import mlflow.sklearn

    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.sklearn.load_model(f"runs:/{run_id}/model")
    assert abs(model.predict([[1.0]])[0] - i) < 1e-6


def runs_by_index(client, experiment_id: str) -> dict[int, list]:
    """Every run of the experiment (any state) grouped by the index in its name."""
    from mlflow.entities import ViewType

    out: dict[int, list] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000,
                                  page_token=token)
        for run in page:
            out.setdefault(int(run.info.run_name.split("-")[1]), []).append(run)
        token = page.token
        if not token:
            return out
