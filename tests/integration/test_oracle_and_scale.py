"""The table against MLflow's own search, cell by cell, and an experiment of 5,000 runs."""

from __future__ import annotations

import math

import mlflow

from mlflow_spark_tools.runs.columns import INFO_COLUMNS
from tests.support.sqlite_seed import SeedSpec, seed_runs

from ..conftest import cells_equal
from .helpers import build, column_map, column_types, log_run, read_table

DB = "mlflow_exp"


def _expected_param(text, data_type):
    if data_type == "bigint":
        return int(text)
    if data_type == "double":
        return float(text)
    if data_type == "boolean":
        return text.lower() == "true"
    return text


def test_every_cell_matches_mlflow_search_runs(settings, engine, client, tracking_server, experiment):
    seed_runs(tracking_server.db_path, experiment, SeedSpec(150, 6, 4, 5, running_fraction=0.1, seed=7))
    parent = log_run(client, experiment, params={"lr": "1e-3", "flag": "TRUE", "a.b": "x"},
                     metrics={"rmse": math.nan, "acc": [(0.1, 0), (0.9, 3)]}, tags={"team/x": "é"})
    log_run(client, experiment, params={"lr": "0.5", "flag": "false"}, metrics={"rmse": math.inf},
            parent_run_id=parent, finish=False)
    deleted = log_run(client, experiment, metrics={"rmse": 1.0})
    client.delete_run(deleted)
    build(settings.with_overrides(tables__page_size=40), experiment, engine)

    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_server.url)
    try:
        runs = {r.info.run_id: r for r in mlflow.search_runs([experiment], output_format="list")}
        frame = mlflow.search_runs([experiment])
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert len(runs) == len(frame) == 152
    table = {r["run_id"]: r for r in read_table(engine, DB, experiment)}
    assert set(table) == set(runs) == set(frame["run_id"])
    cmap = {name: (kind, key, data_type)
            for (kind, key), (name, data_type) in column_map(engine, DB, experiment).items()}
    assert set(cmap) == set(column_types(engine, DB, experiment))
    info_names = {name for name, _ in INFO_COLUMNS}
    checked = 0
    for run_id, row in table.items():
        run = runs[run_id]
        pandas_row = frame[frame["run_id"] == run_id].iloc[0]
        for column, value in row.items():
            kind, key, data_type = cmap[column]
            if kind == "info":
                assert column in info_names
                expected = {
                    "run_id": run.info.run_id,
                    "experiment_id": run.info.experiment_id,
                    "run_name": run.info.run_name,
                    "status": run.info.status,
                    "lifecycle_stage": run.info.lifecycle_stage,
                    "user_id": run.info.user_id or None,
                    "artifact_uri": run.info.artifact_uri,
                    "parent_run_id": run.data.tags.get("mlflow.parentRunId"),
                    "start_time": run.info.start_time,
                    "end_time": run.info.end_time,
                    "duration_seconds": (run.info.end_time - run.info.start_time) / 1000
                    if run.info.end_time else None,
                }[column]
                if column in ("start_time", "end_time"):
                    value = None if value is None else round(value.timestamp() * 1000)
                    if expected is not None:
                        assert pandas_row[column].value // 1_000_000 == expected
                assert value == expected, (run_id, column, value, expected)
            elif kind == "metric":
                expected = run.data.metrics.get(key)
                assert cells_equal(value, expected), (run_id, column, value, expected)
                if expected is not None:
                    assert cells_equal(pandas_row[f"metrics.{key}"], expected)
            elif kind == "param":
                text = run.data.params.get(key)
                expected = None if text is None else _expected_param(text, data_type)
                assert cells_equal(value, expected), (run_id, column, value, expected)
            else:
                assert value == run.data.tags.get(key), (run_id, column)
            checked += 1
    assert checked == len(table) * len(cmap)
    assert math.isnan(table[parent]["_m_rmse"]) and table[parent]["_m_acc"] == 0.9


def test_an_experiment_of_5000_runs(settings, engine, client, tracking_server, experiment):
    run_ids = seed_runs(tracking_server.db_path, experiment, SeedSpec(5000, 10, 10, 10, seed=3))
    summary = build(settings.with_overrides(tables__page_size=500, tables__fetch_workers=4),
                    experiment, engine)
    assert summary.runs_fetched == summary.row_count == 5000
    counts = engine.spark.sql(
        f"SELECT count(*) AS n, count(DISTINCT run_id) AS d, min(start_time) AS lo "
        f"FROM {DB}.exp_{experiment}"
    ).collect()[0]
    assert counts["n"] == counts["d"] == 5000
    assert {r["run_id"] for r in read_table(engine, DB, experiment)} == set(run_ids)
    types = column_types(engine, DB, experiment)
    assert (types["_p_param_0"], types["_p_param_1"], types["_p_param_2"]) == ("bigint", "double", "string")
    index = engine.spark.sql(
        f"SELECT run_count FROM {DB}.experiments WHERE experiment_id = '{experiment}'"
    ).collect()[0]
    assert index["run_count"] == 5000
