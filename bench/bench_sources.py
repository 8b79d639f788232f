"""Benchmark: table builds through REST and from the backend database, 20k to 200k runs.

    .venv/bin/python bench/bench_sources.py [--runs 20000,100000,200000] [--repetitions 2]
        [--backends sqlite,postgresql] [--rest-max 200000] [--engines embedded,classic]

For each size, one experiment of that many runs (20 params, 20 metrics, 20 tags each) is seeded
straight into a fresh MLflow sqlite store served by ``mlflow server`` (4 workers) and, with
``postgresql`` in ``--backends``, into a PostgreSQL database started from the machine's binaries.
Then per repetition, each build in a fresh process with the engine (Sail) in a process of its
own, so that the build's peak RSS is the driver's alone (the engine's is reported beside it):

- ``rest``: ``build-tables --full-refresh`` through the server's REST API (sizes up to
  ``--rest-max``), rate-limit profile ``unlimited`` (the server is the bound);
- ``database_sqlite`` / ``database_postgresql``: the same build with ``--source database``;
- after 1% of the runs (left RUNNING at the build) log a new latest value and finish, each
  source's incremental refresh (``*_incremental``).

With ``classic`` in ``--engines``, every build runs a second time on classic local JVM Spark
(``local[2]``) with Delta Lake's jars (``make jars``), in the worker's own JVM, tables at their
own warehouse path; its results are keyed ``<source>@classic`` and ``engine_peak_rss_mb`` is
that JVM's (driver and executors are one process in local mode).

Every build's row count is checked. Targets (issue 16): the 200k/20k time ratio <= 11 for each
source; peak memory growing sub-linearly; ``database`` >= 10x faster than REST at 200k runs;
the incremental refresh <= 0.02x the full build.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_support import (
    CLASSIC,
    execute,
    jvm_peak_rss_mb,
    mark_running,
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


def measure_build(source: str, target: str, experiment_id: str, database: str, warehouse: str, remote: str,
                  full: bool) -> dict:
    overrides = {"rate_limit_profile": "unlimited", "tables__database": database,
                 "tables__watermark_margin_seconds": 60}
    if source == "rest":
        overrides["tracking_uri"] = target
    else:
        overrides.update(tables__source="database", tables__backend_store_uri=target,
                         tracking_uri="http://127.0.0.1:9")  # nobody listens: no API request
    seconds, result, engine = timed_build(remote, warehouse, overrides, experiment_ids=[experiment_id],
                                          full_refresh=full)
    summary = result.summaries[0]
    rows = engine.spark.sql(f"SELECT count(*) AS n FROM {database}.exp_{experiment_id}").collect()[0]["n"]
    measured = {"seconds": seconds, "mode": summary.mode, "rows": rows, "runs_fetched": summary.runs_fetched,
                "peak_rss_mb": peak_rss_mb()}
    if remote == CLASSIC:
        measured["engine_peak_rss_mb"] = jvm_peak_rss_mb()
    return measured


def run_worker(source: str, target: str, experiment_id: str, database: str, warehouse: str, full: bool,
               engine_kind: str = "embedded") -> dict:
    arguments = [source, "--target", target, "--experiment-id", experiment_id, "--database", database,
                 "--warehouse", warehouse, *(["--full"] if full else [])]
    if engine_kind == CLASSIC:
        return worker_result(HERE, [*arguments, "--remote", CLASSIC], None)
    return worker_on_engine(HERE, arguments)


def _named(source: str, engine_kind: str) -> str:
    return source if engine_kind == "embedded" else f"{source}@{engine_kind}"


def finish(target: str, run_ids: list[str], now_ms: int) -> None:
    """The change: each run's metric_0 gets a new latest value, and the run finishes."""
    execute(target, [
        ("UPDATE latest_metrics SET value = 42.0, step = 1, timestamp = ? WHERE run_uuid = ? AND key = 'metric_0'",
         [(now_ms, r) for r in run_ids]),
        ("UPDATE runs SET status = 'FINISHED', end_time = ? WHERE run_uuid = ?", [(now_ms, r) for r in run_ids]),
    ])


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="20000,100000,200000")
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--rest-max", type=int, default=200000)
    parser.add_argument("--engines", default="embedded", help="embedded, classic or both, comma-separated")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "sources.json"))
    parser.add_argument("--worker")
    parser.add_argument("--target")
    parser.add_argument("--experiment-id")
    parser.add_argument("--database")
    parser.add_argument("--warehouse")
    parser.add_argument("--remote")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--serve-engine", action="store_true")
    return parser.parse_args()


def seed_targets(args: argparse.Namespace, size: int, server, postgres) -> tuple[dict[str, tuple], list[str]]:
    """One experiment of ``size`` runs in the server's sqlite store (and in PostgreSQL): the
    targets of the builds by source, (target, store, experiment id) each, and the run ids."""
    from mlflow import MlflowClient

    from tests.support.sqlite_seed import SeedSpec, seed_runs

    experiment_id = MlflowClient(server.url).create_experiment(f"bench-{size}")
    start_ms = int(time.time() * 1000) - 3_600_000 - size * 1000
    started = time.perf_counter()
    run_ids = seed_runs(server.db_path, experiment_id, SeedSpec(size, 20, 20, 20), start_ms=start_ms)
    targets = {"database_sqlite": (f"sqlite:///{server.db_path}", str(server.db_path), experiment_id)}
    if size <= args.rest_max:
        targets = {"rest": (server.url, str(server.db_path), experiment_id), **targets}
    if postgres is not None:
        name = postgres.create_database(f"mlflow_{size}")
        uri = postgres.url(name, driver=None)
        # MLflow's own store creates the schema (SQLAlchemy needs the driver named)
        pg_experiment = MlflowClient(postgres.url(name)).create_experiment(f"bench-{size}")
        seed_runs(uri, pg_experiment, SeedSpec(size, 20, 20, 20), start_ms=start_ms)
        targets["database_postgresql"] = (uri, uri, pg_experiment)
    print(f"{size} runs seeded in {time.perf_counter() - started:.0f} s", flush=True)
    return targets, run_ids


def measure_size(args: argparse.Namespace, size: int, targets: dict[str, tuple], run_ids: list[str],
                 root: Path, per_size: dict[str, list[dict]]) -> None:
    """Every repetition at one size: each source's full build on each engine, then, after 1% of
    the runs changed, each one's incremental refresh."""
    engines = [e for e in args.engines.split(",") if e]
    changed_per_rep = max(1, size // 100)
    for rep in range(args.repetitions):
        changed = run_ids[rep * changed_per_rep:(rep + 1) * changed_per_rep]
        for store in {t[1] for t in targets.values()}:
            mark_running(store, changed)
        builds = [(source, target, exp, engine_kind) for engine_kind in engines
                  for source, (target, _, exp) in targets.items()]
        for source, target, exp, engine_kind in builds:
            kind, name = "rest" if source == "rest" else "database", _named(source, engine_kind)
            r = run_worker(kind, target, exp, source, str(root / f"warehouse-{size}-{engine_kind}"),
                           full=True, engine_kind=engine_kind)
            if r["rows"] != size:
                raise SystemExit(f"{name} built {r['rows']} rows of {size}")
            per_size.setdefault(name, []).append(r)
            print(f"{size} rep {rep} {name}: {r}", flush=True)
        now_ms = int(time.time() * 1000)
        for store in {t[1] for t in targets.values()}:
            finish(store, changed, now_ms)
        for source, target, exp, engine_kind in builds:
            kind, name = "rest" if source == "rest" else "database", _named(source, engine_kind)
            r = run_worker(kind, target, exp, source, str(root / f"warehouse-{size}-{engine_kind}"),
                           full=False, engine_kind=engine_kind)
            if r["mode"] != "incremental" or r["runs_fetched"] < len(changed):
                raise SystemExit(f"{name}: the incremental refresh did not see the changes: {r}")
            per_size.setdefault(f"{name}_incremental", []).append(r)
            print(f"{size} rep {rep} {name} incremental: {r}", flush=True)


def main() -> None:
    args = parse_arguments()
    if args.serve_engine:
        serve_engine()
    if args.worker:
        print(json.dumps(measure_build(args.worker, args.target, args.experiment_id, args.database,
                                       args.warehouse, args.remote, args.full)))
        return

    from tests.support.local_server import LocalTrackingServer
    from tests.support.postgres_server import LocalPostgres

    sizes = [int(n) for n in args.runs.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    root = Path(tempfile.mkdtemp(prefix="bench-sources-"))
    results: dict[str, dict[str, list[dict]]] = {}
    postgres = LocalPostgres(root / "postgres").start() if "postgresql" in backends else None
    try:
        for size in sizes:
            per_size: dict[str, list[dict]] = results.setdefault(str(size), {})
            with LocalTrackingServer(root / f"mlflow-{size}", workers=4) as server:
                targets, run_ids = seed_targets(args, size, server, postgres)
                measure_size(args, size, targets, run_ids, root, per_size)
    finally:
        if postgres is not None:
            postgres.stop()
    write_report(report_of(args, sizes, results), args.out)


def report_of(args: argparse.Namespace, sizes: list[int], results: dict[str, dict[str, list[dict]]]) -> dict:
    """The medians per source and size, and the ratios between sizes, sources and engines."""
    def med(size: int, kind: str, key: str) -> float | None:
        found = results.get(str(size), {}).get(kind)
        return statistics.median(r[key] for r in found) if found else None

    kinds = sorted({k for per_size in results.values() for k in per_size})
    report: dict = {
        "runs": sizes, "repetitions": args.repetitions,
        "median_seconds": {k: {n: med(n, k, "seconds") for n in sizes} for k in kinds},
        "median_peak_rss_mb": {k: {n: med(n, k, "peak_rss_mb") for n in sizes} for k in kinds},
        "median_engine_peak_rss_mb": {k: {n: med(n, k, "engine_peak_rss_mb") for n in sizes} for k in kinds},
    }
    small, large = min(sizes), max(sizes)
    ratios: dict = {}
    for kind in kinds:
        a, b = med(large, kind, "seconds"), med(small, kind, "seconds")
        if a and b and large != small:
            ratios[f"{kind} time {large}/{small}"] = a / b
            ratios[f"{kind} peak {large}/{small}"] = med(large, kind, "peak_rss_mb") / med(small, kind, "peak_rss_mb")
        if not kind.endswith("_incremental") and med(large, f"{kind}_incremental", "seconds"):
            ratios[f"{kind} incremental/full at {large}"] = med(large, f"{kind}_incremental", "seconds") / a
    rest = med(large, "rest", "seconds")
    for kind in ("database_sqlite", "database_postgresql"):
        if rest and med(large, kind, "seconds"):
            ratios[f"rest/{kind} at {large}"] = rest / med(large, kind, "seconds")
    for kind in kinds:  # classic JVM Delta against the embedded engine, same source, same size
        if "@" in kind:
            for n in sizes:
                jvm, embedded = med(n, kind, "seconds"), med(n, kind.replace("@" + CLASSIC, ""), "seconds")
                if jvm and embedded:
                    ratios[f"{kind}/embedded at {n}"] = jvm / embedded
    report["ratios"] = ratios
    report["all"] = results
    return report


if __name__ == "__main__":
    main()
