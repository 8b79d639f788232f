"""Benchmark: the collector's requests per run, and a Spark job's wall time under a 429 storm.

    .venv/bin/python bench/bench_collector.py [--runs 300] [--repetitions 3]

1. Requests per run, counted by the rate-limit proxy: ``--runs`` runs (10 params, a 20-step
   history of 3 metrics, 5 tags, no artifacts) logged with ``FailedRunCollector`` against the
   fluent-API pattern (``mlflow.start_run`` / ``log_params`` / ``log_metrics`` per step /
   ``set_tags`` / end of run). Target: <= 3 requests per run.
2. A classic local[2] Spark job (``bench/collector_sweep_job.py``) logging ``--runs`` runs from
   a UDF through the proxy, with no limits and under a 429 storm (2 log_batch and 5 other
   requests per second for the whole job), alternating, ``--repetitions`` times each.
   Target: storm wall time <= 1.2 x the unlimited one. Every deferred run is in the store.
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
from pathlib import Path

from bench_support import proxy_stats, start_proxy, write_report

HERE = Path(__file__).resolve()

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def requests_per_run(server_url: str, client, runs: int) -> dict:
    import mlflow

    from mlflow_spark_tools.collector import FailedRunCollector

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


def spark_job(url: str, experiment: str, store: Path, runs: int) -> dict:
    out = store.parent / f"{store.name}.json"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
        env.pop(name, None)
    subprocess.run([sys.executable, str(HERE.parent / "collector_sweep_job.py"), "--tracking-uri", url,
                    "--experiment-id", experiment, "--store", str(store), "--runs", str(runs),
                    "--out", str(out)], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    pending = store / "pending"
    result["payloads_in_store"] = len(list(pending.glob("*.json"))) if pending.is_dir() else 0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "collector.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    from mlflow import MlflowClient

    from mlflow_spark_tools.local_server import LocalTrackingServer

    root = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    storm_profile = root / "storm.yaml"
    storm_profile.write_text("limits:\n  experiment_management: 7\n  search_runs: 7\n  log_batch: 2\n"
                             "  other: 5\nsafety_factor: 1.0\n")
    report: dict = {"runs": args.runs}
    with LocalTrackingServer(root / "mlflow", workers=2,
                             server_args=("--gunicorn-opts", "--log-level warning")) as server:
        client = MlflowClient(server.url)
        report["requests_per_run"] = requests_per_run(server.url, client, min(args.runs, 100))
        print(f"requests per run: {report['requests_per_run']}", flush=True)
        unlimited, unlimited_url = start_proxy(server.url, "unlimited", 0)
        storm, storm_url = start_proxy(server.url, str(storm_profile), 0)
        jobs: dict[str, list[dict]] = {"unlimited": [], "storm": []}
        try:
            for rep in range(args.repetitions):
                for kind, url in (("unlimited", unlimited_url), ("storm", storm_url)):
                    experiment = client.create_experiment(f"{kind}-{rep}")
                    result = spark_job(url, experiment, root / f"store-{kind}-{rep}", args.runs)
                    result["429s"] = sum(proxy_stats(url)["rate_limited"].values())
                    proxy_stats(url, reset=True)
                    jobs[kind].append(result)
                    print(f"rep {rep} {kind}: {result}", flush=True)
        finally:
            for process in (unlimited, storm):
                process.terminate()
                process.wait(timeout=30)
    median = {k: statistics.median(r["seconds"] for r in v) for k, v in jobs.items()}
    report.update({
        "median_job_seconds": median,
        "storm_over_unlimited": median["storm"] / median["unlimited"],
        "targets_met": {
            "collector <= 3 requests per run": report["requests_per_run"]["collector"] <= 3,
            "storm wall time <= 1.2 x unlimited": median["storm"] / median["unlimited"] <= 1.2,
            "every deferred run stored": all(r["deferred"] == r["payloads_in_store"] for r in jobs["storm"]),
        },
        "all": jobs,
    })
    write_report(report, args.out)


if __name__ == "__main__":
    main()
