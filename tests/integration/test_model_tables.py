"""The dataset inputs, logged models and registry tables, checked cell by cell against
MlflowClient on a real server: exp_<id>_inputs (get_run().inputs), exp_<id>_models
(search_logged_models), registered_models and model_versions (search_registered_models,
search_model_versions)."""

from __future__ import annotations

import json
import threading
import uuid
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner

from mlflow_spark_tools.cli.main import cli
from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.spark.arrow import to_arrow
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.tables.build import build_experiment_tables
from mlflow_spark_tools.tables.registry_tables import refresh_registry_tables
from mlflow_spark_tools.tools.proxy import RateLimitProxy
from mlflow_spark_tools.tracking import model_search
from mlflow_spark_tools.tracking.client import RetryingClient
from mlflow_spark_tools.tracking.model_search import RegistryReader
from tests.conftest import cells_equal

from .helpers import build, log_run, table_dir
from .run_content import MLFLOW_3

pytestmark = pytest.mark.jvm

DB = "mlflow_exp"
UNLIMITED = RateLimitProfile("unlimited", {"experiment_management": 1e6, "search_runs": 1e6,
                                           "log_batch": 1e6, "other": 1e6})


def rows(engine, sql):
    return to_arrow(engine.spark.sql(sql)).to_pylist()


def as_dict(entries):
    """A map column as collected (a list of pairs) as a dict."""
    return dict(entries) if entries is not None else None


def delta_commits(engine, database, table):
    return len(list((table_dir(engine, database, table) / "_delta_log").glob("*.json")))


def dataset(name, values, source="s3://bucket/data.csv"):
    return mlflow.data.from_pandas(pd.DataFrame({"x": values, "y": [v * 2.0 for v in values]}), source=source,
                                   name=name)


def log_inputs(tracking_uri, experiment_id, inputs, finish=True):
    """A run that logs ``inputs``: (dataset, context, tags) triples; returns its id."""
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.start_run(experiment_id=experiment_id)
    try:
        for data, context, tags in inputs:
            mlflow.log_input(data, context=context, tags=tags)
    finally:
        if finish:
            mlflow.end_run()
        else:
            mlflow.end_run(status="RUNNING")
    return run.info.run_id


def expected_inputs(client, run_ids):
    found = []
    for run_id in run_ids:
        for entry in client.get_run(run_id).inputs.dataset_inputs:
            tags = {t.key: t.value for t in entry.tags}
            d = entry.dataset
            found.append((run_id, d.name, d.digest, d.source_type, d.source, tags.get("mlflow.data.context"),
                          d.schema, d.profile, tags))
    return sorted(found, key=repr)


def table_inputs(engine, database, experiment_id):
    got = rows(engine, f"SELECT * FROM {database}.exp_{experiment_id}_inputs")
    return sorted(((r["run_id"], r["name"], r["digest"], r["source_type"], r["source"], r["context"], r["schema"],
                    r["profile"], as_dict(r["tags"])) for r in got), key=repr)


# ---- dataset inputs -------------------------------------------------------------------------


@pytest.mark.compat
def test_inputs_table_equals_the_client_through_full_and_incremental_builds(
        settings, engine, client, tracking_server, experiment):
    settings = settings.with_overrides(tables__watermark_margin_seconds=0)
    train, val = dataset("train", [1.0, 2.0, 3.0]), dataset("val", [4.0], source="/dbfs/data/val.parquet")
    both = log_inputs(tracking_server.url, experiment, [(train, "training", {"split": "a"}), (val, "validation", None)])
    plain = log_run(client, experiment, metrics={"rmse": 0.5})
    doomed = log_inputs(tracking_server.url, experiment, [(train, "training", None)])
    open_run = log_inputs(tracking_server.url, experiment, [], finish=False)
    first = build(settings, experiment, engine)

    assert (first.inputs_table, first.inputs) == (f"{DB}.exp_{experiment}_inputs", 3)
    got = table_inputs(engine, DB, experiment)
    assert got == expected_inputs(client, [both, plain, doomed, open_run])
    assert {r[5] for r in got} == {"training", "validation"}
    assert [r[8] for r in got if r[0] == both and r[1] == "train"] == [{"mlflow.data.context": "training", "split": "a"}]
    assert delta_commits(engine, DB, f"exp_{experiment}_inputs") == 1
    types = {f.name: f.dataType.simpleString() for f in engine.spark.table(f"{DB}.exp_{experiment}_inputs").schema}
    assert types["tags"] == "map<string,string>" and types["schema"] == "string" and types["profile"] == "string"

    # the unfinished run logs an input and ends, a new run logs one, a run is deleted
    mlflow.set_tracking_uri(tracking_server.url)
    with mlflow.start_run(run_id=open_run):
        mlflow.log_input(dataset("holdout", [9.0, 8.0]), context="evaluation")
    new = log_inputs(tracking_server.url, experiment, [(val, "validation", {"fold": "2"})])
    client.delete_run(doomed)
    second = build(settings, experiment, engine)

    assert second.mode == "incremental" and second.inputs == 2  # the open run's and the new run's
    assert table_inputs(engine, DB, experiment) == expected_inputs(client, [both, plain, open_run, new])
    assert delta_commits(engine, DB, f"exp_{experiment}_inputs") == 2  # one MERGE
    # the runs with the datasets they trained on: a plain join
    trained = rows(engine, f"SELECT r.run_id, i.name, i.digest FROM {DB}.exp_{experiment} r "
                           f"JOIN {DB}.exp_{experiment}_inputs i ON i.run_id = r.run_id "
                           f"WHERE i.context = 'training' ORDER BY r.run_id")
    assert [(r["run_id"], r["name"]) for r in trained] == [(both, "train")]
    assert trained[0]["digest"] == client.get_run(both).inputs.dataset_inputs[0].dataset.digest


@pytest.mark.compat
def test_runs_without_inputs_give_an_empty_inputs_table(settings, engine, client, experiment):
    log_run(client, experiment, metrics={"m": 1.0})
    summary = build(settings, experiment, engine)
    assert summary.inputs == 0
    assert engine.spark.sql(f"SELECT count(*) FROM {DB}.exp_{experiment}_inputs").collect()[0][0] == 0
    assert build(settings, experiment, engine).mode == "incremental"


# ---- logged models --------------------------------------------------------------------------


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def expected_models(client, experiment_id):
    found, token = [], None
    while True:
        page = client.search_logged_models(experiment_ids=[experiment_id], page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    return {m.model_id: m for m in found}


def assert_models_equal_the_client(engine, client, experiment_id):
    table = {r["model_id"]: r for r in rows(engine, f"SELECT * FROM {DB}.exp_{experiment_id}_models")}
    models = expected_models(client, experiment_id)
    assert set(table) == set(models) and models
    for model_id, m in models.items():
        row = table[model_id]
        assert (row["name"], row["source_run_id"], row["status"], row["model_type"]) == (
            m.name, m.source_run_id or None, m.status.value, m.model_type or None)
        assert int(row["creation_time"].timestamp() * 1000) == m.creation_timestamp
        assert int(row["last_updated_time"].timestamp() * 1000) == m.last_updated_timestamp
        assert row["artifact_location"] == m.artifact_location
        assert as_dict(row["params"]) == m.params and as_dict(row["tags"]) == m.tags
        got = sorted(((x["key"], x["step"], int(x["timestamp"].timestamp() * 1000), x["dataset_name"],
                       x["dataset_digest"], x["run_id"]), x["value"]) for x in row["metrics"])
        want = sorted(((x.key, x.step, x.timestamp, x.dataset_name or None, x.dataset_digest or None,
                        x.run_id or None), x.value) for x in m.metrics)
        assert [g[0] for g in got] == [w[0] for w in want], model_id
        assert all(cells_equal(g[1], w[1]) for g, w in zip(got, want)), model_id
    return table


@pytest.mark.skipif(not MLFLOW_3, reason="logged models are MLflow 3's")
def test_models_table_equals_search_logged_models_paged_through_the_client(
        settings, engine, client, tracking_server, experiment, monkeypatch):
    from sklearn.linear_model import LinearRegression

    mlflow.set_tracking_uri(tracking_server.url)
    train = dataset("train", [1.0, 2.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_param("alpha", "0.5")
            mlflow.log_input(train, context="training")
            sk = mlflow.sklearn.log_model(LinearRegression().fit([[1.0], [2.0]], [1.0, 2.0]), name="ridge",
                                          serialization_format="cloudpickle", params={"fit_intercept": "true"},
                                          tags={"team": "ml"}, model_type="regressor")
            mlflow.log_metric("rmse", 0.25, step=3, model_id=sk.model_id, dataset=train)
            mlflow.log_metric("rmse", 0.5, step=1, model_id=sk.model_id, dataset=train)
            mlflow.log_metric("mae", float("inf"), model_id=sk.model_id)
            py = mlflow.pyfunc.log_model(name="echo", python_model=_Echo())
    pending = mlflow.initialize_logged_model(name="draft", experiment_id=experiment, model_type="agent",
                                             tags={"stage": "draft"})
    other_run = log_run(client, experiment, metrics={"rmse": 0.9})

    monkeypatch.setattr(model_search, "LOGGED_MODELS_PAGE", 2)  # three models: two pages
    proxy = RateLimitProxy(tracking_server.url, UNLIMITED).start()
    try:
        summary = build(settings.with_overrides(tracking_uri=proxy.url), experiment, engine)
        requests = proxy.stats()["endpoints"]["logged-models/search"]["requests"]
    finally:
        proxy.stop()
    assert (summary.models_table, summary.models) == (f"{DB}.exp_{experiment}_models", 3)
    assert requests == 2
    table = assert_models_equal_the_client(engine, client, experiment)
    assert table[sk.model_id]["status"] == "READY" and table[pending.model_id]["status"] == "PENDING"
    assert table[pending.model_id]["source_run_id"] is None and table[py.model_id]["model_type"] is None
    types = {f.name: f.dataType.simpleString() for f in engine.spark.table(f"{DB}.exp_{experiment}_models").schema}
    assert types["params"] == "map<string,string>" and types["creation_time"] == "timestamp"
    assert types["metrics"].startswith("array<struct<key:string,value:double,step:bigint,timestamp:timestamp")

    # runs with their models and the models' metrics per dataset, in SQL
    joined = rows(engine, f"WITH model_metrics AS (SELECT m.name, m.source_run_id, x.key, x.step, x.value, "
                          f"x.dataset_name FROM {DB}.exp_{experiment}_models m LATERAL VIEW explode(m.metrics) e AS x) "
                          f"SELECT r.run_id, mm.name, mm.key, mm.step, mm.value FROM {DB}.exp_{experiment} r "
                          f"JOIN model_metrics mm ON mm.source_run_id = r.run_id "
                          f"WHERE mm.dataset_name = 'train' ORDER BY mm.step")
    assert [(j["run_id"], j["name"], j["key"], j["step"], j["value"]) for j in joined] == [
        (run.info.run_id, "ridge", "rmse", 1, 0.5), (run.info.run_id, "ridge", "rmse", 3, 0.25)]
    assert other_run not in {r["source_run_id"] for r in table.values()}

    # every build rewrites the table in one overwrite, whatever changed in the runs
    mlflow.set_logged_model_tags(pending.model_id, {"stage": "review"})
    mlflow.finalize_logged_model(pending.model_id, "READY")
    commits = delta_commits(engine, DB, f"exp_{experiment}_models")
    again = build(settings, experiment, engine)
    assert again.mode == "incremental" and again.models == 3
    assert delta_commits(engine, DB, f"exp_{experiment}_models") == commits + 1
    table = assert_models_equal_the_client(engine, client, experiment)
    assert (table[pending.model_id]["status"], as_dict(table[pending.model_id]["tags"])["stage"]) == ("READY", "review")


class _NoLoggedModels(BaseHTTPRequestHandler):
    """What an MLflow 2 server answers to the logged-model API."""

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = b"<!doctype html><title>404 Not Found</title>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.compat
def test_a_server_or_client_without_logged_models_gives_no_models_table_and_no_error(
        settings, engine, client, tracking_server):
    experiments = [client.create_experiment(f"no-models-{uuid.uuid4().hex[:8]}") for _ in range(2)]
    for experiment in experiments:
        log_run(client, experiment, metrics={"m": 1.0})
    old = ThreadingHTTPServer(("127.0.0.1", 0), _NoLoggedModels)
    threading.Thread(target=old.serve_forever, daemon=True).start()
    proxy = RateLimitProxy(tracking_server.url, UNLIMITED, routes={
        "/api/2.0/mlflow/logged-models/search": f"http://127.0.0.1:{old.server_address[1]}"}).start()
    try:
        result = build_experiment_tables(settings.with_overrides(tracking_uri=proxy.url), experiment_ids=experiments,
                                         engine=engine)
        asked = proxy.stats()["endpoints"].get("logged-models/search", {}).get("requests", 0)
    finally:
        proxy.stop()
        old.shutdown()
    assert result.exit_code == 0, [s.error for s in result.summaries]
    assert [(s.models_table, s.models) for s in result.summaries] == [(None, 0), (None, 0)]
    assert asked == (1 if MLFLOW_3 else 0)  # asked once per build (an MLflow 2 client never asks)
    for experiment in experiments:
        assert not engine.spark.catalog.tableExists(f"{DB}.exp_{experiment}_models")
        assert engine.spark.catalog.tableExists(f"{DB}.exp_{experiment}_inputs")


# ---- the registry ---------------------------------------------------------------------------


def all_pages(search, **kwargs):
    found, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        found.extend(page)
        token = page.token
        if not token:
            return found


def millis(value):
    return int(value.timestamp() * 1000) if value is not None else None


def assert_registry_equals_the_client(engine, client, database):
    models = {m.name: m for m in all_pages(client.search_registered_models)}
    table = {r["name"]: r for r in rows(engine, f"SELECT * FROM {database}.registered_models")}
    assert set(table) == set(models)
    for name, m in models.items():
        row = table[name]
        assert row["description"] == (m.description or None)
        assert (millis(row["creation_time"]), millis(row["last_updated_time"])) == (
            m.creation_timestamp, m.last_updated_timestamp)
        assert as_dict(row["aliases"]) == {alias: int(version) for alias, version in m.aliases.items()}
        assert as_dict(row["tags"]) == m.tags
    versions = {(v.name, int(v.version)): v for v in all_pages(client.search_model_versions) if v.name in models}
    table = {(r["name"], r["version"]): r for r in rows(engine, f"SELECT * FROM {database}.model_versions")}
    assert set(table) == set(versions)
    for key, v in versions.items():
        row = table[key]
        full = client.get_model_version(v.name, v.version)  # the aliases of a version, as MLflow reads them
        assert sorted(row["aliases"]) == sorted(full.aliases)
        assert (row["current_stage"], row["status"], row["source_run_id"], row["source"], row["description"]) == (
            v.current_stage or None, v.status, v.run_id or None, v.source, v.description or None)
        # MLflow servers keep the source models:/<model_id>, not the model id; Databricks both
        from_source = v.source[len("models:/"):] if v.source.startswith("models:/m-") else None
        assert row["model_id"] == (getattr(v, "model_id", None) or from_source)
        assert (millis(row["creation_time"]), millis(row["last_updated_time"])) == (
            v.creation_timestamp, v.last_updated_timestamp)
        assert as_dict(row["tags"]) == v.tags
    return table


def make_registry(client, tracking_server, experiment):
    """Two registered models with versions from runs, aliases, stages, tags and descriptions;
    returns the model names and the run ids by role."""
    runs = {role: log_run(client, experiment, run_name=role, metrics={"rmse": value})
            for role, value in (("old", 0.5), ("champion", 0.2), ("candidate", 0.3), ("other", 0.9))}
    a, b = f"churn-{uuid.uuid4().hex[:8]}", f"fraud-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(a, tags={"team": "growth"}, description="Churn model")
    client.create_registered_model(b)
    for role in ("old", "champion", "candidate"):
        client.create_model_version(a, f"runs:/{runs[role]}/model", run_id=runs[role],
                                    tags={"role": role}, description=f"the {role}")
    client.create_model_version(b, f"runs:/{runs['other']}/model", run_id=runs["other"])
    client.set_registered_model_alias(a, "champion", "2")
    client.set_registered_model_alias(a, "challenger", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stages are deprecated in MLflow 3, still served
        client.transition_model_version_stage(a, "1", "Archived")
        client.transition_model_version_stage(b, "1", "Production")
    client.set_model_version_tag(b, "1", "validated", "yes")
    return (a, b), runs


@pytest.mark.compat
def test_registry_tables_equal_the_client_and_answer_which_run_is_in_production(
        settings, engine, client, tracking_server, experiment):
    database = f"reg_{uuid.uuid4().hex[:8]}"
    settings = settings.with_overrides(tables__database=database)
    (a, b), runs = make_registry(client, tracking_server, experiment)
    logged = None
    if MLFLOW_3:  # a version registered from a logged model carries its model id
        mlflow.set_tracking_uri(tracking_server.url)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mlflow.start_run(experiment_id=experiment, run_name="logged"):
                logged = mlflow.pyfunc.log_model(name="echo", python_model=_Echo())
            mlflow.register_model(f"models:/{logged.model_id}", b)

    result = CliRunner().invoke(cli, ["build-tables", "--registry", "--format", "json"],
                                obj={"settings": settings, "engine": engine})
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["experiments"] == [] and answer["registry"]["ok"] is True
    assert answer["registry"]["registered_models_table"] == f"{database}.registered_models"
    assert not engine.spark.catalog.tableExists(f"{database}.exp_{experiment}")  # only the registry
    versions = assert_registry_equals_the_client(engine, client, database)
    assert answer["registry"]["model_versions"] == len(versions)
    assert versions[(a, 2)]["aliases"] == ["champion"] and versions[(a, 1)]["current_stage"] == "Archived"
    if logged is not None:
        assert versions[(b, 2)]["model_id"] == logged.model_id
        assert versions[(b, 2)]["source_run_id"] == logged.run_id

    # which run is in production: versions with the champion alias or the Production stage
    build(settings, experiment, engine)
    production = rows(engine, (
        f"SELECT v.name, v.version, r.run_id, r.run_name, r._m_rmse FROM {database}.model_versions v "
        f"JOIN {database}.exp_{experiment} r ON r.run_id = v.source_run_id "
        f"WHERE array_contains(v.aliases, 'champion') OR v.current_stage = 'Production' ORDER BY v.name"))
    assert [(p["name"], p["version"], p["run_id"], p["run_name"]) for p in production] == [
        (a, 2, runs["champion"], "champion"), (b, 1, runs["other"], "other")]
    assert production[0]["_m_rmse"] == 0.2

    # a refresh rewrites both tables, one commit each: the alias moved
    client.set_registered_model_alias(a, "champion", "3")
    both = build_experiment_tables(settings, experiment_ids=[experiment], registry=True, engine=engine)
    assert both.exit_code == 0 and both.registry.ok and both.summaries[0].mode == "incremental"
    assert delta_commits(engine, database, "model_versions") == 2
    assert delta_commits(engine, database, "registered_models") == 2
    versions = assert_registry_equals_the_client(engine, client, database)
    assert versions[(a, 3)]["aliases"] == ["challenger", "champion"] and versions[(a, 2)]["aliases"] == []


@pytest.mark.compat
def test_the_unity_catalog_way_of_reading_gives_the_same_tables(settings, engine, client, tracking_server,
                                                                 experiment):
    (a, b), _ = make_registry(client, tracking_server, experiment)
    database = f"reg_{uuid.uuid4().hex[:8]}"
    proxy = RateLimitProxy(tracking_server.url, UNLIMITED).start()
    try:
        retrying = RetryingClient(proxy.url, settings.client, limiter=None, profile=UNLIMITED)
        reader = RegistryReader(retrying, proxy.url, unity_catalog=True)
        summary = refresh_registry_tables(Database(engine, database), reader)
        endpoints = proxy.stats()["endpoints"]
    finally:
        proxy.stop()
    assert summary.ok and summary.unity_catalog, summary.error
    versions = assert_registry_equals_the_client(engine, client, database)
    # unfiltered model search, then by name: one versions search per model, one get per model and version
    models = summary.registered_models
    assert endpoints["registered-models/get"]["requests"] == models
    assert endpoints["model-versions/search"]["requests"] == models
    assert endpoints["model-versions/get"]["requests"] == len(versions) == summary.model_versions
    assert {(a, 1), (a, 2), (a, 3), (b, 1)} <= set(versions)


@pytest.mark.compat
def test_a_registry_that_cannot_be_read_is_reported_and_the_experiments_still_built(
        settings, engine, client, experiment):
    from tests.support.local_server import free_port

    log_run(client, experiment, metrics={"m": 1.0})
    dead = settings.with_overrides(tables__registry_uri=f"http://127.0.0.1:{free_port()}")
    result = CliRunner().invoke(cli, ["build-tables", "--experiment-ids", experiment, "--registry"],
                                obj={"settings": dead, "engine": engine})
    assert result.exit_code == 3, result.output
    assert "Model registry http://127.0.0.1:" in result.stderr and "Traceback" not in result.output
    assert engine.spark.sql(f"SELECT count(*) FROM {DB}.exp_{experiment}").collect()[0][0] == 1
    nothing = CliRunner().invoke(cli, ["build-tables"], obj={"settings": settings, "engine": engine})
    assert nothing.exit_code == 2 and "--registry" in nothing.stderr
