"""Benchmark: 1,000,000 runs across 100 experiments built from a PostgreSQL backend store.

    .venv/bin/python bench/bench_million.py [--experiments 100] [--runs-per-experiment 10000]
        [--root DIR] [--seed-only] [--repetitions 1]

The experiments (20 params, 20 metrics, 20 tags per run) are created by MLflow's own store in a
PostgreSQL database started from the machine's binaries, and their runs seeded straight into
it. The store is kept under ``--root`` (a later call with the same root reuses it, so the
seeding is paid once). Each repetition is one ``build-tables --all --full-refresh --source
database`` in a fresh driver process, the engine (Sail) in a process of its own; reported:
the build's time, the driver's and the engine's peak RSS, and the rows of every table checked
against the runs seeded. Target (issue 16): it completes, with time and memory reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_support import peak_rss_mb, serve_engine, timed_build, worker_on_engine, write_report

HERE = Path(__file__).resolve()
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("RUST_LOG", "error")
PASSWORD = "bench-million"  # a throwaway local cluster on loopback, kept between calls
DATABASE = "mlflow_million"


def measure_build(uri: str, database: str, warehouse: str, remote: str) -> dict:
    overrides = {"tables__database": database, "tables__source": "database", "tables__backend_store_uri": uri,
                 "tracking_uri": "http://127.0.0.1:9"}  # nobody listens: no API request
    seconds, result, engine = timed_build(remote, warehouse, overrides, all_experiments=True, full_refresh=True)
    rows = {s.experiment_name: engine.spark.sql(f"SELECT count(*) AS n FROM {database}.exp_{s.experiment_id}")
            .collect()[0]["n"] for s in result.summaries}
    return {"seconds": seconds, "experiments": len(result.summaries), "rows": rows, "peak_rss_mb": peak_rss_mb()}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--runs-per-experiment", type=int, default=10000)
    parser.add_argument("--root")
    parser.add_argument("--seed-only", action="store_true")
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "million.json"))
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--uri")
    parser.add_argument("--database")
    parser.add_argument("--warehouse")
    parser.add_argument("--remote")
    parser.add_argument("--serve-engine", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    if args.serve_engine:
        serve_engine()
    if args.worker:
        print(json.dumps(measure_build(args.uri, args.database, args.warehouse, args.remote)))
        return

    from mlflow import MlflowClient

    from tests.support.postgres_server import LocalPostgres
    from tests.support.sqlite_seed import SeedSpec, seed_experiments

    root = Path(args.root or tempfile.mkdtemp(prefix="bench-million-")).absolute()
    marker = root / "seeded.json"
    postgres = LocalPostgres(root / "postgres", password=PASSWORD).start()
    try:
        if marker.exists():
            seeded = json.loads(marker.read_text())
            print(f"reusing the store in {root}: {seeded}", flush=True)
        else:
            postgres.create_database(DATABASE)
            client = MlflowClient(postgres.url(DATABASE))  # MLflow's store creates the schema
            started = time.perf_counter()
            plan = [(client.create_experiment(f"million-{i:03d}"),
                     SeedSpec(args.runs_per_experiment, 20, 20, 20, seed=i + 1)) for i in range(args.experiments)]
            seed_experiments(postgres.url(DATABASE, driver=None), plan)
            seeded = {"experiments": args.experiments, "runs_per_experiment": args.runs_per_experiment,
                      "seconds": round(time.perf_counter() - started, 1)}
            marker.write_text(json.dumps(seeded))
            print(f"seeded: {seeded}", flush=True)
        if args.seed_only:
            return
        uri = postgres.url(DATABASE, driver=None)
        results = []
        for rep in range(args.repetitions):
            result = worker_on_engine(HERE, ["--uri", uri, "--database", f"million_{rep}",
                                             "--warehouse", str(root / f"warehouse-{rep}")])
            # --all also builds the store's Default experiment (no runs)
            expected = seeded["runs_per_experiment"]
            rows = {name: n for name, n in result.pop("rows").items() if name.startswith("million-")}
            wrong = {name: n for name, n in rows.items() if n != expected}
            if len(rows) != seeded["experiments"] or wrong:
                raise SystemExit(f"rep {rep}: {len(rows)} seeded experiments built, rows not {expected}: {wrong}")
            result["runs"] = sum(rows.values())
            results.append(result)
            print(f"rep {rep}: {result}", flush=True)
        write_report({"command": " ".join(sys.argv), "seeded": seeded, "builds": results}, args.out)
    finally:
        postgres.stop()


if __name__ == "__main__":
    main()
