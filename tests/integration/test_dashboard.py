"""The AI/BI dashboard and the attention alert: every dataset query runs against tables built
on the embedded engine with its parameters bound, and answers the columns its widgets use;
parameters cannot smuggle SQL in."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mlflow_spark_tools.databricks.bundle import alert_query
from mlflow_spark_tools.failed_runs.ledger import write_ledger, write_store_state

from .helpers import build, log_run

pytestmark = pytest.mark.jvm


ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "conf" / "dashboards" / "mlflow_spark_tools.lvdash.json").read_text())
DATASETS = {d["name"]: d for d in DASHBOARD["datasets"]}
DATABASE = "dash_db"


def widgets():
    for page in DASHBOARD["pages"]:
        for item in page["layout"]:
            if "queries" in item["widget"]:
                yield page["name"], item


def used_fields(dataset: str) -> set[str]:
    """The dataset's columns the widgets' fields read (a field may aggregate one: ``AVG(`metric`)``)."""
    return {column for _, item in widgets() for q in item["widget"]["queries"]
            if q["query"]["datasetName"] == dataset for f in q["query"].get("fields", [])
            for column in re.findall(r"`([^`]+)`", f["expression"])}


def run_dataset(spark, name: str, **values):
    """The dataset's query with its parameters bound: the defaults, then ``values``; its tables
    are read from the current schema, as the deployed dashboard reads them from its
    ``dataset_catalog``/``dataset_schema``."""
    dataset = DATASETS[name]
    args = {p["keyword"]: p["defaultSelection"]["values"]["values"][0]["value"]
            for p in dataset.get("parameters", [])}
    unknown = set(values) - set(args)
    assert not unknown, f"{name} has no parameters {unknown}"
    args.update(values)
    spark.catalog.setCurrentDatabase(DATABASE)
    return spark.sql("".join(dataset["queryLines"]), args=args)


# Classic pyspark 4.1.1 binds no parameter inside IDENTIFIER(...) through spark.sql(args=...),
# not even IDENTIFIER(:t) (NOT_A_CONSTANT_STRING), unless parameters are substituted the way
# earlier releases did; Databricks SQL, where the dashboard runs, and Spark 3.5 take them as written.
LEGACY_PARAMETERS = "spark.sql.legacy.parameterSubstitution.constantsOnly"


def _bind_parameters_as_databricks_sql_does(spark) -> None:
    import pyspark

    from mlflow_spark_tools.spark.engine import SPARK, executor_of

    if executor_of(spark) == SPARK and tuple(int(p) for p in pyspark.__version__.split(".")[:2]) >= (4, 1):
        spark.conf.set(LEGACY_PARAMETERS, "true")


@pytest.fixture(scope="module")
def tables(tracking_server, engine, tmp_path_factory):
    """A sweep of 12 runs with a history, and a replay ledger and store log of two stores."""
    from mlflow import MlflowClient

    from mlflow_spark_tools.config import load_settings

    _bind_parameters_as_databricks_sql_does(engine.spark)
    client = MlflowClient(tracking_server.url)
    experiment = client.create_experiment(f"dashboard-{tmp_path_factory.mktemp('d').name}")
    final = {}
    for i in range(12):
        rmse = 1.0 - i * 0.05
        run_id = log_run(client, experiment, params={"lr": 10 ** -(1 + i % 3), "optimizer": ("adam", "sgd")[i % 2]},
                         metrics={"rmse": [(rmse + (3 - s) * 0.1, s) for s in range(4)]}, run_name=f"trial-{i}")
        final[run_id] = rmse
    settings = load_settings(environ={}).with_overrides(tracking_uri=tracking_server.url,
                                                        rate_limit_profile="unlimited", tables__database=DATABASE)
    build(settings, experiment, engine, metric_history="all")
    now = datetime.now(timezone.utc)
    ledger = [{"payload_id": f"p{i}", "run_id": f"r{i}", "experiment_id": experiment, "status": "replayed",
               "attempts": 1, "error": None, "replayed_at": now - timedelta(hours=i % 3)} for i in range(6)]
    ledger += [{"payload_id": "q1", "run_id": None, "experiment_id": experiment, "status": "failed", "attempts": 3,
                "error": "signature: the payload's signature does not verify", "replayed_at": now},
               {"payload_id": "q2", "run_id": None, "experiment_id": experiment, "status": "failed", "attempts": 1,
                "error": "schema: unknown field 'x'", "replayed_at": now - timedelta(minutes=5)}]
    write_ledger(engine, DATABASE, ledger)
    for minutes, store, pending, quarantined in ((60, "/Volumes/a", 3, 0), (30, "/Volumes/a", 5, 0),
                                                 (60, "/Volumes/b", 0, 0), (30, "/Volumes/b", 0, 2)):
        write_store_state(engine, DATABASE, {"recorded_at": now - timedelta(minutes=minutes), "replay_dir": store,
                                             "pending": pending, "claimed": 0, "quarantined": quarantined,
                                             "replayed": 1, "failed": quarantined, "throttled": 0, "seconds": 1.5})
    return experiment, final


def test_every_widget_reads_a_dataset_that_answers_its_fields(tables, engine):
    experiment, _ = tables
    names = [item["widget"]["name"] for page in DASHBOARD["pages"] for item in page["layout"]]
    assert len(names) == len(set(names))
    used = {q["query"]["datasetName"] for _, item in widgets() for q in item["widget"]["queries"]}
    assert used == set(DATASETS)  # no dataset without a widget, no widget without its dataset
    for _, item in widgets():
        if item["widget"]["spec"]["widgetType"].startswith("filter-"):
            continue  # the filters: test_viewers_change_every_parameter_through_a_filter
        position = item["position"]
        assert position["x"] + position["width"] <= 6
        spec = item["widget"]["spec"]
        encoded = {e["fieldName"] for e in spec["encodings"].get("columns", [])} | {
            e["fieldName"] for k, e in spec["encodings"].items() if isinstance(e, dict) and "fieldName" in e}
        assert encoded <= {f["name"] for q in item["widget"]["queries"] for f in q["query"]["fields"]}
        # documented widget types only (the box widget's encoding has no documented example)
        assert spec["widgetType"] in ("table", "scatter", "bar", "line"), spec["widgetType"]
    for name in DATASETS:
        for column in ("_p_lr", "_p_optimizer"):
            extra = {"param_column": column} if "param_column" in json.dumps(DATASETS[name].get("parameters", [])) else {}
            keys = {p["keyword"] for p in DATASETS[name].get("parameters", [])}
            bound = {"experiment_id": experiment} if "experiment_id" in keys else {}
            columns = set(run_dataset(engine.spark, name, **bound, **extra).columns)
            assert used_fields(name) <= columns, (name, used_fields(name) - columns)


def test_the_experiment_datasets_answer_what_the_table_holds(tables, engine):
    experiment, final = tables
    spark, bound = engine.spark, {"experiment_id": experiment}
    ranked = sorted(final, key=final.get)
    best = run_dataset(spark, "best_runs", **bound).collect()
    assert [r["run_id"] for r in best] == ranked and best[0]["metric"] == pytest.approx(final[ranked[0]])
    highest = run_dataset(spark, "best_runs", **bound, best="highest").collect()
    assert [r["run_id"] for r in highest] == ranked[::-1]
    by_lr = run_dataset(spark, "metric_by_param", **bound, param_column="_p_lr").collect()
    assert len(by_lr) == 12 and {r["param_number"] for r in by_lr} == {0.1, 0.01, 0.001}
    by_optimizer = run_dataset(spark, "metric_by_param", **bound, param_column="_p_optimizer").collect()
    assert {r["param_value"] for r in by_optimizer} == {"adam", "sgd"} and {r["param_number"] for r in by_optimizer} == {None}
    assert sum(r["runs"] for r in run_dataset(spark, "runs_over_time", **bound).collect()) == 12
    curves = run_dataset(spark, "top_run_curves", **bound).collect()
    assert len(curves) == 10 * 4 and {r["step"] for r in curves} == {0, 1, 2, 3}
    assert {r["run_name"] for r in curves} == {f"trial-{i}" for i in range(2, 12)}  # the 10 lowest rmse


def test_the_replay_datasets_and_the_alert(tables, engine):
    spark = engine.spark
    backlog = run_dataset(spark, "replay_backlog").collect()
    assert sorted((r["replay_dir"], r["pending"]) for r in backlog) == [
        ("/Volumes/a", 3), ("/Volumes/a", 5), ("/Volumes/b", 0), ("/Volumes/b", 0)]
    rate = run_dataset(spark, "replay_rate").collect()
    assert sum(r["payloads"] for r in rate) == 8 and {r["status"] for r in rate} == {"replayed", "failed"}
    quarantined = run_dataset(spark, "quarantined").collect()
    assert [r["payload_id"] for r in quarantined] == ["q1", "q2"]
    reasons = {r["reason"]: r["payloads"] for r in run_dataset(spark, "quarantine_reasons").collect()}
    assert reasons == {"signature": 1, "schema": 1}

    (alert,) = spark.sql(alert_query(DATABASE)).collect()
    # store a's backlog grew (3 -> 5), store b got 2 payloads quarantined
    assert (alert["growing_backlogs"], alert["new_quarantined"], alert["needs_attention"]) == (1, 2, 3)
    now = datetime.now(timezone.utc)
    for store, pending, quarantined in (("/Volumes/a", 1, 0), ("/Volumes/b", 0, 2)):
        write_store_state(engine, DATABASE, {"recorded_at": now, "replay_dir": store, "pending": pending,
                                             "claimed": 0, "quarantined": quarantined, "replayed": 4, "failed": 0,
                                             "throttled": 0, "seconds": 1.0})
    (alert,) = spark.sql(alert_query(DATABASE)).collect()
    assert alert["needs_attention"] == 0  # the backlog shrank, nothing new was quarantined


@pytest.mark.parametrize("parameter, value", [
    ("experiment_id", "1 UNION SELECT * FROM dash_db.replay_log"),
    ("experiment_id", "1 ; DROP TABLE dash_db.replay_log --"),
    ("metric_column", "run_id) FROM dash_db.replay_log --"),
])
def test_parameters_name_tables_and_columns_but_carry_no_sql(tables, engine, parameter, value):
    experiment, _ = tables
    bound = {"experiment_id": experiment, parameter: value}
    with pytest.raises(Exception) as failure:
        run_dataset(engine.spark, "best_runs", **bound).collect()
    assert not re.search(r"Traceback", str(failure.value))
    assert engine.spark.sql(f"SELECT COUNT(*) AS n FROM {DATABASE}.replay_log").collect()[0]["n"] == 8


def test_the_alert_refuses_a_database_that_is_not_a_name():
    from mlflow_spark_tools.errors import MlflowSparkToolsError

    with pytest.raises(MlflowSparkToolsError):
        alert_query("x.replay_log; DROP TABLE y --")


def test_viewers_change_every_parameter_through_a_filter(tables, engine):
    """A dashboard's viewers change parameters only through filter widgets: every parameter of
    every dataset is bound by one filter on the global filters page, with the same default; the
    filters that offer choices take them from datasets that answer them."""
    experiment, _ = tables
    (page,) = [p for p in DASHBOARD["pages"] if p.get("pageType") == "PAGE_TYPE_GLOBAL_FILTERS"]
    bound: dict[tuple[str, str], str] = {}
    for item in page["layout"]:
        widget = item["widget"]
        spec = widget["spec"]
        assert spec["widgetType"] in ("filter-single-select", "filter-text-entry") and spec["version"] == 2
        queries = {q["name"]: q["query"] for q in widget["queries"]}
        for field in spec["encodings"]["fields"]:
            query = queries[field["queryName"]]
            if "parameterName" in field:
                keyword = field["parameterName"]
                assert query["parameters"] == [{"name": keyword, "keyword": keyword}]
                bound[(query["datasetName"], keyword)] = widget["name"]
                (declared,) = [p for p in DATASETS[query["datasetName"]]["parameters"] if p["keyword"] == keyword]
                assert declared["defaultSelection"] == spec["selection"]["defaultSelection"]
            else:  # the choices
                choices = run_dataset(engine.spark, query["datasetName"]).collect()
                assert field["fieldName"] in [f["name"] for f in query["fields"]]
                assert choices and all(row[field["fieldName"]] for row in choices)
    declared = {(d["name"], p["keyword"]) for d in DASHBOARD["datasets"] for p in d.get("parameters", [])}
    assert set(bound) == declared
    experiments = [row["experiment_id"] for row in run_dataset(engine.spark, "experiment_choices").collect()]
    assert experiment in experiments
    assert sorted(row["best"] for row in run_dataset(engine.spark, "best_choices").collect()) == ["highest", "lowest"]


def test_the_datasets_name_no_schema_and_no_database_parameter():
    """The deployment names the catalog and schema (the bundle's dataset_catalog and
    dataset_schema): no dataset names one or composes ``:database || '.' || ...`` into an
    IDENTIFIER. What IDENTIFIER composes is the experiment's table names, ``'exp_' ||
    :experiment_id`` (see docs/DATABRICKS.md for why not the Runtime 18 coalescing form)."""
    composed = set()
    for dataset in DASHBOARD["datasets"]:
        query = "".join(dataset["queryLines"])
        assert ":database" not in query and "main." not in query and "'.'" not in query, dataset["name"]
        assert "database" not in {p["keyword"] for p in dataset.get("parameters", [])}
        composed |= set(re.findall(r"IDENTIFIER\(([^()]*\|\|[^()]*)\)", query))
    assert composed == {"'exp_' || :experiment_id", "'exp_' || :experiment_id || '_columns'",
                        "'exp_' || :experiment_id || '_metrics'"}
