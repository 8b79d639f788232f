"""Benchmark: `report` on a 20,000-run experiment against `best-run` on the same table.

    .venv/bin/python bench/bench_report.py [--runs 20000] [--repetitions 3]

One experiment of ``--runs`` runs (20 params, 20 metrics of 5 steps, 20 tags) is seeded into an
MLflow sqlite store and built once with ``--source database --metric-history metric_0``. The
engine (Sail) runs in a process of its own and is started once, so the timings exclude its
start-up. Per repetition, each in a fresh driver process connected to that engine:

- ``best_run``: ``best_run(experiment, "metric_0")`` from the table;
- ``report``: ``experiment_report(experiment, "metric_0").save(out.html)`` (the HTML only) and
  ``report_png``: the same with every chart as PNG too.

Reported: seconds (from the connected engine to the written file), the driver's peak RSS, the
HTML's size. The first ``report`` of a run starts with an empty cache of the JavaScript
libraries (``report_cold``: vl-convert bundles them, once per machine); the medians of
``report`` are over the later ones. Targets (issue 17): report under 10 s, peak within 1.2x of
best-run, HTML < 5 MB.
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
DATABASE, METRIC = "bench_report", "metric_0"


def measure(kind: str, experiment_id: str, remote: str, warehouse: str, out: str) -> dict:
    import mlflow  # noqa: F401 - imported before the clock starts

    from mlflow_spark_tools.spark.engine import get_engine

    engine = get_engine(remote=remote, warehouse=warehouse)
    engine.spark.sql("SELECT 1").collect()  # connected
    started = time.perf_counter()
    size = None
    if kind == "best_run":
        from mlflow_spark_tools.queries import best_run

        choice = best_run(experiment_id, METRIC, engine=engine, database=DATABASE)
        assert choice is not None and choice.source == "table", choice
    else:
        from mlflow_spark_tools.report import experiment_report

        report = experiment_report(experiment_id, METRIC, engine=engine, database=DATABASE)
        written = report.save(out, "png" if kind == "report_png" else None)
        assert report.chart_names == ["parallel", "params", "curves"], report.chart_names
        size = written[0].stat().st_size
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "html_bytes": size}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "report.json"))
    parser.add_argument("--worker")
    parser.add_argument("--experiment-id")
    parser.add_argument("--remote")
    parser.add_argument("--warehouse")
    parser.add_argument("--html")
    parser.add_argument("--serve-engine", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.serve_engine:
        serve_engine()
    if args.worker:
        print(json.dumps(measure(args.worker, args.experiment_id, args.remote, args.warehouse, args.html)))
        return

    from mlflow import MlflowClient

    from tests.support.local_server import LocalTrackingServer
    from tests.support.sqlite_seed import SeedSpec, seed_runs

    root = Path(tempfile.mkdtemp(prefix="bench-report-"))
    warehouse = str(root / "warehouse")
    server = LocalTrackingServer(root / "mlflow", workers=1).start()
    results: dict[str, list[dict]] = {"best_run": [], "report_cold": [], "report": [], "report_png": []}
    os.environ["MLFLOW_SPARK_TOOLS_CACHE_DIR"] = str(root / "cache")  # the workers' cache, empty at first
    try:
        with engine_process(HERE) as (engine, remote):
            experiment_id = MlflowClient(server.url).create_experiment("bench-report")
            seed_runs(server.db_path, experiment_id, SeedSpec(args.runs, 20, 20, 20, steps=5))
            overrides = {"rate_limit_profile": "unlimited", "tables__database": DATABASE, "tracking_uri": server.url,
                         "tables__source": "database", "tables__backend_store_uri": f"sqlite:///{server.db_path}"}
            seconds, _, built = timed_build(remote, warehouse, overrides, experiment_ids=[experiment_id],
                                            metric_history=METRIC)
            built.spark.stop()
            print(f"built {args.runs} runs in {seconds:.1f} s", flush=True)
            for rep in range(args.repetitions):
                for kind in results:
                    if (kind == "report_cold") != (rep == 0) and kind in ("report_cold", "report"):
                        continue
                    html = str(root / f"report-{rep}-{kind}.html")
                    r = worker_result(HERE, [kind.replace("_cold", ""), "--experiment-id", experiment_id, "--remote",
                                             remote, "--warehouse", warehouse, "--html", html], engine.pid)
                    results[kind].append(r)
                    print(f"rep {rep} {kind}: {r}", flush=True)
    finally:
        server.stop()

    def med(kind: str, key: str) -> float:
        return median_of(results, kind, key)

    report = {
        "runs": args.runs, "repetitions": args.repetitions,
        "median_seconds": {k: med(k, "seconds") for k in results},
        "median_peak_rss_mb": {k: med(k, "peak_rss_mb") for k in results},
        "html_mb": med("report", "html_bytes") / 1e6,
        "ratios": {"report / best_run peak": med("report", "peak_rss_mb") / med("best_run", "peak_rss_mb"),
                   "report_cold / best_run peak": med("report_cold", "peak_rss_mb") / med("best_run", "peak_rss_mb"),
                   "report_png / best_run peak": med("report_png", "peak_rss_mb") / med("best_run", "peak_rss_mb")},
        "all": results,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
