"""Benchmark: a table build from MLflow system tables (inside Spark) against the database source.

    .venv/bin/python bench/bench_system_tables.py [--runs 200000] [--repetitions 2]

One engine (Sail, a process of its own) holds Delta tables in the layout of Databricks' MLflow
system tables, generated in Spark: ``--runs`` runs of one experiment with 20 params, 20 metrics
(one point each) and 20 tags, in a workspace among two. The same shape of runs is seeded into an
MLflow sqlite store. Per repetition, each in a fresh driver process:

- ``system_tables``: ``build-tables --full-refresh --source system-tables``;
- ``database``: ``build-tables --full-refresh --source database`` on the sqlite store;
- ``system_tables_incremental``: after 1% of the runs got a new ``update_time`` and tag.

Reported: seconds, the driver's peak RSS (the build's own process) and the engine's. The
system-tables build sends the driver only keys and counts, so its driver memory does not grow
with the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench_support import (
    engine_process,
    median_of,
    peak_rss_mb,
    serve_engine,
    timed_build,
    worker_result,
    write_report,
)

HERE = Path(__file__).resolve()
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("RUST_LOG", "error")
SCHEMA, EXPERIMENT, WORKSPACE = "bench_system", "4242", "1234567890123456"


def generate(remote: str, warehouse: str, runs: int) -> None:
    """The three tables, in Spark SQL (no row passes through Python)."""
    from mlflow_spark_tools.spark.engine import get_engine

    spark = get_engine(remote=remote, warehouse=warehouse).spark
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}").collect()
    base = int(time.time()) - 3600 - runs
    keys = ", ".join(f"'param_{i}'" for i in range(20))
    param_values = ", ".join(
        f"CAST(id % 500 + {i} AS STRING)" if i % 3 == 0 else
        "CAST(element_at(array(1e-4, 3e-4, 1e-3, 0.01, 0.05), CAST(id % 5 + 1 AS INT)) AS STRING)" if i % 3 == 1
        else "element_at(array('adam', 'sgd', 'rmsprop'), CAST(id % 3 + 1 AS INT))" for i in range(20))
    tag_keys = ", ".join(["'mlflow.runName'", "'mlflow.user'", *(f"'tag_{i}'" for i in range(18))])
    tag_values = ", ".join(["concat('run-', id)", "'seed'", *("concat('value-', CAST(id % 50 AS STRING))"
                                                              for _ in range(18))])
    tables = {
        "experiments_latest": (
            f"SELECT 'acct' AS account_id, current_timestamp() AS update_time, CAST(NULL AS TIMESTAMP) AS delete_time, "
            f"'{EXPERIMENT}' AS experiment_id, '{WORKSPACE}' AS workspace_id, 'bench' AS name, "
            f"current_timestamp() AS create_time"),
        "runs_latest": (
            f"SELECT 'acct' AS account_id, timestamp_seconds({base} + id + 600) AS update_time, "
            f"CAST(NULL AS TIMESTAMP) AS delete_time, '{WORKSPACE}' AS workspace_id, "
            f"md5(CAST(id AS STRING)) AS run_id, '{EXPERIMENT}' AS experiment_id, 'seed' AS created_by, "
            f"timestamp_seconds({base} + id) AS start_time, timestamp_seconds({base} + id + 600) AS end_time, "
            f"concat('run-', id) AS run_name, 'FINISHED' AS status, "
            f"map_from_arrays(array({keys}), array({param_values})) AS params, "
            f"map_from_arrays(array({tag_keys}), array({tag_values})) AS tags, "
            f"CAST(NULL AS ARRAY<STRUCT<metric_name: STRING, latest_value: DOUBLE>>) AS aggregated_metrics "
            f"FROM range({runs})"),
        "run_metrics_history": (
            f"SELECT 'acct' AS account_id, current_timestamp() AS insert_time, uuid() AS record_id, "
            f"'{WORKSPACE}' AS workspace_id, '{EXPERIMENT}' AS experiment_id, md5(CAST(id DIV 20 AS STRING)) AS run_id, "
            f"concat('metric_', CAST(id % 20 AS STRING)) AS metric_name, "
            f"timestamp_seconds({base} + id DIV 20 + 500) AS metric_time, CAST(0 AS BIGINT) AS metric_step, "
            f"rand(7) AS metric_value FROM range({runs * 20})"),
    }
    for name, sql in tables.items():
        spark.sql(f"DROP TABLE IF EXISTS {SCHEMA}.{name}").collect()
        spark.sql(sql).write.format("delta").mode("overwrite").option(
            "path", str(Path(warehouse) / SCHEMA / name)).saveAsTable(f"{SCHEMA}.{name}")
    spark.stop()  # a session left open to an engine that is killed later keeps this process alive


def touch(remote: str, warehouse: str, runs: int) -> int:
    """1% of the runs get a new tag and ``update_time`` (one MERGE); returns how many."""
    from mlflow_spark_tools.spark.engine import get_engine

    spark = get_engine(remote=remote, warehouse=warehouse).spark
    changed = max(1, runs // 100)
    spark.sql(f"MERGE INTO {SCHEMA}.runs_latest t USING (SELECT md5(CAST(id AS STRING)) AS run_id FROM range({changed})) s "
              "ON t.run_id = s.run_id WHEN MATCHED THEN UPDATE SET t.update_time = current_timestamp(), "
              "t.tags = map_concat(t.tags, map('verdict', 'best'))").collect()
    spark.stop()
    return changed


def measure_build(source: str, target: str, experiment_id: str, warehouse: str, remote: str, full: bool,
                  tracking_uri: str) -> dict:
    overrides = {"rate_limit_profile": "unlimited", "tables__database": f"bench_{source}",
                 "tables__watermark_margin_seconds": 60, "tracking_uri": tracking_uri}
    if source == "database":
        overrides.update(tables__source="database", tables__backend_store_uri=target)
    else:
        overrides.update(tables__source="system-tables", tables__system_schema=SCHEMA,
                         tables__system_workspace_id=WORKSPACE)
    seconds, result, _ = timed_build(remote, warehouse, overrides, experiment_ids=[experiment_id], full_refresh=full)
    summary = result.summaries[0]
    return {"seconds": seconds, "mode": summary.mode, "rows": summary.row_count, "runs_fetched": summary.runs_fetched,
            "rows_updated": summary.rows_updated, "peak_rss_mb": peak_rss_mb()}


def run_worker(engine_pid: int, remote: str, source: str, target: str, experiment_id: str, warehouse: str,
               full: bool, tracking_uri: str) -> dict:
    return worker_result(HERE, [source, "--target", target, "--experiment-id", experiment_id, "--warehouse", warehouse,
                                "--remote", remote, "--tracking-uri", tracking_uri, *(["--full"] if full else [])],
                         engine_pid)


def measure_all(runs: int, repetitions: int, tracking_uri: str, db_path: Path, experiment_id: str,
                warehouse: str, results: dict[str, list[dict]]) -> None:
    """Every repetition: generate the system tables, build from them and from the database,
    then refresh after 1% of the runs changed."""
    for rep in range(repetitions):
        with engine_process(HERE) as (engine, remote):
            started = time.perf_counter()
            generate(remote, warehouse, runs)
            print(f"rep {rep}: system tables generated in {time.perf_counter() - started:.0f} s", flush=True)
            for source, target, exp in (("system_tables", "", EXPERIMENT),
                                        ("database", f"sqlite:///{db_path}", experiment_id)):
                r = run_worker(engine.pid, remote, source, target, exp, warehouse, True, tracking_uri)
                if r["rows"] != runs:
                    raise SystemExit(f"{source} built {r['rows']} rows of {runs}")
                results[source].append(r)
                print(f"rep {rep} {source}: {r}", flush=True)
            changed = touch(remote, warehouse, runs)
            r = run_worker(engine.pid, remote, "system_tables", "", EXPERIMENT, warehouse, False, tracking_uri)
            if r["mode"] != "incremental" or r["rows_updated"] != changed:
                raise SystemExit(f"the incremental refresh did not update exactly the {changed} changed runs: {r}")
            results["system_tables_incremental"].append(r)
            print(f"rep {rep} system_tables incremental: {r}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200000)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "system_tables.json"))
    parser.add_argument("--worker")
    parser.add_argument("--target")
    parser.add_argument("--experiment-id")
    parser.add_argument("--warehouse")
    parser.add_argument("--remote")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--serve-engine", action="store_true")
    args = parser.parse_args()
    if args.serve_engine:
        serve_engine()
    if args.worker:
        print(json.dumps(measure_build(args.worker, args.target, args.experiment_id, args.warehouse, args.remote,
                                       args.full, args.tracking_uri)))
        return

    from mlflow import MlflowClient

    from tests.support.local_server import LocalTrackingServer
    from tests.support.sqlite_seed import SeedSpec, seed_runs

    root = Path(tempfile.mkdtemp(prefix="bench-system-tables-"))
    warehouse = str(root / "warehouse")
    # the tracking server the logged models table is read from (the runs are not)
    server = LocalTrackingServer(root / "mlflow", workers=1).start()
    db_path = server.db_path
    experiment_id = MlflowClient(server.url).create_experiment("bench")
    started = time.perf_counter()
    seed_runs(db_path, experiment_id, SeedSpec(args.runs, 20, 20, 20),
              start_ms=int(time.time() * 1000) - 3_600_000 - args.runs * 1000)
    print(f"seeded {args.runs} runs into sqlite in {time.perf_counter() - started:.0f} s", flush=True)
    results: dict[str, list[dict]] = {"system_tables": [], "database": [], "system_tables_incremental": []}
    try:
        measure_all(args.runs, args.repetitions, server.url, db_path, experiment_id, warehouse, results)
    finally:
        server.stop()

    def med(kind: str, key: str) -> float:
        return median_of(results, kind, key)

    report = {
        "runs": args.runs, "repetitions": args.repetitions,
        "median_seconds": {k: med(k, "seconds") for k in results},
        "median_peak_rss_mb": {k: med(k, "peak_rss_mb") for k in results},
        "median_engine_peak_rss_mb": {k: med(k, "engine_peak_rss_mb") for k in results},
        "ratios": {"system_tables / database": med("system_tables", "seconds") / med("database", "seconds"),
                   "incremental / full (system tables)":
                       med("system_tables_incremental", "seconds") / med("system_tables", "seconds")},
        "all": results,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
