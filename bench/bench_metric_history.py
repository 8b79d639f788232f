"""Benchmark: the metric history table against reading the same points from the server's database.

    .venv/bin/python bench/bench_metric_history.py [--runs 2000] [--metrics 10] [--steps 100]
        [--repetitions 3] [--memory-runs 10000]

Seeds ``--runs`` runs with ``--metrics`` metrics of ``--steps`` points each (2,000 x 10 x 100 =
2M points by default) straight into a local MLflow server's sqlite store, then per repetition
measures, each in a fresh process (peak memory is that of the measured work alone, the embedded
Spark engine included):

(b) baseline: every point of the experiment read straight from the server's sqlite database
    into Arrow columns (no HTTP, no server);
(f) REST floor: the same points through the bulk endpoint with the package's reader alone (4
    threads, no Arrow, no Spark): what the server itself takes to answer;
(a) full build: ``build-tables --full-refresh --metric-history all`` (the run table too);
(c) incremental refresh after 1% of the runs (left RUNNING at the build) logged 10 more steps
    of every metric and finished.

Targets: (a) <= 2 x (b); (c) <= 0.05 x (a); the requests per run of (a) (the bulk endpoint:
one request per 100 runs and key). With ``--memory-runs N`` a second experiment of N runs of
the same shape is built once, to compare peak memory (bounded: it should not grow with points).
With ``--no-bulk`` the builds read run by run and key by key, as on Databricks (which has no
bulk endpoint), paced by the ``databricks`` profile (127 qps x 0.95 for ``other``).

The Spark engine (Sail) runs in a process of its own for each build, reached over Spark Connect
as a cluster would be, so that the build's peak RSS is the driver's alone (the fetching, the
Arrow chunks); the engine's peak RSS is reported beside it (``engine_peak_rss_mb``: the Delta
writes, the sort of a full build and the MERGE of an incremental one).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from bench_support import (
    mark_running,
    median_of,
    peak_rss_mb,
    serve_engine,
    timed_build,
    worker_on_engine,
    worker_result,
    write_report,
)

HERE = Path(__file__).resolve()
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("RUST_LOG", "error")


def measure_baseline(db_path: str, experiment_id: str) -> dict:
    import pyarrow as pa

    started = time.perf_counter()
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            "SELECT m.run_uuid, m.key, m.step, m.timestamp, m.value FROM metrics m "
            "JOIN runs r ON r.run_uuid = m.run_uuid WHERE r.experiment_id = ?", (int(experiment_id),)
        ).fetchall()
    columns = list(zip(*rows))
    table = pa.table({
        "run_id": pa.array(columns[0], pa.string()), "key": pa.array(columns[1], pa.string()),
        "step": pa.array(columns[2], pa.int64()), "timestamp": pa.array(columns[3], pa.int64()),
        "value": pa.array(columns[4], pa.float64()),
    })
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "points": table.num_rows, "peak_rss_mb": peak_rss_mb()}


def measure_rest_floor(url: str, db_path: str, experiment_id: str) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from mlflow_spark_tools.config import load_settings
    from mlflow_spark_tools.tracking.client import RetryingClient
    from mlflow_spark_tools.tracking.metric_history import MetricHistoryReader

    with sqlite3.connect(db_path) as conn:
        run_ids = [r[0] for r in conn.execute("SELECT run_uuid FROM runs WHERE experiment_id = ?",
                                              (int(experiment_id),))]
        keys = [r[0] for r in conn.execute(
            "SELECT DISTINCT l.key FROM latest_metrics l JOIN runs r ON r.run_uuid = l.run_uuid "
            "WHERE r.experiment_id = ?", (int(experiment_id),))]
    settings = load_settings().with_overrides(tracking_uri=url, rate_limit_profile="databricks")
    reader = MetricHistoryReader(RetryingClient.from_settings(settings))
    tasks = [(key, run_ids[i:i + 100]) for key in keys for i in range(0, len(run_ids), 100)]
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        points = sum(pool.map(lambda t: sum(len(p) for p in reader.read(*t)), tasks))
    return {"seconds": time.perf_counter() - started, "points": points, "requests": reader.counts.requests,
            "peak_rss_mb": peak_rss_mb()}


def measure_build(url: str, experiment_id: str, warehouse: str, full: bool, no_bulk: bool = False,
                  remote: str | None = None, backend: str | None = None) -> dict:
    from mlflow_spark_tools.tracking import metric_history

    if no_bulk:  # a server without the bulk endpoint (Databricks), as the first answer would say
        metric_history._HOSTS_WITHOUT_BULK.add(url)

    overrides = {"tracking_uri": url, "rate_limit_profile": "databricks", "tables__watermark_margin_seconds": 60}
    if backend is not None:  # --source database: the server's sqlite store, read directly
        overrides.update(tables__source="database", tables__backend_store_uri=backend)
    seconds, result, engine = timed_build(remote, warehouse, overrides, experiment_ids=[experiment_id],
                                          full_refresh=full, metric_history="all")
    summary = result.summaries[0]
    points = engine.spark.sql(f"SELECT count(*) AS n FROM mlflow_exp.exp_{experiment_id}_metrics").collect()[0]["n"]
    if remote is None:
        engine.stop()
    return {
        "seconds": seconds,
        "mode": summary.mode,
        "runs_fetched": summary.runs_fetched,
        "history_runs": summary.history_runs,
        "history_points": summary.history_points,
        "history_requests": summary.history_requests,
        "requests_per_run": summary.history_requests / max(1, summary.history_runs),
        "table_points": points,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_worker(kind: str, url: str, experiment_id: str, warehouse: str, db_path: str,
               no_bulk: bool = False, database: bool = False) -> dict:
    """One measurement in a fresh process; a build on an engine of its own."""
    arguments = [kind, "--url", url, "--experiment-id", experiment_id, "--warehouse", warehouse,
                 "--db-path", db_path, *(["--no-bulk"] if no_bulk else []),
                 *(["--source-database"] if database else [])]
    if kind in ("full", "incremental"):
        return worker_on_engine(HERE, arguments)
    return worker_result(HERE, arguments, None)


def log_more_steps(url: str, run_ids: list[str], metrics: int, first_step: int, steps: int) -> int:
    """The change: each run logs ``steps`` more points of every metric and finishes (REST)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(url)
    now = int(time.time() * 1000)
    for run_id in run_ids:
        points = [Metric(f"metric_{i}", 0.001 * step, now + step, step)
                  for i in range(metrics) for step in range(first_step, first_step + steps)]
        client.log_batch(run_id, metrics=points)
        client.set_terminated(run_id)
    return len(run_ids) * metrics * steps


def seed(server, name: str, runs: int, metrics: int, steps: int, rng_seed: int = 0) -> tuple[str, list[str]]:
    from mlflow import MlflowClient

    from tests.support.sqlite_seed import SeedSpec, seed_runs

    experiment_id = MlflowClient(server.url).create_experiment(name)
    started = time.perf_counter()
    # Runs ended hours ago: the incremental refresh's look-back margin sees none of them.
    run_ids = seed_runs(server.db_path, experiment_id, SeedSpec(runs, 5, metrics, 5, steps=steps, seed=rng_seed),
                        start_ms=int(time.time() * 1000) - 7_200_000 - runs * 1000)
    print(f"seeded {runs} runs x {metrics} metrics x {steps} steps in {time.perf_counter() - started:.1f}s",
          flush=True)
    return experiment_id, run_ids


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--metrics", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--memory-runs", type=int, default=0)
    parser.add_argument("--no-bulk", action="store_true")
    parser.add_argument("--source-database", action="store_true",
                        help="build with --source database (the server's sqlite store read directly)")
    parser.add_argument("--serve-engine", action="store_true")
    parser.add_argument("--remote")
    parser.add_argument("--worker", choices=["baseline", "floor", "full", "incremental"])
    parser.add_argument("--url")
    parser.add_argument("--experiment-id")
    parser.add_argument("--warehouse")
    parser.add_argument("--db-path")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "metric_history.json"))
    return parser.parse_args()


def work(args: argparse.Namespace) -> dict:
    """The measurement of a worker process (``--worker``)."""
    if args.worker == "baseline":
        return measure_baseline(args.db_path, args.experiment_id)
    if args.worker == "floor":
        return measure_rest_floor(args.url, args.db_path, args.experiment_id)
    return measure_build(args.url, args.experiment_id, args.warehouse, args.worker == "full",
                         args.no_bulk, args.remote, f"sqlite:///{args.db_path}" if args.source_database else None)


def measure_repetitions(args: argparse.Namespace, server, warehouse: str, results: dict[str, list[dict]]) -> None:
    """Every repetition: the baseline, the REST floor and the full build, then the incremental
    refresh after 1% of the runs logged 10 more steps of every metric."""
    db = str(server.db_path)
    kinds = ("baseline", "full") if args.no_bulk or args.source_database else ("baseline", "floor", "full")
    experiment_id, run_ids = seed(server, "bench-history", args.runs, args.metrics, args.steps)
    changed_per_rep = max(1, args.runs // 100)
    next_step = args.steps
    for rep in range(args.repetitions):
        changed = run_ids[rep * changed_per_rep:(rep + 1) * changed_per_rep]
        mark_running(server.db_path, changed)
        for kind in kinds:
            r = run_worker(kind, server.url, experiment_id, warehouse, db, args.no_bulk, args.source_database)
            results[kind].append(r)
            print(f"rep {rep} {kind}: {r}", flush=True)
        added = log_more_steps(server.url, changed, args.metrics, next_step, 10)
        next_step += 10
        r = run_worker("incremental", server.url, experiment_id, warehouse, db, args.no_bulk,
                       args.source_database)
        full_points = results["full"][-1]["table_points"]
        if r["mode"] != "incremental" or r["table_points"] != full_points + added:
            raise SystemExit(f"incremental refresh did not keep every point: {r}, expected "
                             f"{full_points + added}")
        results["incremental"].append(r)
        print(f"rep {rep} incremental: {r}", flush=True)


def measure_memory(args: argparse.Namespace, server, warehouse: str) -> dict:
    """A second experiment of ``--memory-runs`` runs built once, and its baseline."""
    db = str(server.db_path)
    big_id, _ = seed(server, "bench-history-memory", args.memory_runs, args.metrics, args.steps, 1)
    memory = {"runs": args.memory_runs,
              "points": args.memory_runs * args.metrics * args.steps,
              "full": run_worker("full", server.url, big_id, warehouse, db),
              "baseline": run_worker("baseline", server.url, big_id, warehouse, db)}
    print(f"memory: {memory}", flush=True)
    return memory


def main() -> None:
    args = parse_arguments()
    if args.serve_engine:
        serve_engine()
    if args.worker:
        print(json.dumps(work(args)))
        return

    from tests.support.local_server import LocalTrackingServer

    root = Path(tempfile.mkdtemp(prefix="bench-history-"))
    warehouse = str(root / "warehouse")
    results: dict[str, list[dict]] = {"baseline": [], "floor": [], "full": [], "incremental": []}
    memory: dict = {}
    with LocalTrackingServer(root / "mlflow", workers=4) as server:
        measure_repetitions(args, server, warehouse, results)
        if args.memory_runs:
            memory = measure_memory(args, server, warehouse)

    if not args.repetitions:
        write_report({"memory": memory}, args.out)
        return
    write_report(report_of(args, results, memory), args.out)


def report_of(args: argparse.Namespace, results: dict[str, list[dict]], memory: dict) -> dict:
    """The medians over the repetitions, their ratios and the targets met."""
    def med(kind: str, key: str) -> float:
        return median_of(results, kind, key)

    a, b, c = med("full", "seconds"), med("baseline", "seconds"), med("incremental", "seconds")
    f = med("floor", "seconds") if results["floor"] else None
    return {
        "runs": args.runs, "metrics": args.metrics, "steps": args.steps,
        "points": args.runs * args.metrics * args.steps,
        "repetitions": args.repetitions, "no_bulk": args.no_bulk, "source_database": args.source_database,
        "median_seconds": {"full_build_a": a, "baseline_b": b, "incremental_c": c, "rest_floor_f": f},
        "median_peak_rss_mb": {k: med(k, "peak_rss_mb") for k in results if results[k]},
        "median_engine_peak_rss_mb": {k: med(k, "engine_peak_rss_mb") for k in ("full", "incremental")},
        "requests_per_run": {"full": med("full", "requests_per_run"),
                             "incremental": med("incremental", "requests_per_run")},
        "ratios": {"a_over_b": a / b, "c_over_a": c / a, "a_over_f": a / f if f else None},
        "targets_met": {"a <= 2 b": a <= 2 * b, "c <= 0.05 a": c <= 0.05 * a},
        "memory": memory,
        "all": results,
    }


if __name__ == "__main__":
    main()
