"""Benchmark: the collector's requests per run, and a Spark job's wall time under a 429 storm.

    .venv/bin/python bench/bench_collector.py [--runs 300] [--repetitions 3] [--setups proxied,direct,databricks]

1. Requests per run, counted by the rate-limit proxy: ``--runs`` runs (10 params, a 20-step
   history of 3 metrics, 5 tags, no artifacts) logged with ``FailedRunCollector`` against the
   fluent-API pattern (``mlflow.start_run`` / ``log_params`` / ``log_metrics`` per step /
   ``set_tags`` / end of run). Target: <= 3 requests per run.
2. A classic local[2] Spark job (``tests/support/udf_sweep_job.py --workload ridge``) logging ``--runs`` runs from
   a UDF through the proxy, with no limits and under a 429 storm (2 log_batch and 5 other
   requests per second for the whole job), alternating, ``--repetitions`` times each.
   Target: storm wall time <= 1.2 x the unlimited one. Every deferred run is in the store.
   With ``--setups``, also on a direct artifact root and on the Databricks-shaped store of
   ``tests/support/databricks_artifacts.py`` (each run then logs a 4 KiB artifact).

    .venv/bin/python bench/bench_collector.py --defer-runs 300 [--repetitions 3]
        [--on local|objectstore] [--package-tree DIR]

3. Only the time to defer a run: ``--defer-runs`` runs (10 params, 3 metrics x 20 steps, 5
   tags, one 4 KiB artifact) logged with ``FailedRunCollector`` against a proxy that answers
   every request 429, so each run is deferred at its first request (``fail_fast_seconds=0``):
   the time of a ``with`` block is one 429 plus writing the payload. Per run: median and 90th
   percentile; runs that could not be saved are counted. ``--on objectstore`` puts the store on
   the tests' FUSE mount with the semantics of Databricks' object-store mounts;
   ``--package-tree`` measures another checkout's package (the code before a change).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench_support import proxy_stats, start_proxy, store_root, use_package_tree, write_report

HERE = Path(__file__).resolve()

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def requests_per_run(server_url: str, client, runs: int) -> dict:
    import mlflow

    from mlflow_spark_tools.failed_runs.collector import FailedRunCollector

    proxy, url = start_proxy(server_url, "unlimited", 0)
    try:
        experiment = client.create_experiment("requests-collector")
        collector = FailedRunCollector(tempfile.mkdtemp(), tracking_uri=url)
        proxy_stats(url, reset=True)
        for i in range(runs):
            with collector.start_run(experiment_id=experiment, run_name=f"c-{i}") as run:
                run.log_params({f"p{k}": str(k) for k in range(10)})
                for step in range(20):
                    run.log_metrics({"loss": 1 / (step + 1), "score": step / 20, "alpha": 0.1}, step=step)
                run.set_tags({f"t{k}": str(k) for k in range(5)})
        ours = sum(proxy_stats(url)["requests"].values()) / runs

        experiment = client.create_experiment("requests-fluent")
        mlflow.set_tracking_uri(url)
        proxy_stats(url, reset=True)
        for i in range(runs):
            with mlflow.start_run(experiment_id=experiment, run_name=f"f-{i}"):
                mlflow.log_params({f"p{k}": str(k) for k in range(10)})
                for step in range(20):
                    mlflow.log_metrics({"loss": 1 / (step + 1), "score": step / 20, "alpha": 0.1}, step=step)
                mlflow.set_tags({f"t{k}": str(k) for k in range(5)})
        fluent = sum(proxy_stats(url)["requests"].values()) / runs
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    return {"collector": ours, "fluent_api": fluent}


def defer_times(server_url: str, stores: Path, runs: int, repetitions: int) -> dict:
    """Seconds each run takes to be deferred (see the module docstring, 3.)."""
    from mlflow import MlflowClient

    from mlflow_spark_tools.failed_runs.collector import FailedRunCollector

    closed_profile = stores.parent / "closed.yaml"
    closed_profile.write_text("limits:\n  experiment_management: 0.001\n  search_runs: 0.001\n"
                              "  log_batch: 0.001\n  other: 0.001\nsafety_factor: 1.0\n")
    proxy, url = start_proxy(server_url, str(closed_profile), 0)
    experiment = MlflowClient(server_url).create_experiment(f"defer-{uuid.uuid4().hex[:8]}")
    artifact = stores.parent / "report.bin"
    artifact.write_bytes(os.urandom(4096))
    per_rep: list[dict] = []
    try:
        for rep in range(repetitions):
            collector = FailedRunCollector(stores / f"store-{rep}", tracking_uri=url, fail_fast_seconds=0)
            times, lost, error = [], 0, None
            for i in range(runs):
                started = time.perf_counter()
                try:
                    with collector.start_run(experiment_id=experiment, run_name=f"defer-{i}") as run:
                        run.log_params({f"p{k}": f"{i}-{k}" for k in range(10)})
                        for step in range(20):
                            run.log_metrics({"loss": 1 / (step + 1), "acc": step / 20, "lr": 0.1}, step=step)
                        run.set_tags({f"t{k}": str(k) for k in range(5)})
                        run.log_artifact(str(artifact), "reports")
                except Exception as exc:  # the run is neither logged nor saved
                    lost += 1
                    error = error or f"{type(exc).__name__}: {str(exc)[:200]}"
                    continue
                times.append(time.perf_counter() - started)
                if run.status != "deferred":
                    raise SystemExit(f"run {i} was {run.status}, not deferred: the proxy let it through")
            ordered = sorted(times)
            one = {"runs": runs, "deferred": len(times), "not_saved": lost, "first_error": error,
                   "median_ms": round(1000 * statistics.median(ordered), 2) if ordered else None,
                   "p90_ms": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 2) if ordered else None}
            print(f"rep {rep}: {one}", flush=True)
            per_rep.append(one)
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    medians = [r["median_ms"] for r in per_rep if r["median_ms"] is not None]
    return {"median_of_median_ms": statistics.median(medians) if medians else None,
            "not_saved": sum(r["not_saved"] for r in per_rep), "all": per_rep}


def spark_job(url: str, experiment: str, store: Path, runs: int, artifact_bytes: int = 0,
              env_extra: dict[str, str] | None = None) -> dict:
    out = store.parent / f"{store.name}.json"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, **(env_extra or {}))
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, str(HERE.parents[1] / "tests" / "support" / "udf_sweep_job.py"),
                           "--engine", "classic", "--workload", "ridge", "--tracking-uri", url,
                           "--experiment-id", experiment, "--store", str(store), "--runs", str(runs),
                           "--out", str(out), "--artifact-bytes", str(artifact_bytes)],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"The Spark job failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    pending = store / "pending"
    result["payloads_in_store"] = len(list(pending.glob("*.json"))) if pending.is_dir() else 0
    return result


def storm_jobs(server_url: str, client, root: Path, storm_profile: Path, runs: int, repetitions: int,
               artifact_bytes: int, routed: dict[str, str] | None, env_extra: dict[str, str] | None,
               label: str) -> dict[str, list[dict]]:
    """The sweep job through an unlimited proxy and through a storm, alternating."""
    unlimited, unlimited_url = start_proxy(server_url, "unlimited", 0, routed)
    storm, storm_url = start_proxy(server_url, str(storm_profile), 0, routed)
    jobs: dict[str, list[dict]] = {"unlimited": [], "storm": []}
    try:
        for rep in range(repetitions):
            for kind, url in (("unlimited", unlimited_url), ("storm", storm_url)):
                experiment = client.create_experiment(f"{label}-{kind}-{rep}")
                extra = dict(env_extra or {})
                if routed:  # MLflow's Databricks repository asks this host for signed URLs
                    extra["DATABRICKS_HOST"] = url
                result = spark_job(url, experiment, root / f"store-{label}-{kind}-{rep}", runs,
                                   artifact_bytes, extra)
                result["429s"] = sum(proxy_stats(url)["rate_limited"].values())
                proxy_stats(url, reset=True)
                jobs[kind].append(result)
                print(f"{label} rep {rep} {kind}: {result}", flush=True)
    finally:
        for process in (unlimited, storm):
            process.terminate()
            process.wait(timeout=30)
    return jobs


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--setups", default="proxied",
                        help="Comma-separated artifact setups for the storm jobs: proxied (no artifacts, "
                        "as before), direct, databricks (each run logs a 4 KiB artifact).")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "collector.json"))
    parser.add_argument("--defer-runs", type=int, help="Measure only the time to defer a run (3.), with this "
                        "many runs per repetition.")
    parser.add_argument("--on", choices=("local", "objectstore"), default="local",
                        help="With --defer-runs: the store on a local directory or on the object-store FUSE mount.")
    parser.add_argument("--package-tree", help="With --defer-runs: the package of another checkout (the code "
                        "before a change), for a comparison in the same session.")
    return parser.parse_args()


def measure_defer(args: argparse.Namespace) -> dict:
    """Only the time to defer a run (3.), on a local server, the store where ``--on`` says."""
    from tests.support.local_server import LocalTrackingServer

    base = Path(tempfile.mkdtemp(prefix="bench-defer-"))
    stores, mount = store_root(args.on, base)
    try:
        with LocalTrackingServer(base / "mlflow", workers=2,
                                 server_args=("--gunicorn-opts", "--log-level warning")) as server:
            return {"package": args.package_tree or "this checkout", "stores_on": args.on,
                    **defer_times(server.url, stores, args.defer_runs, args.repetitions)}
    finally:
        if mount is not None:
            mount.__exit__(None, None, None)


def main() -> None:
    args = parse_arguments()
    use_package_tree(args.package_tree)
    logging.basicConfig(level=logging.ERROR)
    if args.defer_runs:
        write_report(measure_defer(args), args.out)
        return

    from mlflow import MlflowClient

    from tests.support.local_server import LocalTrackingServer

    sys.path.insert(0, str(HERE.parents[1]))  # tests/support: the workspace stand-in
    from tests.support.databricks_artifacts import DEFAULT_ARTIFACT_ROOT, DatabricksArtifactStore, routes

    root = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    storm_profile = root / "storm.yaml"
    storm_profile.write_text("limits:\n  experiment_management: 7\n  search_runs: 7\n  log_batch: 2\n"
                             "  other: 5\nsafety_factor: 1.0\n")
    report: dict = {"runs": args.runs, "setups": {}}
    token = "dapi" + uuid.uuid4().hex
    stand_in = DatabricksArtifactStore(root / "cloud", token).start()
    try:
        for setup in args.setups.split(","):
            artifact_root = {"proxied": None, "direct": str(root / "direct-artifacts"),
                             "databricks": DEFAULT_ARTIFACT_ROOT}[setup]
            with LocalTrackingServer(root / f"mlflow-{setup}", workers=2, artifact_root=artifact_root,
                                     server_args=("--gunicorn-opts", "--log-level warning")) as server:
                client = MlflowClient(server.url)
                if setup == "proxied":
                    report["requests_per_run"] = requests_per_run(server.url, client, min(args.runs, 100))
                    print(f"requests per run: {report['requests_per_run']}", flush=True)
                jobs = storm_jobs(server.url, client, root, storm_profile, args.runs, args.repetitions,
                                  0 if setup == "proxied" else 4096,
                                  routes(stand_in) if setup == "databricks" else None,
                                  {"DATABRICKS_TOKEN": token} if setup == "databricks" else None, setup)
            median = {k: statistics.median(r["seconds"] for r in v) for k, v in jobs.items()}
            report["setups"][setup] = {
                "median_job_seconds": median, "storm_over_unlimited": median["storm"] / median["unlimited"],
                "every deferred run stored": all(r["deferred"] == r["payloads_in_store"] for r in jobs["storm"]),
                "all": jobs,
            }
    finally:
        stand_in.stop()
    report["targets_met"] = {
        "storm wall time <= 1.2 x unlimited": all(s["storm_over_unlimited"] <= 1.2 for s in report["setups"].values()),
        "every deferred run stored": all(s["every deferred run stored"] for s in report["setups"].values()),
    }
    if "requests_per_run" in report:
        report["targets_met"]["collector <= 3 requests per run"] = report["requests_per_run"]["collector"] <= 3
    write_report(report, args.out)


if __name__ == "__main__":
    main()
