"""Experiment tables built from a real tracking server on the embedded engine."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from mlflow_spark_tools.runs.columns import INFO_COLUMNS

from ..conftest import cells_equal
from .helpers import build, column_map, column_types, log_run, read_table

pytestmark = pytest.mark.jvm

DB = "mlflow_exp"


@pytest.mark.compat
def test_typed_param_columns_and_sql_without_backticks(settings, engine, client, experiment):
    log_run(client, experiment, params={"depth": 3, "lr": 0.1, "opt": "adam", "flag": "True"},
            metrics={"rmse": 0.5})
    log_run(client, experiment, params={"depth": 5, "lr": "1e-3", "opt": "sgd", "flag": "false"},
            metrics={"rmse": 0.25})
    summary = build(settings, experiment, engine)
    assert summary.mode == "full" and summary.rows_inserted == 2 and summary.row_count == 2
    types = column_types(engine, DB, experiment)
    assert types["_p_depth"] == "bigint"
    assert types["_p_lr"] == "double"
    assert types["_p_flag"] == "boolean"
    assert types["_p_opt"] == "string"
    assert types["_m_rmse"] == "double"
    assert types["start_time"] == "timestamp" and types["end_time"] == "timestamp"
    assert list(types)[: len(INFO_COLUMNS)] == [name for name, _ in INFO_COLUMNS]
    best = engine.spark.sql(
        f"SELECT _p_depth, _p_lr, _p_flag FROM {DB}.exp_{experiment} ORDER BY _m_rmse LIMIT 1"
    ).collect()[0]
    assert (best["_p_depth"], best["_p_lr"], best["_p_flag"]) == (5, 0.001, False)
    cmap = column_map(engine, DB, experiment)
    assert cmap[("param", "depth")] == ("_p_depth", "bigint")
    assert cmap[("info", "run_id")] == ("run_id", "string")


def test_key_names_unicode_slashes_collisions_and_250_characters(settings, engine, client, experiment):
    long_key = "k" * 250
    params = {"a.b": "1", "a/b": "2", "a b": "3", "a-b": "4", "LR": "x", "lr": "y",
              "temp:ü": "z", long_key: "long"}
    tags = {"team/owner": "ml", long_key: "t"}
    run_id = log_run(client, experiment, params=params, tags=tags, metrics={long_key: 1.0})
    first = build(settings, experiment, engine)
    cmap = column_map(engine, DB, experiment)
    names = [cmap[("param", k)][0] for k in params]
    assert len({n.lower() for n in names}) == len(names)
    for name in names + [cmap[("tag", "team/owner")][0], cmap[("metric", long_key)][0]]:
        assert all(c.isalnum() and c.isascii() or c == "_" for c in name), name
        assert len(name) <= 255
    # lowercase names; "lr" is a safe name and keeps it
    assert cmap[("param", "lr")][0] == "_p_lr" and cmap[("param", "LR")][0] == "_p_lr_2"
    # the collisions are listed in the summary: the other keys of a name, sorted
    assert first.column_collisions == [
        "param 'LR' is _p_lr_2: _p_lr is param 'lr'",
        "param 'a-b' is _p_a_b_2: _p_a_b is param 'a b'",
        "param 'a.b' is _p_a_b_3: _p_a_b is param 'a b'",
        "param 'a/b' is _p_a_b_4: _p_a_b is param 'a b'",
    ]
    assert cmap[("param", "temp:ü")][0] == "_p_temp_u"
    # every mapped column holds the value of its own key, readable without backticks
    select = ", ".join(cmap[("param", k)][0] for k in params)
    row = engine.spark.sql(f"SELECT {select} FROM {DB}.exp_{experiment}").collect()[0]
    assert list(row) == [int(v) if v.isdigit() else v for v in params.values()]
    tag_col = cmap[("tag", long_key)][0]
    assert engine.spark.sql(f"SELECT {tag_col} FROM {DB}.exp_{experiment}").collect()[0][0] == "t"
    # a refresh keeps every name
    log_run(client, experiment, params={"a_b": "5"})
    summary = build(settings, experiment, engine)
    assert summary.mode == "incremental"
    cmap2 = column_map(engine, DB, experiment)
    assert all(cmap2[k] == v for k, v in cmap.items())
    # a safe key that comes after its name was given keeps the names given before
    assert cmap2[("param", "a_b")][0] == "_p_a_b_5"
    assert summary.column_collisions == ["param 'a_b' is _p_a_b_5: _p_a_b is param 'a b'"]
    assert run_id


@pytest.mark.compat
def test_deletion_vectors_on_jvm_delta_when_asked_for(settings, engine, client, experiment):
    """tables.deletion_vectors: true makes JVM Delta's incremental MERGE mark the replaced row
    instead of rewriting its file, with the same rows; the embedded engine writes none."""
    from mlflow_spark_tools.spark.engine import SAIL

    ids = [log_run(client, experiment, params={"i": i}, metrics={"m": float(i)}) for i in range(8)]
    dv = settings.with_overrides(tables__deletion_vectors=True)
    build(dv, experiment, engine)
    client.set_tag(ids[0], "reviewed", "yes")
    summary = build(dv, experiment, engine)
    assert (summary.mode, summary.rows_updated) == ("incremental", 1)
    history = engine.spark.sql(f"DESCRIBE HISTORY {DB}.exp_{experiment}").collect() \
        if engine.executor != SAIL else []
    rows = {r["run_id"]: r for r in read_table(engine, DB, experiment)}
    assert len(rows) == 8 and rows[ids[0]]["_t_reviewed"] == "yes" and rows[ids[1]]["_t_reviewed"] is None
    if engine.executor == SAIL:
        return
    properties = engine.spark.sql(f"DESCRIBE DETAIL {DB}.exp_{experiment}").collect()[0]["properties"]
    assert properties.get("delta.enableDeletionVectors") == "true"
    merge = next(h for h in history if h["operation"] == "MERGE")
    assert int(merge["operationMetrics"]["numTargetRowsCopied"]) == 0  # no other row rewritten
    assert int(merge["operationMetrics"].get("numTargetDeletionVectorsAdded", 0)) == 1


@pytest.mark.compat
def test_widening_a_typed_column_to_string(settings, engine, client, experiment):
    log_run(client, experiment, params={"batch": "32", "lr": "0.1"})
    build(settings, experiment, engine)
    assert column_types(engine, DB, experiment)["_p_batch"] == "bigint"
    log_run(client, experiment, params={"batch": "auto", "lr": "0.2"})
    summary = build(settings, experiment, engine)
    assert summary.columns_widened == ["_p_batch"]
    types = column_types(engine, DB, experiment)
    assert types["_p_batch"] == "string" and types["_p_lr"] == "double"
    values = sorted(r["_p_batch"] for r in read_table(engine, DB, experiment))
    assert values == ["32", "auto"]
    assert column_map(engine, DB, experiment)[("param", "batch")] == ("_p_batch", "string")


@pytest.mark.compat
def test_metric_values_are_what_the_server_returns(settings, engine, client, experiment):
    ids = {
        "nan": log_run(client, experiment, metrics={"m": math.nan}),
        "inf": log_run(client, experiment, metrics={"m": math.inf}),
        "ninf": log_run(client, experiment, metrics={"m": -math.inf}),
        "hist": log_run(client, experiment, metrics={"m": [(5.0, 0), (3.0, 2), (4.0, 1)]}),
        "none": log_run(client, experiment, params={"p": "1"}),
    }
    build(settings, experiment, engine)
    rows = {r["run_id"]: r for r in read_table(engine, DB, experiment)}
    for label, run_id in ids.items():
        server = client.get_run(run_id).data.metrics.get("m")
        assert cells_equal(rows[run_id]["_m_m"], server), label
    assert math.isnan(rows[ids["nan"]]["_m_m"])
    assert rows[ids["hist"]]["_m_m"] == 3.0  # latest = highest step
    assert rows[ids["none"]]["_m_m"] is None
    assert rows[ids["inf"]]["_m_m"] > 1e308


def test_an_error_that_is_not_the_packages_own_fails_one_experiment_only(settings, engine, client, monkeypatch):
    """One experiment whose build fails with an engine's or a library's error (say Spark
    Connect's RESOURCE_EXHAUSTED on a huge dataset profile) is reported in one line; the
    experiments after it are still built."""
    from mlflow_spark_tools.errors import EXIT_PARTIAL
    from mlflow_spark_tools.tables.build import build_experiment_tables
    from mlflow_spark_tools.tables.builder import ExperimentTableBuilder

    first, second = (client.create_experiment(f"isolated-{i}-{os.urandom(4).hex()}") for i in range(2))
    for experiment in (first, second):
        log_run(client, experiment, params={"a": 1})
    refresh = ExperimentTableBuilder.refresh

    def failing(self, experiment, **kwargs):
        if experiment.experiment_id == first:
            raise RuntimeError("RESOURCE_EXHAUSTED: Sent message larger than max (335553003 vs. 134217728)\n"
                               "\tat org.apache.spark.Something(Stack.java:1)")
        return refresh(self, experiment, **kwargs)

    monkeypatch.setattr(ExperimentTableBuilder, "refresh", failing)
    result = build_experiment_tables(settings, experiment_ids=[first, second], engine=engine)
    failed, built = result.summaries
    assert failed.error == "RuntimeError: RESOURCE_EXHAUSTED: Sent message larger than max (335553003 vs. 134217728)"
    assert failed.error_exit_code == 1 and not failed.ok
    assert built.ok and built.row_count == 1
    assert result.exit_code == EXIT_PARTIAL


@pytest.mark.compat
def test_empty_experiment_gets_a_table_with_info_columns(settings, engine, experiment):
    summary = build(settings, experiment, engine)
    assert summary.row_count == 0 and summary.runs_fetched == 0
    assert list(column_types(engine, DB, experiment)) == [n for n, _ in INFO_COLUMNS]
    index = engine.spark.sql(
        f"SELECT run_count, table_name FROM {DB}.experiments WHERE experiment_id = '{experiment}'"
    ).collect()[0]
    assert index["run_count"] == 0 and index["table_name"] == f"{DB}.exp_{experiment}"


@pytest.mark.compat
def test_nested_runs_carry_their_parent(settings, engine, client, experiment):
    parent = log_run(client, experiment, metrics={"loss": 0.9}, run_name="parent")
    child = log_run(client, experiment, metrics={"loss": 0.1}, parent_run_id=parent)
    build(settings, experiment, engine)
    rows = {r["run_id"]: r for r in read_table(engine, DB, experiment)}
    assert rows[child]["parent_run_id"] == parent
    assert rows[parent]["parent_run_id"] is None
    assert rows[parent]["run_name"] == "parent"


@pytest.mark.compat
def test_deleted_runs_removed_or_kept(settings, engine, client, experiment):
    keep = log_run(client, experiment, metrics={"m": 1.0})
    gone = log_run(client, experiment, metrics={"m": 2.0})
    build(settings, experiment, engine)
    client.delete_run(gone)
    summary = build(settings, experiment, engine)
    assert summary.mode == "incremental" and summary.rows_deleted == 1
    assert [r["run_id"] for r in read_table(engine, DB, experiment)] == [keep]
    summary = build(settings, experiment, engine, include_deleted=True)
    assert summary.mode == "full"  # the table's mode changed
    rows = {r["run_id"]: r["lifecycle_stage"] for r in read_table(engine, DB, experiment)}
    assert rows == {keep: "active", gone: "deleted"}


@pytest.mark.compat
@pytest.mark.parametrize("include_deleted", [False, True])
def test_incremental_refresh_equals_full_rebuild_cell_by_cell(
    settings, engine, client, experiment, include_deleted
):
    running = [log_run(client, experiment, params={"i": i}, metrics={"m": i}, finish=False)
               for i in range(3)]
    done = [log_run(client, experiment, params={"i": i, "opt": "adam"}, metrics={"m": i})
            for i in range(3, 8)]
    build(settings, experiment, engine, include_deleted=include_deleted)
    # change: new runs with new keys, running runs log more and finish, deletions
    client.log_metric(running[0], "m", 100.0, step=5)
    client.log_param(running[0], "late", "yes")
    client.set_tag(running[1], "stage", "eval")
    for run_id in running:
        client.set_terminated(run_id, status="FAILED" if run_id == running[2] else "FINISHED")
    client.delete_run(done[0])
    client.delete_run(running[2])
    log_run(client, experiment, params={"i": 99, "new.key": "v"}, metrics={"m": -1.0, "extra": 2.0})
    log_run(client, experiment, params={"i": 98}, finish=False)
    summary = build(settings, experiment, engine, include_deleted=include_deleted)
    assert summary.mode == "incremental"
    assert summary.rows_inserted == 2
    assert summary.rows_deleted == (0 if include_deleted else 2)
    # runs re-read within the margin but unchanged (done[1:]) are not counted as updated
    assert summary.rows_updated == (4 if include_deleted else 2)
    assert "_p_new_key" in summary.columns_added and "_m_extra" in summary.columns_added
    other = settings.with_overrides(tables__database="mlflow_exp_rebuild")
    build(other, experiment, engine, include_deleted=include_deleted)
    incremental = read_table(engine, DB, experiment)
    rebuilt = read_table(engine, "mlflow_exp_rebuild", experiment)
    assert len(incremental) == len(rebuilt) == (10 if include_deleted else 8)
    assert sorted(incremental[0]) == sorted(rebuilt[0])
    for a, b in zip(incremental, rebuilt):
        for column in a:
            assert cells_equal(a[column], b[column]), (column, a[column], b[column])


@pytest.mark.compat
def test_nan_survives_beside_equal_values_after_build_and_merge(settings, engine, client, experiment):
    # Delta statistics ignore NaN: min == max == 0.5 must not turn NaN into 0.5 on read.
    nan_run = log_run(client, experiment, metrics={"m": math.nan})
    log_run(client, experiment, metrics={"m": 0.5})
    build(settings, experiment, engine)
    late = log_run(client, experiment, metrics={"m": math.nan})
    log_run(client, experiment, metrics={"m": 0.5})
    assert build(settings, experiment, engine).mode == "incremental"
    unchanged = build(settings, experiment, engine)
    assert (unchanged.rows_inserted, unchanged.rows_updated, unchanged.rows_deleted) == (0, 0, 0)
    rows = {r["run_id"]: r["_m_m"] for r in read_table(engine, DB, experiment)}
    assert math.isnan(rows[nan_run]) and math.isnan(rows[late])
    assert sorted(v for v in rows.values() if not math.isnan(v)) == [0.5, 0.5]


def test_a_session_kept_without_its_engine_keeps_working(tmp_path):
    """get_engine(...).spark alone: the Engine is garbage-collected, its embedded server must
    not stop under the session (a fresh process, no other session active)."""
    code = (
        "import gc, sys\n"
        "from mlflow_spark_tools.engine import get_engine\n"
        f"spark = get_engine(warehouse={str(tmp_path / 'warehouse')!r}).spark\n"
        "gc.collect()\n"
        "print(spark.sql('SELECT 1 AS one').collect()[0]['one'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED",
                                                             "SPARK_LOCAL_REMOTE")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                          env={**env, "RUST_LOG": "error"}, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr[-2000:]
    # a warehouse path with a space: the engine writes through a private link, gone at stop()
    code = (
        "from mlflow_spark_tools.engine import get_engine\n"
        f"engine = get_engine(warehouse={str(tmp_path / 'ware house')!r})\n"
        "link = engine.engine_warehouse\n"
        "assert link != engine.warehouse and link.is_symlink() and link.resolve() == engine.warehouse\n"
        "engine.stop()\n"
        "assert not link.parent.exists()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                          env={**env, "RUST_LOG": "error"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
