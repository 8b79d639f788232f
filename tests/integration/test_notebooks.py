"""Every notebook in notebooks/ runs here, cell by cell, on the embedded engine.

The notebooks get ``spark`` (the session of the ``engine`` fixture), a ``dbutils`` with the
widget values and secrets each test gives, and a ``display`` that records what was shown
(see notebook_shim.py). Their tables go under the engine's warehouse, in a database per test.
"""

from __future__ import annotations

import math
import time
import uuid
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlflow_spark_tools.errors import InvalidIdentifierError
from mlflow_spark_tools.failed_runs.signing import KEY_ENV
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import new_payload_id

from .helpers import build, log_run
from .notebook_shim import (
    HEADER,
    Notebook,
    UnknownWidgetError,
    Widgets,
    declared_widgets,
    parse_notebook,
)
from .run_content import assert_has_model

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# The widgets of each notebook: exactly the ones its tests give values for.
WIDGETS = {
    "quickstart.py": {"experiment_id", "database", "metric"},
    "collector_in_udf.py": {"experiment_id", "experiment_name", "replay_dir", "num_runs", "secret_scope",
                            "secret_key"},
    "replay_and_ledger.py": {"replay_dir", "database", "profile", "secret_scope", "secret_key",
                             "trust_unsigned"},
    "sql_recipes.py": {"experiment_id", "database", "metric", "best", "top_n", "days", "param", "steps"},
}


@pytest.fixture
def env(monkeypatch, tracking_server, engine):
    """The environment a notebook sees: the test server, tables under the engine's warehouse."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    # a URI set with mlflow.set_tracking_uri by an earlier test would win over the variable
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setenv("MLFLOW_SPARK_TOOLS_WAREHOUSE", str(engine.warehouse))
    monkeypatch.setenv("MLFLOW_SPARK_TOOLS_PROFILE", "unlimited")
    for name in ("MLFLOW_SPARK_TOOLS_CONF", "MLFLOW_SPARK_TOOLS_DATABASE", "SPARK_REMOTE", KEY_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def database():
    """A database of its own for every test: the engine lives for the whole session."""
    return f"nb_{uuid.uuid4().hex[:10]}"


def notebook(name, engine, widgets, secrets=None):
    assert set(widgets) == WIDGETS[name], "give a value for every widget of the notebook, no more"
    return Notebook(NOTEBOOKS / name, engine.spark, widgets, secrets or {})


def runs_by_name(client, experiment_id):
    from mlflow.entities import ViewType

    out = {}
    for run in client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000):
        out.setdefault(run.info.run_name, []).append(run)
    return out


# ---- the files ------------------------------------------------------------------------------


def test_every_notebook_is_a_databricks_source_file_with_known_widgets():
    files = sorted(p.name for p in NOTEBOOKS.glob("*.py"))
    assert files == sorted(WIDGETS), "every notebook needs its widgets listed here and a test"
    for name in files:
        path = NOTEBOOKS / name
        assert path.read_text(encoding="utf-8").splitlines()[0] == HEADER
        cells = parse_notebook(path)
        assert cells[0].markdown, f"{name}: start with a markdown cell saying what it does"
        assert any(not c.markdown for c in cells)
        assert declared_widgets(path) == WIDGETS[name], name


def test_the_widget_shim_refuses_unknown_names():
    widgets = Widgets({"a": "1", "choice": "x"})
    widgets.text("a", "0")
    assert widgets.get("a") == "1"
    with pytest.raises(UnknownWidgetError):
        widgets.text("b", "")
    with pytest.raises(UnknownWidgetError):
        widgets.get("choice")  # read before it is defined
    with pytest.raises(ValueError):
        widgets.dropdown("choice", "y", ["y", "z"])  # "x" is no choice
    assert widgets.unused() == {"choice"}


# ---- quickstart -----------------------------------------------------------------------------


def test_quickstart_finds_the_run_with_the_lowest_metric(env, engine, client, experiment, database):
    rmse = {"a": 0.5, "b": 0.2, "c": 0.9, "nan": math.nan}
    ids = {label: log_run(client, experiment, params={"label": label}, metrics={"rmse": value})
           for label, value in rmse.items()}
    log_run(client, experiment, params={"label": "none"}, metrics={"mae": 0.01})
    nb = notebook("quickstart.py", engine, {"experiment_id": experiment, "database": database, "metric": "rmse"})
    nb.run()
    best = nb.namespace["best"]
    assert (best.run_id, best.value, best.source) == (ids["b"], 0.2, "table")
    top, report = nb.displayed
    assert list(top["run_id"]) == [ids["b"], ids["a"], ids["c"]]
    assert list(top["_m_rmse"]) == [0.2, 0.5, 0.9]
    # the report's charts, shown with displayHTML: the top runs in order, two charts (no history)
    assert report.startswith("<!DOCTYPE html>") and 'id="chart-parallel"' in report and 'id="chart-params"' in report
    assert 'id="chart-curves"' not in report
    assert report.index(ids["b"]) < report.index(ids["a"]) < report.index(ids["c"])


def test_quickstart_stops_at_an_experiment_that_does_not_exist(env, engine, database):
    nb = notebook("quickstart.py", engine, {"experiment_id": "987654321", "database": database, "metric": "rmse"})
    with pytest.raises(RuntimeError, match="987654321"):
        nb.run()
    assert nb.displayed == []


# ---- collector and replay -------------------------------------------------------------------


def test_collector_notebook_logs_every_run(env, engine, client, tmp_path):
    name = f"nb-collector-{uuid.uuid4().hex[:8]}"
    store = tmp_path / "store"
    nb = notebook("collector_in_udf.py", engine, {
        "experiment_id": "", "experiment_name": name, "replay_dir": str(store), "num_runs": "3",
        "secret_scope": "", "secret_key": "",
    }).run()
    experiment_id = client.get_experiment_by_name(name).experiment_id  # created by the notebook
    assert nb.namespace["experiment_id"] == experiment_id
    (results,) = nb.displayed
    assert list(results["run_index"]) == [0, 1, 2]
    assert list(results["status"]) == ["logged"] * 3 and results["payload_id"].isna().all()
    runs = runs_by_name(client, experiment_id)
    assert sorted(runs) == list(results["run_name"])
    for row in results.itertuples():
        (run,) = runs[row.run_name]
        assert run.info.run_id == row.run_id and run.info.status == "FINISHED"
        assert run.data.params == {"alpha": str(row.alpha), "epochs": "5"}
        history = client.get_metric_history(row.run_id, "rmse")
        assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]
        assert_has_model(client, row.run_id)
    assert FailedRunStore(store).ids("pending") == []


def test_runs_deferred_on_429s_are_replayed_exactly_once_and_the_ledger_shows_them(
    env, engine, client, experiment, database, make_proxy, tmp_path
):
    key = "signing-key-" + uuid.uuid4().hex
    store = tmp_path / "store"
    limited = make_proxy({"log_batch": 0.2})  # one log_batch every 5 s
    env.setenv("MLFLOW_TRACKING_URI", limited.url)
    collected = notebook("collector_in_udf.py", engine, {
        "experiment_id": experiment, "experiment_name": "", "replay_dir": str(store), "num_runs": "6",
        "secret_scope": "ml", "secret_key": "signing",
    }, secrets={("ml", "signing"): key}).run()
    assert collected.dbutils.secrets.read == [("ml", "signing")]
    (results,) = collected.displayed
    deferred = results[results["status"] == "deferred"]
    # a run needs two log_batch requests with MLflow 3 (its own, and its model's metrics), so
    # all six may be deferred; those deferred at their model keep the id their task returned
    assert 0 < len(deferred) and set(results["status"]) <= {"logged", "deferred"}
    assert limited.counters.as_dict()["rate_limited"]["log_batch"] > 0
    assert sorted(FailedRunStore(store).ids("pending")) == sorted(deferred["payload_id"])
    # a damaged document beside them is quarantined, with its reason in the ledger
    corrupt = new_payload_id()
    (store / "pending" / f"{corrupt}.json").write_text("{not json", encoding="utf-8")

    # The replay goes through a proxy with room to spare, paced by a profile under its limits,
    # with the key in the environment as a job cluster has it from {{secrets/ml/signing}}.
    limits = {"experiment_management": 20, "search_runs": 20, "log_batch": 10, "other": 50}
    roomy = make_proxy(limits)
    profile = tmp_path / "replay_profile.yaml"
    profile.write_text(yaml.safe_dump({"limits": limits, "safety_factor": 0.6}), encoding="utf-8")
    env.setenv("MLFLOW_TRACKING_URI", roomy.url)
    env.setenv(KEY_ENV, key)
    replay = notebook("replay_and_ledger.py", engine, {
        "replay_dir": str(store), "database": database, "profile": str(profile), "secret_scope": "",
        "secret_key": "", "trust_unsigned": "false",
    })
    with pytest.raises(RuntimeError, match="exit code 3"):  # the corrupt payload
        replay.run()
    stats = roomy.counters.as_dict()
    assert sum(stats["rate_limited"].values()) == 0 and sum(stats["requests"].values()) > 0

    recent, failures, quarantined = replay.displayed
    ledger = {row.payload_id: row for row in recent.itertuples()}
    assert set(ledger) == set(deferred["payload_id"]) | {corrupt}
    runs = runs_by_name(client, experiment)
    assert sorted(runs) == sorted(results["run_name"])
    for row in results.itertuples():
        assert len(runs[row.run_name]) == 1, f"{row.run_name} exists {len(runs[row.run_name])} times"
        run = runs[row.run_name][0]
        assert run.info.status == "FINISHED"
        assert run.data.params == {"alpha": str(row.alpha), "epochs": "5"}
        assert len(client.get_metric_history(run.info.run_id, "rmse")) == 5
        # the models of deferred runs were signed with the secret's key and verified
        assert_has_model(client, run.info.run_id)
        if pd.notna(row.run_id):
            assert run.info.run_id == row.run_id  # the id a task returned stays valid
        if row.status == "deferred":
            entry = ledger[row.payload_id]
            assert entry.run_id == run.info.run_id and entry.experiment_id == experiment
            assert entry.status in ("replayed", "resumed") and entry.error is None
    assert ledger[corrupt].status == "failed" and "not valid JSON" in ledger[corrupt].error
    assert list(failures["payload_id"]) == [corrupt]
    assert list(quarantined["payload_id"]) == [corrupt]
    assert list(quarantined["reason"]) == [ledger[corrupt].error]
    store_now = FailedRunStore(store)
    assert store_now.ids("pending") == [] and store_now.ids("failed") == [corrupt]
    assert sorted(store_now.ids("done")) == sorted(deferred["payload_id"])


def test_replay_of_an_empty_store_before_any_ledger_exists(env, engine, database, tmp_path, capsys):
    nb = notebook("replay_and_ledger.py", engine, {
        "replay_dir": str(tmp_path / "empty"), "database": database, "profile": "unlimited",
        "secret_scope": "", "secret_key": "", "trust_unsigned": "false",
    }).run()
    assert nb.namespace["exit_code"] == 0 and nb.displayed == []
    out = capsys.readouterr().out
    assert '"replayed": 0' in out and "does not exist yet" in out


# ---- SQL recipes ----------------------------------------------------------------------------


def test_sql_recipes_show_the_expected_runs(env, engine, client, experiment, database, settings, capsys):
    ids = {
        "r1": log_run(client, experiment, params={"alpha": 0.1, "depth": 3}, metrics={"rmse": 0.3}),
        "r2": log_run(client, experiment, params={"alpha": 0.1, "depth": 5}, metrics={"rmse": 0.2}),
        "r3": log_run(client, experiment, params={"alpha": 0.5, "depth": 3}, metrics={"rmse": 0.5}),
        "nan": log_run(client, experiment, params={"alpha": 0.5, "depth": 5}, metrics={"rmse": math.nan}),
        "failed": log_run(client, experiment, params={"alpha": 0.9, "depth": 7}, metrics={"rmse": 0.9},
                          finish=False),
    }
    client.set_terminated(ids["failed"], status="FAILED")
    month_ago = int(time.time() * 1000) - 30 * 86400 * 1000
    old = client.create_run(experiment, start_time=month_ago).info.run_id
    client.log_param(old, "alpha", 0.5)
    client.log_param(old, "depth", 3)
    client.log_metric(old, "rmse", 0.4)
    client.set_terminated(old, end_time=month_ago + 60_000)
    ids["old"] = old
    build(settings.with_overrides(tables__database=database), experiment, engine)

    nb = notebook("sql_recipes.py", engine, {
        "experiment_id": experiment, "database": database, "metric": "rmse", "best": "lowest",
        "top_n": "3", "days": "7", "param": "depth", "steps": "5",
    }).run()
    columns, best, top, recent, compare, failed, by_depth, datasets, model_metrics = nb.displayed
    assert {("param", "alpha"), ("param", "depth"), ("metric", "rmse")} <= set(zip(columns["kind"], columns["key"]))
    assert list(best["run_id"]) == [ids["r2"]]
    assert list(top["run_id"]) == [ids["r2"], ids["r1"], ids["old"]]
    assert list(top["_m_rmse"]) == [0.2, 0.3, 0.4]
    assert set(recent["run_id"]) == {ids[k] for k in ("r1", "r2", "r3", "nan", "failed")}
    assert list(compare["run_id"]) == list(top["run_id"])
    assert list(zip(compare["_p_alpha"], compare["_p_depth"])) == [(0.1, 5), (0.1, 3), (0.5, 3)]
    assert list(failed["run_id"]) == [ids["failed"]]
    assert list(by_depth["_p_depth"]) == [3, 5, 7]
    assert list(by_depth["runs"]) == [3, 1, 1]  # the NaN run does not count
    assert list(by_depth["min_value"]) == [0.3, 0.2, 0.9]
    assert list(by_depth["max_value"]) == [0.5, 0.2, 0.9]
    assert by_depth["avg_value"][0] == pytest.approx(0.4)
    # no run logged a dataset or a model: the tables exist, empty; no registry tables were built
    assert datasets.empty and list(datasets.columns) == ["run_id", "run_name", "_m_rmse", "context", "dataset",
                                                         "digest", "source"]
    assert model_metrics.empty
    out = capsys.readouterr().out
    assert out.count("SELECT ") == 12 and f"`{database}`.`exp_{experiment}`" in out
    assert "No metric history of 'rmse': build the table with --metric-history rmse" in out
    assert f"No model_versions table in {database}: run build-tables --registry" in out

    highest = notebook("sql_recipes.py", engine, {
        "experiment_id": experiment, "database": database, "metric": "rmse", "best": "highest",
        "top_n": "1", "days": "365", "param": "", "steps": "5",
    }).run()
    assert list(highest.displayed[1]["run_id"]) == [ids["failed"]]
    assert ids["old"] in set(highest.displayed[3]["run_id"])
    assert len(highest.displayed) == 8  # no param given: no comparison by param


def test_sql_recipes_over_the_metric_history(env, engine, client, experiment, database, settings):
    curves = {
        "steady": [(1.0, 0), (0.6, 1), (0.4, 2), (0.3, 3), (0.25, 4), (0.2, 5)],
        "diverged": [(1.0, 0), (0.3, 1), (0.1, 2), (0.2, 3), (0.5, 4), (0.9, 5)],  # best at step 2
        "nan_end": [(0.8, 0), (0.7, 1), (0.65, 2), (0.6, 3), (math.nan, 4)],
        "flat": [(0.5, 0), (0.5, 1)],
    }
    ids = {name: log_run(client, experiment, run_name=name, metrics={"val.loss": points})
           for name, points in curves.items()}
    build(settings.with_overrides(tables__database=database), experiment, engine, metric_history="all")
    nb = notebook("sql_recipes.py", engine, {
        "experiment_id": experiment, "database": database, "metric": "val.loss", "best": "lowest",
        "top_n": "2", "days": "7", "param": "", "steps": "3",
    }).run()
    best_steps, top_curves, got_worse = nb.displayed[6:9]  # after the six recipes before them
    # the best value any step reached: "diverged" reached 0.1 at step 2, though it ends at 0.9
    assert list(best_steps["run_id"]) == [ids["diverged"], ids["steady"]]
    assert list(best_steps["best_value"]) == [0.1, 0.2] and list(best_steps["best_step"]) == [2, 5]
    assert list(best_steps["latest_value"]) == [0.9, 0.2]
    # whole curves of the top 2, best first, in step order
    assert list(top_curves["run_id"]) == [ids["diverged"]] * 6 + [ids["steady"]] * 6
    assert list(top_curves["value"])[:6] == [v for v, _ in curves["diverged"]]
    # over the last 3 steps (2..5) only "diverged" got worse; NaN points are left out
    assert list(got_worse["run_id"]) == [ids["diverged"]]
    assert (got_worse["window_start_step"][0], got_worse["last_step"][0]) == (2, 5)
    assert got_worse["change"][0] == pytest.approx(0.8)

    highest = notebook("sql_recipes.py", engine, {
        "experiment_id": experiment, "database": database, "metric": "val.loss", "best": "highest",
        "top_n": "1", "days": "7", "param": "", "steps": "10",
    }).run()
    best_steps, top_curves, got_worse = highest.displayed[6:9]
    # a tie at 1.0 (step 0): the run that started later first, as everywhere
    assert (list(best_steps["run_id"]), list(best_steps["best_step"])) == ([ids["diverged"]], [0])
    # with highest best, "worse" is lower: over all steps every run but "flat" ended lower
    assert set(got_worse["run_id"]) == {ids["steady"], ids["diverged"], ids["nan_end"]}


def test_sql_recipes_join_datasets_models_and_the_registry(env, engine, client, experiment, database, settings):
    import mlflow

    from .run_content import MLFLOW_3

    train = mlflow.data.from_pandas(pd.DataFrame({"x": [1.0, 2.0]}), source="s3://b/train.csv", name="train")
    test = mlflow.data.from_pandas(pd.DataFrame({"x": [3.0]}), source="s3://b/test.csv", name="test")
    ids, model_ids = {}, {}
    for name, rmse in (("good", 0.2), ("bad", 0.6)):
        with mlflow.start_run(experiment_id=experiment, run_name=name) as run:
            mlflow.log_input(train, context="training")
            mlflow.log_input(test, context="evaluation")
            mlflow.log_metric("rmse", rmse)
            if MLFLOW_3:
                model = mlflow.initialize_logged_model(name=f"{name}-model", source_run_id=run.info.run_id,
                                                       experiment_id=experiment)
                mlflow.log_metric("rmse", rmse, model_id=model.model_id, dataset=test)
                model_ids[name] = model.model_id
        ids[name] = run.info.run_id
    suffix = uuid.uuid4().hex[:8]
    champion, legacy = f"nb-a-{suffix}", f"nb-b-{suffix}"
    client.create_registered_model(champion)
    client.create_registered_model(legacy)
    for registered, role in ((champion, "bad"), (champion, "good"), (legacy, "bad")):
        client.create_model_version(registered, f"runs:/{ids[role]}/model", run_id=ids[role])
    client.set_registered_model_alias(champion, "champion", "2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stages are deprecated in MLflow 3, still served
        client.transition_model_version_stage(legacy, "1", "Production")
    build(settings.with_overrides(tables__database=database), experiment, engine, registry=True)

    nb = notebook("sql_recipes.py", engine, {
        "experiment_id": experiment, "database": database, "metric": "rmse", "best": "lowest",
        "top_n": "2", "days": "7", "param": "", "steps": "5",
    }).run()
    datasets, model_metrics, production = nb.displayed[-3:]
    assert list(zip(datasets["run_id"], datasets["context"], datasets["dataset"])) == [
        (ids["good"], "evaluation", "test"), (ids["good"], "training", "train"),
        (ids["bad"], "evaluation", "test"), (ids["bad"], "training", "train")]
    assert list(datasets["digest"])[:2] == [test.digest, train.digest]
    if MLFLOW_3:
        assert list(zip(model_metrics["run_id"], model_metrics["model_id"], model_metrics["key"],
                        model_metrics["value"], model_metrics["dataset_name"])) == [
            (ids["good"], model_ids["good"], "rmse", 0.2, "test"), (ids["bad"], model_ids["bad"], "rmse", 0.6, "test")]
    # the champion alias and the Production stage, each with its source run
    assert list(zip(production["model"], production["version"], production["run_id"])) == [
        (champion, 2, ids["good"]), (legacy, 1, ids["bad"])]
    assert list(production["current_stage"]) == ["None", "Production"]
    assert list(production["_m_rmse"]) == [0.2, 0.6]


@pytest.mark.parametrize("widget, value, error, shown", [
    ("param", "depth` FROM x; --", "has no param", 6),  # every recipe before the last one ran
    ("metric", "rmse' OR '1'='1", "has no metric", 0),
    ("database", "nb; DROP TABLE x", "Invalid database name", 0),
])
def test_sql_recipes_take_widget_values_as_literals_only(env, engine, client, experiment, database, settings,
                                                         widget, value, error, shown):
    log_run(client, experiment, params={"depth": 3}, metrics={"rmse": 0.3})
    build(settings.with_overrides(tables__database=database), experiment, engine)
    widgets = {"experiment_id": experiment, "database": database, "metric": "rmse", "best": "lowest",
               "top_n": "3", "days": "7", "param": "depth", "steps": "5"}
    nb = notebook("sql_recipes.py", engine, {**widgets, widget: value})
    with pytest.raises((ValueError, InvalidIdentifierError), match=error):
        nb.run()
    assert len(nb.displayed) == shown
