"""Benchmark: building experiment tables against the baseline, and incremental refresh.

    .venv/bin/python bench/bench_tables.py [--runs 20000] [--repetitions 3]

Seeds an experiment of ``--runs`` runs with 20 params, 20 metrics and 20 tags each straight into
a local MLflow server's sqlite store, then per repetition measures, each in a fresh process
(so peak memory is that of the measured work alone, embedded Spark engine included):

(b) baseline: ``mlflow.search_runs()`` -> ``spark.createDataFrame`` -> Delta write;
(a) full build: ``build-tables --full-refresh``;
(c) incremental refresh after 1% of the runs (left RUNNING at the build) logged a new metric
    value and finished.

Targets: (a) <= 0.5 x (b); (c) <= 0.05 x (a); peak memory of (a) below (b)'s.

With ``--compare-tree DIR`` (a checkout of the code before a change, ``git worktree add DIR REV``)
it measures (a) and (c) of this checkout and of DIR instead, alternating which goes first, each
into a warehouse of its own, and reports the ratios this / DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench_support import (
    mark_running,
    median_of,
    peak_rss_mb,
    timed_build,
    use_package_tree,
    worker_result,
    write_report,
)

HERE = Path(__file__).resolve()
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("RUST_LOG", "error")


def measure_baseline(url: str, experiment_id: str, warehouse: str) -> dict:
    import mlflow

    from mlflow_spark_tools.spark.engine import start_embedded

    engine = start_embedded(warehouse)
    started = time.perf_counter()
    mlflow.set_tracking_uri(url)
    pdf = mlflow.search_runs(experiment_ids=[experiment_id])
    # Delta column names cannot hold dots: rename as the seed's pandas builder does.
    pdf.columns = [
        c.replace("params.", "_p_").replace("metrics.", "_m_").replace("tags.", "_t_").replace(".", "_")
        for c in pdf.columns
    ]
    df = engine.spark.createDataFrame(pdf)
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(
        str(Path(warehouse) / "baseline" / f"exp_{experiment_id}")
    )
    seconds = time.perf_counter() - started
    rows = len(pdf)
    engine.stop()
    return {"seconds": seconds, "rows": rows, "peak_rss_mb": peak_rss_mb()}


def measure_build(url: str, experiment_id: str, warehouse: str, full: bool) -> dict:
    # A 60 s look-back margin (default 600 s): repetitions are minutes apart, and each one's
    # incremental refresh should see its own changes only.
    overrides = {"tracking_uri": url, "rate_limit_profile": "databricks", "tables__watermark_margin_seconds": 60}
    seconds, result, engine = timed_build(None, warehouse, overrides, experiment_ids=[experiment_id],
                                          full_refresh=full)
    summary = result.summaries[0]
    engine.stop()
    return {
        "seconds": seconds,
        "rows": summary.row_count,
        "mode": summary.mode,
        "runs_fetched": summary.runs_fetched,
        "rows_updated": summary.rows_updated,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_worker(kind: str, url: str, experiment_id: str, warehouse: str, tree: str | None = None) -> dict:
    """Run one measurement in a fresh Python process (with the package of ``tree``, else this
    checkout's) and return what it printed."""
    arguments = [kind, "--url", url, "--experiment-id", experiment_id, "--warehouse", warehouse]
    return worker_result(HERE, arguments + (["--package-tree", tree] if tree else []), None)


def finish_runs(url: str, run_ids: list[str]) -> None:
    """The change: each run logs a new metric value and finishes, through the REST API."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    for run_id in run_ids:
        client.log_metric(run_id, "metric_0", 42.0, step=1)
        client.set_terminated(run_id)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--worker", choices=["baseline", "full", "incremental"])
    parser.add_argument("--url")
    parser.add_argument("--experiment-id")
    parser.add_argument("--warehouse")
    parser.add_argument("--package-tree", help="worker: import the package from this checkout")
    parser.add_argument("--compare-tree", help="measure (a) and (c) of this checkout against this one")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "tables.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.worker:
        use_package_tree(args.package_tree)
        if args.worker == "baseline":
            result = measure_baseline(args.url, args.experiment_id, args.warehouse)
        else:
            result = measure_build(args.url, args.experiment_id, args.warehouse, args.worker == "full")
        print(json.dumps(result))
        return

    from mlflow import MlflowClient

    from tests.support.local_server import LocalTrackingServer
    from tests.support.sqlite_seed import SeedSpec, seed_runs

    root = Path(tempfile.mkdtemp(prefix="bench-tables-"))
    warehouse = str(root / "warehouse")
    results: dict[str, list[dict]] = {"baseline": [], "full": [], "incremental": []}
    with LocalTrackingServer(root / "mlflow", workers=4) as server:
        client = MlflowClient(server.url)
        experiment_id = client.create_experiment("bench-20k")
        started = time.perf_counter()
        # Runs ended an hour ago: the incremental refresh's look-back margin sees none of them.
        run_ids = seed_runs(
            server.db_path, experiment_id, SeedSpec(args.runs, 20, 20, 20),
            start_ms=int(time.time() * 1000) - 3_600_000 - args.runs * 1000,
        )
        print(f"seeded {args.runs} runs in {time.perf_counter() - started:.1f}s", flush=True)
        changed_per_rep = max(1, args.runs // 100)
        if args.compare_tree:
            trees = compare_trees(args, server, experiment_id, run_ids, changed_per_rep, root)
            write_report(comparison_of(args, trees), args.out)
            return
        for rep in range(args.repetitions):
            changed = run_ids[rep * changed_per_rep:(rep + 1) * changed_per_rep]
            mark_running(server.db_path, changed)
            for kind in ("baseline", "full"):
                r = run_worker(kind, server.url, experiment_id, warehouse)
                results[kind].append(r)
                print(f"rep {rep} {kind}: {r}", flush=True)
            finish_runs(server.url, changed)
            r = run_worker("incremental", server.url, experiment_id, warehouse)
            if r["mode"] != "incremental" or r["runs_fetched"] < len(changed):
                raise SystemExit(f"incremental refresh did not see the changes: {r}")
            results["incremental"].append(r)
            print(f"rep {rep} incremental: {r}", flush=True)

    write_report(report_of(args, results), args.out)


def compare_trees(args: argparse.Namespace, server, experiment_id: str, run_ids: list[str], changed_per_rep: int,
                  root: Path) -> dict[str, dict[str, list[dict]]]:
    """(a) and (c) of this checkout ("this") and of ``--compare-tree`` ("before"), each into a
    warehouse of its own, the one that goes first alternating from repetition to repetition."""
    trees: dict[str, dict[str, list[dict]]] = {name: {"full": [], "incremental": []} for name in ("this", "before")}
    package = {"this": None, "before": args.compare_tree}
    for rep in range(args.repetitions):
        order = ["this", "before"] if rep % 2 == 0 else ["before", "this"]
        changed = run_ids[rep * changed_per_rep:(rep + 1) * changed_per_rep]
        mark_running(server.db_path, changed)
        for name in order:
            r = run_worker("full", server.url, experiment_id, str(root / f"warehouse-{name}"), package[name])
            trees[name]["full"].append(r)
            print(f"rep {rep} {name} full: {r}", flush=True)
        finish_runs(server.url, changed)
        for name in order:
            r = run_worker("incremental", server.url, experiment_id, str(root / f"warehouse-{name}"), package[name])
            if r["mode"] != "incremental" or r["runs_fetched"] < len(changed):
                raise SystemExit(f"incremental refresh did not see the changes: {r}")
            trees[name]["incremental"].append(r)
            print(f"rep {rep} {name} incremental: {r}", flush=True)
    return trees


def comparison_of(args: argparse.Namespace, trees: dict[str, dict[str, list[dict]]]) -> dict:
    """The medians of each checkout and the ratios this / before."""
    medians = {name: {kind: {key: median_of(results, kind, key) for key in ("seconds", "peak_rss_mb")}
                      for kind in results} for name, results in trees.items()}
    return {
        "runs": args.runs,
        "repetitions": args.repetitions,
        "compare_tree": args.compare_tree,
        "medians": medians,
        "ratios_this_over_before": {
            f"{kind} {key}": medians["this"][kind][key] / medians["before"][kind][key]
            for kind in ("full", "incremental") for key in ("seconds", "peak_rss_mb")},
        "all": trees,
    }


def report_of(args: argparse.Namespace, results: dict[str, list[dict]]) -> dict:
    """The medians over the repetitions, their ratios and the targets met."""
    def med(kind: str, key: str) -> float:
        return median_of(results, kind, key)

    a, b, c = med("full", "seconds"), med("baseline", "seconds"), med("incremental", "seconds")
    return {
        "runs": args.runs,
        "repetitions": args.repetitions,
        "median_seconds": {"full_build_a": a, "baseline_b": b, "incremental_c": c},
        "median_peak_rss_mb": {k: med(k, "peak_rss_mb") for k in results},
        "ratios": {"a_over_b": a / b, "c_over_a": c / a},
        "targets_met": {
            "a <= 0.5 b": a <= 0.5 * b,
            "c <= 0.05 a": c <= 0.05 * a,
            "peak(a) < peak(b)": med("full", "peak_rss_mb") < med("baseline", "peak_rss_mb"),
        },
        "all": results,
    }


if __name__ == "__main__":
    main()
