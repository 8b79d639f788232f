"""Benchmark: refreshes on classic JVM Spark with Delta Lake, with and without deletion vectors,
and the refresh that picks the cheaper kind.

    .venv/bin/python bench/bench_jvm_refresh.py [--runs 200000] [--repetitions 2] [--profile]
    .venv/bin/python bench/bench_jvm_refresh.py --runs 20000 --choice 5

One experiment of ``--runs`` runs (20 params, 20 metrics, 20 tags) is seeded into a sqlite
store (kept under ``--root`` for the next call). Tables are built from it with
``--source database`` on classic local Spark (``local[2]``, the venv's Delta jars).

Default mode, in one warm JVM: per repetition and for each of ``tables.deletion_vectors`` null
(the platform's default: none in open-source Delta) and true, 1% of the runs are left RUNNING,
a full build, then they finish and an incremental refresh merges them; ``--profile`` prints
where the last incremental refresh of each spent its time.

``--choice N``: N refreshes with ``tables.refresh_by_cost`` on (the default), each in a fresh
process as under ``spark-submit``, 1% of the runs changed before each; prints each refresh's
kind, time and reason.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_support import classic_engine, mark_running

HERE = Path(__file__).resolve()


def seeded(root: Path, runs: int) -> tuple[Path, str, list[str]]:
    """The sqlite store of ``runs`` runs under ``root`` (seeded once): its path, the experiment
    id and the run ids in seeding order."""
    from mlflow import MlflowClient

    from tests.support.sqlite_seed import SeedSpec, seed_runs

    root.mkdir(parents=True, exist_ok=True)
    db, meta = root / "mlflow.db", root / "seeded.json"
    if not meta.exists():
        db.unlink(missing_ok=True)
        experiment = MlflowClient(f"sqlite:///{db}").create_experiment("bench-jvm")
        started = time.perf_counter()
        ids = seed_runs(db, experiment, SeedSpec(runs, 20, 20, 20),
                        start_ms=int(time.time() * 1000) - 3_600_000 - runs * 1000)
        meta.write_text(json.dumps({"experiment": experiment, "ids": ids}))
        print(f"{runs} runs seeded in {time.perf_counter() - started:.0f} s", flush=True)
    data = json.loads(meta.read_text())
    return db, data["experiment"], data["ids"]


def settings_for(db: Path, database: str, **overrides):
    from mlflow_spark_tools.config import load_settings

    return load_settings(environ={}).with_overrides(
        rate_limit_profile="unlimited", tables__source="database", tables__backend_store_uri=f"sqlite:///{db}",
        tracking_uri="http://127.0.0.1:9", tables__database=database, **overrides)


def change(db: Path, run_ids: list[str]) -> None:
    """The runs were RUNNING and have finished now, with a new latest value."""
    from bench_sources import finish

    mark_running(str(db), run_ids)
    finish(str(db), run_ids, int(time.time() * 1000) + 1000)


def warm(args: argparse.Namespace, db: Path, experiment: str, ids: list[str]) -> None:
    from bench_sources import finish

    from mlflow_spark_tools.tables.build import build_experiment_tables

    engine = classic_engine(tempfile.mkdtemp(prefix="bench-jvm-") + "/warehouse")
    step = len(ids) // 100
    batches = iter(range(0, len(ids), step))
    results: dict[str, list[dict]] = {}
    for rep in range(args.repetitions):
        for label, vectors in (("plain", None), ("deletion_vectors", True)):
            settings = settings_for(db, label, tables__deletion_vectors=vectors, tables__refresh_by_cost=False,
                                    tables__watermark_margin_seconds=0)
            start = next(batches)
            changed = ids[start:start + step]
            mark_running(str(db), changed)
            started = time.perf_counter()
            build_experiment_tables(settings, engine=engine, experiment_ids=[experiment], full_refresh=True)
            full = time.perf_counter() - started
            finish(str(db), changed, int(time.time() * 1000) + 1000)
            profile = cProfile.Profile()
            started = time.perf_counter()
            profile.enable()
            summary = build_experiment_tables(settings, engine=engine, experiment_ids=[experiment]).summaries[0]
            profile.disable()
            incremental = time.perf_counter() - started
            results.setdefault(label, []).append({"full": full, "incremental": incremental,
                                                  "runs_read": summary.runs_fetched, "mode": summary.mode})
            print(f"rep {rep} {label}: full {full:.2f} s, incremental {incremental:.2f} s "
                  f"({summary.mode}, {summary.runs_fetched} runs read)", flush=True)
            if args.profile and rep == args.repetitions - 1:
                pstats.Stats(profile).sort_stats("cumulative").print_stats("mlflow_spark_tools", 20)
    print(json.dumps({"runs": len(ids), "results": results}))


def choice(args: argparse.Namespace, db: Path, experiment: str, ids: list[str]) -> None:
    warehouse = Path(tempfile.mkdtemp(prefix="bench-jvm-choice-")) / "warehouse"
    step = len(ids) // 100
    for number in range(args.choice):
        change(db, ids[number * step:(number + 1) * step])
        out = subprocess.run([sys.executable, str(HERE), "--refresh", str(warehouse), "--root", args.root,
                              "--runs", str(args.runs)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        print(f"refresh {number}: {out.stdout.strip().splitlines()[-1]}", flush=True)


def refresh(warehouse: str, db: Path, experiment: str) -> None:
    """One refresh in this (fresh) process, as a spark-submit job makes it."""
    from mlflow_spark_tools.tables.build import build_experiment_tables

    engine = classic_engine(warehouse)
    started = time.perf_counter()
    summary = build_experiment_tables(settings_for(db, "choice", tables__watermark_margin_seconds=0),
                                      engine=engine, experiment_ids=[experiment]).summaries[0]
    print(f"{summary.mode} {time.perf_counter() - started:.2f} s, {summary.runs_fetched} runs read"
          + (f", reason: {summary.reason}" if summary.reason else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--choice", type=int, default=0)
    parser.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "bench-jvm-refresh"))
    parser.add_argument("--refresh")
    args = parser.parse_args()
    db, experiment, ids = seeded(Path(args.root) / str(args.runs), args.runs)
    if args.refresh:
        refresh(args.refresh, db, experiment)
    elif args.choice:
        choice(args, db, experiment, ids)
    else:
        warm(args, db, experiment, ids)


if __name__ == "__main__":
    main()
