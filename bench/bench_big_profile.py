"""A dataset with a big profile reused by many runs: the build's time and peak memory.

One dataset whose profile is ``--profile-mb`` MB is logged by ``--runs`` runs through a real
``mlflow server`` (sqlite). Each repetition builds the experiment in a fresh process on the
embedded engine (its own process, so the peak is the build's), through REST and from the
backend database; with ``--tree`` the same builds run on another checkout's package too
(``git worktree add /tmp/before <commit>``), alternating, for a ratio measured in the same run.

    .venv/bin/python bench/bench_big_profile.py --runs 40 --profile-mb 8 --repetitions 3 \\
        --tree /tmp/before
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench_support import (
    engine_process,
    peak_rss_mb,
    serve_engine,
    use_package_tree,
    worker_result,
    write_report,
)

HERE = Path(__file__).resolve()


def measure(source: str, target: str, experiment_id: str, remote: str, warehouse: str) -> dict:
    """One full build in this process; a failed build is measured too, with its error."""
    import time

    from mlflow_spark_tools.config import load_settings
    from mlflow_spark_tools.spark.engine import get_engine
    from mlflow_spark_tools.tables.build import build_experiment_tables

    overrides: dict = {"rate_limit_profile": "unlimited", "tables__database": "bench", "tables__refresh_by_cost": False}
    if source == "rest":
        overrides["tracking_uri"] = target
    else:
        overrides.update(tables__source="database", tables__backend_store_uri=target,
                         tracking_uri="http://127.0.0.1:9")
    engine = get_engine(remote=remote, warehouse=warehouse)
    started = time.perf_counter()
    result = build_experiment_tables(load_settings().with_overrides(**overrides), engine=engine,
                                     experiment_ids=[experiment_id], full_refresh=True)
    summary = result.summaries[0]
    return {"seconds": round(time.perf_counter() - started, 2), "ok": summary.ok, "inputs": summary.inputs,
            "error": (summary.error or "")[:120] or None, "peak_rss_mb": round(peak_rss_mb())}


def seed(server_url: str, runs: int, profile_mb: int) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag

    client = MlflowClient(server_url)
    experiment = client.create_experiment("big-profile")
    profile = json.dumps({"histogram": "x" * (profile_mb << 20)})
    dataset = Dataset(name="big", digest="d1g35t", source_type="local", source='{"uri": "/data/big"}',
                      schema='{"mlflow_colspec": []}', profile=profile)
    for _ in range(runs):
        run = client.create_run(experiment)
        client.log_inputs(run.info.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
        client.set_terminated(run.info.run_id)
    return experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--profile-mb", type=int, default=8)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--tree", help="another checkout to measure against (the code before)")
    parser.add_argument("--out", default="bench/results/big_profile.json")
    parser.add_argument("--serve-engine", action="store_true")
    parser.add_argument("--worker", nargs=5, metavar=("SOURCE", "TARGET", "EXPERIMENT", "REMOTE", "WAREHOUSE"))
    parser.add_argument("--worker-tree")
    args = parser.parse_args()
    if args.serve_engine:
        serve_engine()
        return
    if args.worker:
        use_package_tree(args.worker_tree)
        print(json.dumps(measure(*args.worker)))
        return

    from tests.support.local_server import LocalTrackingServer

    trees = {"this": None, **({"before": args.tree} if args.tree else {})}
    all_results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, LocalTrackingServer(Path(tmp) / "mlflow", workers=2) as server:
        experiment = seed(server.url, args.runs, args.profile_mb)
        targets = {"rest": server.url, "database": f"sqlite:///{server.db_path}"}
        for repetition in range(args.repetitions):
            for source, target in targets.items():
                for name, tree in trees.items():  # alternating: the same noise for both
                    with engine_process(HERE) as (engine, remote):
                        extra = ["--worker-tree", tree] if tree else []
                        result = worker_result(HERE, [source, target, experiment, remote,
                                                      str(Path(tmp) / f"warehouse-{name}"), *extra], engine.pid)
                    result.update(repetition=repetition, source=source, code=name)
                    print(json.dumps(result), flush=True)
                    all_results.append(result)
    summary = {}
    for source in targets:
        for name in trees:
            runs = [r for r in all_results if r["source"] == source and r["code"] == name]
            summary[f"{source}/{name}"] = {
                "ok": all(r["ok"] for r in runs),
                "median_seconds": sorted(r["seconds"] for r in runs)[len(runs) // 2],
                "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "max_engine_peak_rss_mb": max(round(r["engine_peak_rss_mb"]) for r in runs),
                "error": next((r["error"] for r in runs if r["error"]), None)}
    write_report({"command": " ".join(sys.argv), "runs": args.runs, "profile_mb": args.profile_mb,
                  "summary": summary, "all": all_results}, args.out)


if __name__ == "__main__":
    main()
