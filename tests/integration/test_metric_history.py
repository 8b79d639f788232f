"""The metric history table exp_<id>_metrics, its summaries in exp_<id>, and best-run over history,
checked cell by cell against MlflowClient.get_metric_history on a real server."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from mlflow.entities import Metric

from mlflow_spark_tools.cli import cli
from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.spark.arrow import to_arrow
from mlflow_spark_tools.tables import metric_history as history_table
from mlflow_spark_tools.tables.queries import best_run
from mlflow_spark_tools.tools.proxy import RateLimitProxy
from mlflow_spark_tools.tracking import metric_history
from mlflow_spark_tools.tracking.source import TrackingSource
from tests.conftest import cells_equal
from tests.integration.helpers import build, column_map, log_run, read_table, table_dir
from tests.integration.run_content import MLFLOW_3

DB = "mlflow_exp"
UNLIMITED = RateLimitProfile("unlimited", {"experiment_management": 1e6, "search_runs": 1e6,
                                           "log_batch": 1e6, "other": 1e6})


def history_rows(engine, experiment_id):
    table = to_arrow(engine.spark.sql(
        f"SELECT run_id, key, column_name, step, unix_millis(timestamp) AS ts, value, model_id, dataset_name, "
        f"dataset_digest FROM {DB}.exp_{experiment_id}_metrics"))
    return table.to_pylist()


def expected_points(client, run_ids, keys=None):
    """Every point of every key of the runs, as MlflowClient reads them: (run, key) -> points."""
    found = {}
    for run_id in run_ids:
        for key in client.get_run(run_id).data.metrics:
            if keys is None or key in keys:
                found[(run_id, key)] = sorted(
                    (m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
    return found


def assert_history_equals_client(engine, client, experiment_id, run_ids, keys=None):
    rows = history_rows(engine, experiment_id)
    names = {key: name for (kind, key), (name, _) in column_map(engine, DB, experiment_id).items()
             if kind == "metric"}
    table = {}
    for row in rows:
        assert row["column_name"] == names[row["key"]]
        table.setdefault((row["run_id"], row["key"]), []).append((row["step"], row["ts"], row["value"]))
    expected = expected_points(client, run_ids, keys)
    assert set(table) == set(expected)
    for pair, points in expected.items():
        got = sorted(table[pair], key=lambda p: (p[0], p[1], -math.inf if math.isnan(p[2]) else p[2]))
        want = sorted(points, key=lambda p: (p[0], p[1], -math.inf if math.isnan(p[2]) else p[2]))
        assert len(got) == len(want), pair
        assert all(g[:2] == w[:2] and cells_equal(g[2], w[2]) for g, w in zip(got, want)), pair
    return rows


def assert_summaries_match(engine, client, experiment_id, keys):
    """_mmin_/_mmax_ and their steps equal what the client's histories give."""
    columns = column_map(engine, DB, experiment_id)
    for row in read_table(engine, DB, experiment_id):
        for key in keys:
            history = client.get_metric_history(row["run_id"], key)
            numbers = [m for m in history if not math.isnan(m.value)]
            low = min(numbers, key=lambda m: (m.value, m.step)) if numbers else None
            high = min(numbers, key=lambda m: (-m.value, m.step)) if numbers else None
            assert row[columns[("metric_min", key)][0]] == (low.value if low else None)
            assert row[columns[("metric_min_step", key)][0]] == (low.step if low else None)
            assert row[columns[("metric_max", key)][0]] == (high.value if high else None)
            assert row[columns[("metric_max_step", key)][0]] == (high.step if high else None)


@pytest.mark.compat
def test_history_table_and_summaries_equal_the_client_nan_and_infinities_included(
        settings, engine, client, experiment):
    parent = log_run(client, experiment, metrics={"val.loss": [(3.0, 0), (1.0, 1), (2.0, 2)]})
    run_ids = [parent]
    # NaN between numbers, infinities (the SQL store keeps them as +-1.797e308), a tie at the
    # lowest value (the first step wins), a key with a space and one in another script.
    run_ids.append(log_run(client, experiment, parent_run_id=parent, metrics={
        "val.loss": [(5.0, 0), (float("nan"), 1), (0.5, 2), (0.5, 3), (float("inf"), 4), (float("-inf"), 5)],
        "my acc": [(0.1, 0), (0.9, 10)],
        "学习率": [(0.01, 0)],
    }))
    run_ids.append(log_run(client, experiment, metrics={"val.loss": [(float("nan"), 0)]}))
    run_ids.append(log_run(client, experiment, metrics={"val/loss": [(7.0, 0), (6.0, 1)]}))
    summary = build(settings, experiment, engine, metric_history="all")

    assert summary.metrics_table == f"{DB}.exp_{experiment}_metrics"
    assert summary.history_points == 3 + 6 + 2 + 1 + 1 + 2
    assert summary.history_runs == 4
    assert summary.history_requests == 4  # one bulk request per key
    assert_history_equals_client(engine, client, experiment, run_ids)
    assert_summaries_match(engine, client, experiment, ["val.loss", "my acc", "学习率", "val/loss"])
    columns = column_map(engine, DB, experiment)
    # summaries are named after the metric's own column, collisions and scripts included
    assert columns[("metric", "val/loss")][0] == "_m_val_loss_2"
    assert columns[("metric_min", "val/loss")] == ("_mmin_val_loss_2", "double")
    assert columns[("metric_min_step", "val.loss")] == ("_mminstep_val_loss", "bigint")
    assert columns[("metric_max", "学习率")][0] == "_mmax_u5b66u4e60u7387"
    rows = {r["run_id"]: r for r in read_table(engine, DB, experiment)}
    assert rows[run_ids[1]]["_mminstep_val_loss"] == 5 and rows[run_ids[1]]["_mmin_val_loss"] < -1e308
    assert rows[run_ids[2]]["_mmin_val_loss"] is None and math.isnan(rows[run_ids[2]]["_m_val_loss"])
    index = engine.spark.sql(f"SELECT metric_history, metrics_table FROM {DB}.experiments "
                             f"WHERE experiment_id = '{experiment}'").collect()[0]
    assert (index["metric_history"], index["metrics_table"]) == ("all", f"{DB}.exp_{experiment}_metrics")


@pytest.mark.compat
@pytest.mark.jvm
def test_incremental_history_reads_only_runs_that_may_have_new_points(settings, engine, client, experiment):
    settings = settings.with_overrides(tables__watermark_margin_seconds=0)
    done = [log_run(client, experiment, metrics={"loss": [(float(10 - s), s) for s in range(5)]}) for _ in range(3)]
    open_run = log_run(client, experiment, metrics={"loss": [(9.0, 0)]}, finish=False)
    doomed = log_run(client, experiment, metrics={"loss": [(1.0, 0)]})
    first = build(settings, experiment, engine, metric_history="all")
    assert first.mode == "full" and first.history_runs == 5

    time.sleep(0.05)
    client.log_batch(open_run, metrics=[Metric("loss", 0.25, int(time.time() * 1000), s) for s in (1, 2)])
    client.set_terminated(open_run)
    new = log_run(client, experiment, metrics={"loss": [(4.0, 0), (3.0, 1)]})
    client.delete_run(doomed)
    second = build(settings, experiment, engine, metric_history="all")

    assert second.mode == "incremental"
    assert second.history_runs == 2  # the unfinished run and the new one; finished runs cost nothing
    assert second.history_requests == 1
    assert_history_equals_client(engine, client, experiment, [*done, open_run, new])
    assert_summaries_match(engine, client, experiment, ["loss"])
    rows = {r["run_id"]: r for r in read_table(engine, DB, experiment)}
    assert rows[open_run]["_mmin_loss"] == 0.25 and rows[open_run]["_mminstep_loss"] == 1
    assert doomed not in rows

    # new points only (the deleted run's rows are gone already): appended, nothing rewritten,
    # NaN points and points read again not doubled
    time.sleep(0.05)
    later = log_run(client, experiment, metrics={"loss": [(float("nan"), 0), (2.0, 1)]}, finish=False)
    third = build(settings, experiment, engine, metric_history="all")
    assert third.mode == "incremental" and third.history_runs == 1  # `later` only
    log_dir = table_dir(engine, DB, f"exp_{experiment}_metrics") / "_delta_log"
    last = [json.loads(line) for line in sorted(log_dir.glob("*.json"))[-1].read_text().splitlines()]
    assert not [a for a in last if "remove" in a] and len([a for a in last if "add" in a]) >= 1
    assert_history_equals_client(engine, client, experiment, [*done, open_run, new, later])
    fourth = build(settings, experiment, engine, metric_history="all")  # `later` (unfinished) read again
    assert fourth.history_runs == 1 and fourth.history_points == 0  # nothing new: no commit
    assert_history_equals_client(engine, client, experiment, [*done, open_run, new, later])


@pytest.mark.compat
@pytest.mark.jvm
def test_a_key_selection_and_changing_it(settings, engine, client, experiment):
    run_ids = [log_run(client, experiment, metrics={"loss": [(1.0, 0), (0.5, 1)], "acc": [(0.7, 0)]})
               for _ in range(2)]
    summary = build(settings, experiment, engine, metric_history="loss")
    assert_history_equals_client(engine, client, experiment, run_ids, keys={"loss"})
    columns = column_map(engine, DB, experiment)
    assert ("metric_min", "loss") in columns and ("metric_min", "acc") not in columns
    assert summary.mode == "full"

    again = build(settings, experiment, engine, metric_history="loss,acc")
    assert again.mode == "full"  # another selection rebuilds the history
    assert_history_equals_client(engine, client, experiment, run_ids, keys={"loss", "acc"})
    assert build(settings, experiment, engine, metric_history="acc,loss").mode == "incremental"
    off = build(settings, experiment, engine, metric_history="none")
    assert off.mode == "full" and off.metrics_table is None
    assert "_mmin_loss" not in engine.spark.table(f"{DB}.exp_{experiment}").columns
    # the mapping lists no summary column the table no longer has
    assert [k for k in column_map(engine, DB, experiment) if k[0].startswith("metric_m")] == []


def test_a_mistyped_key_is_refused_before_the_history_is_touched(settings, engine, client, experiment):
    """`--metric-history val_los` on a table built with `all`: exit 2 naming the key and the
    close one, and the history table and its summary columns stay as they were."""
    from mlflow_spark_tools.tables.build import build_experiment_tables

    run_ids = [log_run(client, experiment, metrics={"val_loss": [(1.0, 0), (0.5, 1)], "acc": [(0.7, 0)]})
               for _ in range(2)]
    build(settings, experiment, engine, metric_history="all")
    points = engine.spark.table(f"{DB}.exp_{experiment}_metrics").count()
    result = build_experiment_tables(settings, experiment_ids=[experiment], engine=engine, metric_history="val_los")
    assert result.exit_code == 2
    error = result.summaries[0].error
    assert "metric keys that no run of experiment" in error and "val_los (did you mean val_loss?)" in error
    assert engine.spark.table(f"{DB}.exp_{experiment}_metrics").count() == points == 6
    assert "_mmin_val_loss" in engine.spark.table(f"{DB}.exp_{experiment}").columns
    # the keys it has are taken; a key new runs have just logged, with --full-refresh
    assert build(settings, experiment, engine, metric_history="val_loss").mode == "full"
    log_run(client, experiment, metrics={"f1": [(0.1, 0)]})
    assert build(settings, experiment, engine, metric_history="val_loss,f1", full_refresh=True).ok
    keys = [r["key"] for r in engine.spark.table(f"{DB}.exp_{experiment}_metrics").collect()]
    assert sorted(keys) == ["f1"] + ["val_loss"] * 4 and len(run_ids) == 2


def test_cut_bulk_answers_and_runs_longer_than_an_answer_lose_no_point(settings, engine, client, experiment,
                                                                       monkeypatch):
    # The server cuts a bulk answer at max_results points (25,000 in production); with 40 the
    # answers here are cut mid-run, and a run of 95 points needs per-run pages of 30.
    monkeypatch.setattr(metric_history, "BULK_MAX_POINTS", 40)
    monkeypatch.setattr(metric_history, "PAGE_POINTS", 30)
    # and chunks of 50 points: the points go through the staging table in several writes
    monkeypatch.setattr(history_table, "CHUNK_ROWS", 50)
    lengths = [12, 95, 3, 17, 40, 1, 22]
    run_ids = [log_run(client, experiment, metrics={"loss": [(float(i * 100 + s), s) for s in range(n)]})
               for i, n in enumerate(lengths)]
    summary = build(settings, experiment, engine, metric_history="all")
    assert summary.history_points == sum(lengths)
    assert_history_equals_client(engine, client, experiment, run_ids)
    assert_summaries_match(engine, client, experiment, ["loss"])
    staging = f"exp_{experiment}_metrics__staging"
    assert not engine.spark.catalog.tableExists(f"{DB}.{staging}")
    assert not table_dir(engine, DB, staging).exists()
    # an incremental refresh through the staging table too
    client.set_terminated(run_ids[0])
    more = log_run(client, experiment, metrics={"loss": [(float(s), s) for s in range(70)]})
    again = build(settings, experiment, engine, metric_history="all")
    assert again.mode == "incremental" and again.history_points >= 70
    assert_history_equals_client(engine, client, experiment, [*run_ids, more])


def test_max_history_points_cuts_and_says_so(settings, engine, client, experiment):
    settings = settings.with_overrides(tables__max_history_points=4)
    long_run = log_run(client, experiment, metrics={"loss": [(float(s), s) for s in range(10)]})
    short = log_run(client, experiment, metrics={"loss": [(1.0, 0)]})
    summary = build(settings, experiment, engine, metric_history="all")
    assert summary.history_truncated == [f"{long_run}/loss"]
    counts = {r["run_id"]: 0 for r in history_rows(engine, experiment)}
    for r in history_rows(engine, experiment):
        counts[r["run_id"]] += 1
    assert counts == {long_run: 4, short: 1}


def _no_bulk_endpoint(status, content_type, body):
    """A server whose bulk history path is not the endpoint (Databricks documents none)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.mark.compat
@pytest.mark.parametrize("status, content_type, body", [
    (404, "application/json", b'{"error_code": "ENDPOINT_NOT_FOUND", "message": "No API found"}'),
    (403, "application/json", b'{"error_code": "PERMISSION_DENIED", "message": "Invalid access token"}'),
    (200, "text/html", b"<!doctype html><title>Workspace</title>"),
])
def test_a_server_without_the_bulk_endpoint_is_read_run_by_run_paced(settings, engine, client, experiment,
                                                                      tmp_path, status, content_type, body):
    run_ids = [log_run(client, experiment, metrics={"loss": [(float(s), s) for s in range(3)],
                                                    "acc": [(0.5, 0)]}) for _ in range(6)]
    old = ThreadingHTTPServer(("127.0.0.1", 0), _no_bulk_endpoint(status, content_type, body))
    threading.Thread(target=old.serve_forever, daemon=True).start()
    limits = {"experiment_management": 1000, "search_runs": 1000, "log_batch": 1000, "other": 5}
    proxy = RateLimitProxy(
        settings.tracking_uri, RateLimitProfile("test", limits, safety_factor=1.0),
        routes={"/ajax-api/2.0/mlflow/metrics/get-history-bulk": f"http://127.0.0.1:{old.server_address[1]}"},
    ).start()
    try:
        profile = tmp_path / "paced.yaml"
        profile.write_text("limits: {experiment_management: 1000, search_runs: 1000, log_batch: 1000, "
                           "other: 4}\nsafety_factor: 1.0\n")
        summary = build(settings.with_overrides(tracking_uri=proxy.url, rate_limit_profile=str(profile)),
                        experiment, engine, metric_history="all")
        stats = proxy.stats()
    finally:
        proxy.stop()
        old.shutdown()
    assert_history_equals_client(engine, client, experiment, run_ids)
    endpoints = stats["endpoints"]
    assert endpoints["metrics/get-history-bulk"]["requests"] == 1  # asked once, remembered
    assert endpoints["metrics/get-history"]["requests"] == 12  # one per run and key
    assert summary.history_requests == 12
    # 13 requests from 4 threads, paced under the proxy's 5 qps of the `other` class: no 429
    assert sum(stats["rate_limited"].values()) == 0


@pytest.mark.jvm
def test_best_run_by_history_from_table_and_server_agree(settings, engine, client, experiment):
    curves = {
        "a": [(5.0, 0), (2.0, 1), (3.0, 2), (float("nan"), 3)],
        "b": [(4.0, 0), (2.5, 1), (1.5, 2), (8.0, 3)],
        "c": [(9.0, 0), (1.0, 1), (1.0, 2), (1.2, 3)],
    }
    run_ids = {name: log_run(client, experiment, run_name=name, metrics={"loss": points})
               for name, points in curves.items()}
    source = TrackingSource.from_settings(settings)
    wanted = {("min", True): ("c", 1.0, 1), ("min", False): ("a", 2.0, 1),
              ("max", True): ("a", 5.0, 0), ("max", False): ("c", 9.0, 0)}
    for (aggregate, ascending), (name, value, step) in wanted.items():
        choice = best_run(experiment, "loss", aggregate=aggregate, ascending=ascending, source=source)
        assert (choice.run_id, choice.value, choice.step, choice.source) == (run_ids[name], value, step,
                                                                               "tracking server")
    latest = best_run(experiment, "loss", source=source)
    assert latest.run_id == run_ids["c"] and latest.step is None  # "a" ends on NaN, "b" on 8.0

    build(settings, experiment, engine, metric_history="all")
    for (aggregate, ascending), (name, value, step) in wanted.items():
        choice = best_run(experiment, "loss", aggregate=aggregate, ascending=ascending, source=source,
                          engine=engine)
        assert (choice.run_id, choice.value, choice.step, choice.source) == (run_ids[name], value, step, "table")

    result = CliRunner().invoke(cli, ["best-run", "--experiment-id", experiment, "--metric", "loss",
                                      "--aggregate", "min", "--format", "json"],
                                obj={"settings": settings, "engine": engine})
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert (printed["run_id"], printed["value"], printed["step"], printed["aggregate"], printed["source"]) == (
        run_ids["c"], 1.0, 1, "min", "table")


def test_an_index_table_of_an_older_version_gains_the_history_columns(settings, engine, client, experiment):
    import uuid

    from mlflow_spark_tools.spark.catalog import Database
    from mlflow_spark_tools.tables.index_table import INDEX_COLUMNS

    database = f"old_{uuid.uuid4().hex[:8]}"
    db = Database(engine, database)
    db.ensure()
    newer = ("metric_history", "metrics_table", "inputs_table", "models_table")
    old = ", ".join(f"`{n}` {t}" for n, t in INDEX_COLUMNS if n not in newer)
    db.overwrite(engine.spark.createDataFrame([], old), "experiments", ["experiment_id"])
    log_run(client, experiment, metrics={"loss": [(1.0, 0), (0.5, 1)]})
    build(settings.with_overrides(tables__database=database), experiment, engine, metric_history="loss")
    row = engine.spark.sql(f"SELECT * FROM {database}.experiments").collect()[0]
    assert (row["metric_history"], row["metrics_table"]) == ("loss", f"{database}.exp_{experiment}_metrics")
    assert row["inputs_table"] == f"{database}.exp_{experiment}_inputs"
    assert row["models_table"] == (f"{database}.exp_{experiment}_models" if MLFLOW_3 else None)


def test_the_readme_history_recipes_answer_on_a_built_table(settings, engine, client, experiment):
    """The SQL of README's "Metric history" section, run on this experiment's tables."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Metric history"):readme.index("### Datasets, logged models")]
    queries = [q.replace("exp_1", f"exp_{experiment}") for q in re.findall(r"```sql\n(.*?)```", section, re.S)]
    assert len(queries) == 3
    curves = {f"r{i}": [(1.0 / (s + 1) + i / 10 + (0.5 if i == 3 and s > 15 else 0.0), s) for s in range(20)]
              for i in range(7)}
    ids = {name: log_run(client, experiment, run_name=name, metrics={"val_loss": points})
           for name, points in curves.items()}
    build(settings, experiment, engine, metric_history="all")
    best, top_curves, got_worse = (engine.spark.sql(q).collect() for q in queries)
    # by the lowest value at any step: r3 got there (step 15) before it got worse
    assert [r["run_id"] for r in best] == [ids[f"r{i}"] for i in range(5)]
    assert (best[3]["_mminstep_val_loss"], best[3]["latest"]) == (15, curves["r3"][-1][0])
    assert len(top_curves) == 5 * 20 and top_curves[0]["run_id"] == ids["r0"]
    assert [r["run_id"] for r in got_worse] == [ids["r3"]]
