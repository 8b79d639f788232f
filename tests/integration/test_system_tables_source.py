"""build-tables --source system-tables: Delta tables in the layout of Databricks' MLflow system
tables, filled from a real MLflow server, give the same experiment tables as the REST API, cell
by cell (but for what the system tables do not hold: artifact URIs and dataset inputs), after a
full build and after incremental refreshes; the whole build runs inside Spark."""

from __future__ import annotations

import time

import pytest

from mlflow_spark_tools.spark.arrow import to_arrow
from mlflow_spark_tools.tables.build import build_experiment_tables
from tests.support import system_tables

from .helpers import log_run
from .same_tables import assert_same_tables as same_tables
from .same_tables import build_pair
from .test_database_source import log_rich_runs

REST_DB, SYSTEM_DB, SCHEMA = "st_via_rest", "st_via_system", "sysml"
TABLES = {"": ("run_id",), "_columns": ("column_name",), "_metrics": ("run_id", "key", "step", "timestamp")}
NOT_IN_SYSTEM_TABLES = {"artifact_uri"}


def system_settings(settings, **overrides):
    given = {"tables__database": SYSTEM_DB, "tables__source": "system-tables", "tables__system_schema": SCHEMA,
             "tables__system_workspace_id": system_tables.WORKSPACE}
    return settings.with_overrides(**{**given, **overrides})


def build_both(settings, experiment_id, engine, **kwargs):
    return build_pair(settings.with_overrides(tables__database=REST_DB), system_settings(settings), experiment_id,
                      engine, **kwargs)


def assert_same_tables(engine, experiment_id):
    same_tables(engine, experiment_id, REST_DB, SYSTEM_DB, TABLES, absent=NOT_IN_SYSTEM_TABLES)


@pytest.mark.compat
@pytest.mark.jvm
def test_system_tables_build_the_same_tables_as_rest_and_refresh_them(settings, engine, client, tracking_server,
                                                                     experiment):
    runs = log_rich_runs(client, tracking_server.url, experiment)
    system_tables.fill(engine, client, [experiment])
    rest, system = build_both(settings, experiment, engine, metric_history="all")
    assert system.mode == "full" and system.row_count == rest.row_count and system.inputs_table is None
    assert system.history_points == rest.history_points > 0
    assert_same_tables(engine, experiment)
    index = to_arrow(engine.spark.sql(f"SELECT * FROM {SYSTEM_DB}.experiments")).to_pylist()[0]
    assert index["inputs_table"] is None and index["metric_history"] == "all"

    # changes both sources see: a run finishes with a new point, a new run, a run deleted
    now = int(time.time() * 1000)
    from mlflow.entities import Metric

    client.log_batch(runs["running"], metrics=[Metric("loss", 2.5, now, 1)])
    client.set_terminated(runs["running"])
    new = log_run(client, experiment, params={"lr": 0.2, "new key": "x"}, metrics={"loss": [(4.0, 0)]})
    client.delete_run(runs["child"])
    system_tables.fill(engine, client, [experiment], updated={runs["running"]: now, new: now, runs["child"]: now})
    rest, system = build_both(settings, experiment, engine, metric_history="all")
    assert system.mode == rest.mode == "incremental"
    assert (system.rows_inserted, system.rows_updated, system.rows_deleted) == (
        rest.rows_inserted, rest.rows_updated, rest.rows_deleted), (rest, system)
    assert system.columns_added == rest.columns_added == ["_p_new_key"]
    assert_same_tables(engine, experiment)

    # what only the system tables see: a tag set on a run that finished long ago
    client.set_tag(runs["parent"], "verdict", "best")
    system_tables.fill(engine, client, [experiment], updated={runs["parent"]: int(time.time() * 1000)})
    # no look-back margin: the runs updated at or after the last build's latest update_time (the
    # three changed above, and this one) and the unfinished ones are read again, not every run
    system = build_experiment_tables(system_settings(settings, tables__watermark_margin_seconds=0),
                                     experiment_ids=[experiment], engine=engine, metric_history="all").summaries[0]
    assert system.mode == "incremental" and system.rows_updated == 1, system
    assert system.runs_fetched < system.row_count
    verdict = engine.spark.sql(f"SELECT _t_verdict FROM {SYSTEM_DB}.exp_{experiment} "
                               f"WHERE run_id = '{runs['parent']}'").collect()[0][0]
    assert verdict == "best"


def test_experiments_the_system_tables_do_not_hold_are_built_through_rest(settings, engine, client, experiment,
                                                                         caplog):
    log_run(client, experiment, params={"p": 1}, metrics={"m": 0.5})
    system_tables.fill(engine, client, [])  # an experiment from before the system tables began
    result = build_experiment_tables(system_settings(settings), experiment_ids=[experiment, "1; DROP"],
                                     engine=engine)
    # an invalid id is that experiment's failure, the others are built
    failed, built = result.summaries
    assert failed.experiment_id == "1; DROP" and "experiment id" in failed.error.lower() and not failed.ok
    assert built.ok and built.inputs_table is not None and result.exit_code == 3  # partial; the REST builder's
    assert "built through the REST API" in caplog.text


def test_an_experiment_older_than_the_system_tables_is_built_from_them_with_a_warning(
        settings, engine, client, experiment, caplog):
    log_run(client, experiment, params={"p": 1})
    system_tables.fill(engine, client, [experiment], schema="sysml_old", created_ms=1_700_000_000_000)  # 2023
    result = build_experiment_tables(system_settings(settings, tables__system_schema="sysml_old",
                                                     tables__database="st_old"),
                                     experiment_ids=[experiment], engine=engine)
    assert result.exit_code == 0 and result.summaries[0].inputs_table is None
    assert f"Experiments {experiment} are older than what the system tables surely hold" in caplog.text


def test_unreadable_system_tables_fall_back_to_rest_for_every_experiment(settings, engine, client, experiment,
                                                                          caplog):
    log_run(client, experiment, params={"p": 1})
    result = build_experiment_tables(system_settings(settings, tables__system_schema="no_such_schema"),
                                     experiment_ids=[experiment], engine=engine)
    assert result.exit_code == 0 and result.summaries[0].row_count == 1
    assert "cannot be read here" in caplog.text and "REST API" in caplog.text


@pytest.mark.parametrize("step_column", ["step"])
def test_a_history_step_column_named_step_is_read_too(settings, engine, client, experiment, step_column):
    log_run(client, experiment, metrics={"loss": [(3.0, 0), (1.0, 5), (2.0, 9)]})
    system_tables.fill(engine, client, [experiment], schema="sysml_step", step_column=step_column)
    summary = build_experiment_tables(
        system_settings(settings, tables__system_schema="sysml_step", tables__database="st_step"),
        experiment_ids=[experiment], engine=engine, metric_history="all").summaries[0]
    assert summary.ok, summary.error
    row = engine.spark.sql(f"SELECT _m_loss, _mmin_loss, _mminstep_loss, _mmaxstep_loss "
                           f"FROM st_step.exp_{experiment}").collect()[0]
    assert tuple(row) == (2.0, 1.0, 5, 0)


@pytest.mark.jvm
def test_every_run_keeps_its_own_metric_values_when_a_partition_holds_many_runs(engine, tmp_path):
    """20,000 runs with 5 metrics: the lists an aggregate emits are slices of bigger ones, which
    the embedded engine's map functions misread (each map built from a sorted copy instead)."""
    from pyspark.sql import functions as F

    from mlflow_spark_tools.tables.spark_refresh import key_summaries, summary_maps
    from mlflow_spark_tools.tables.system_tables import SystemTables

    spark, schema, runs, metrics = engine.spark, "sysml_many", 20_000, 5
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}").collect()
    tables = {
        "experiments_latest": (f"SELECT '7' AS experiment_id, '{system_tables.WORKSPACE}' AS workspace_id, 'many' AS "
                               f"name, current_timestamp() AS create_time, CAST(NULL AS TIMESTAMP) AS delete_time"),
        "runs_latest": (f"SELECT md5(CAST(id AS STRING)) AS run_id, '7' AS experiment_id, '{system_tables.WORKSPACE}' "
                        f"AS workspace_id, concat('run-', id) AS run_name, 'FINISHED' AS status, 'me' AS created_by, "
                        f"timestamp_seconds(1700000000 + id) AS start_time, timestamp_seconds(1700000600 + id) AS "
                        f"end_time, timestamp_seconds(1700000600 + id) AS update_time, CAST(NULL AS TIMESTAMP) AS "
                        f"delete_time, map('p', CAST(id AS STRING)) AS params, map('t', 'x') AS tags FROM range({runs})"),
        # each run's metric k: two points, value id * 10 + k at step 1 (latest, highest) and -1 at step 0
        "run_metrics_history": (
            f"SELECT md5(CAST(id DIV {2 * metrics} AS STRING)) AS run_id, '7' AS experiment_id, "
            f"'{system_tables.WORKSPACE}' AS workspace_id, concat('m', CAST(id % {metrics} AS STRING)) AS metric_name, "
            f"timestamp_seconds(1700000100) AS metric_time, CAST(id % {2 * metrics} DIV {metrics} AS BIGINT) AS "
            f"metric_step, IF(id % {2 * metrics} >= {metrics}, CAST((id DIV {2 * metrics}) * 10 + id % {metrics} AS "
            f"DOUBLE), -1.0) AS metric_value FROM range({runs * metrics * 2})"),
    }
    for name, sql in tables.items():
        writer = spark.sql(sql).write.format("delta").mode("overwrite")
        location = engine.table_location(schema, name)
        writer = writer.option("path", location) if location is not None else writer
        writer.saveAsTable(f"{schema}.{name}")
    source = SystemTables(spark, schema, system_tables.WORKSPACE)
    ids = spark.range(runs).select(F.md5(F.col("id").cast("string")).alias("run_id"), F.col("id"))

    latest = source.runs("7").select("run_id", F.inline(F.map_entries("metrics"))).join(ids, "run_id")
    expected = F.col("id") * 10 + F.substring("key", 2, 1).cast("int")
    assert latest.count() == runs * metrics
    assert latest.where(F.col("value") != expected).count() == 0

    summaries = summary_maps(key_summaries(source.history("7"))).select(
        "run_id", F.inline(F.map_entries("summaries"))).join(ids, "run_id")
    assert summaries.count() == runs * metrics
    wrong = summaries.where((F.col("value.max") != expected) | (F.col("value.max_step") != 1)
                            | (F.col("value.min") != -1.0) | (F.col("value.min_step") != 0))
    assert wrong.count() == 0
