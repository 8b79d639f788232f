"""Benchmark: replaying deferred runs through Databricks' limits.

    .venv/bin/python bench/bench_replay.py [--payloads 1000] [--repetitions 3]
        [--serial-payloads 150] [--naive-payloads 300] [--latency-ms 50] [--artifact-bytes N]
        [--package-tree DIR] [--on local|objectstore]

A local MLflow server sits behind the rate-limit proxy (run as its own process, databricks
profile, ``--latency-ms`` added to every request). ``--payloads`` deferred runs (10 params,
3 metrics x 10 steps, 5 tags each; no artifacts) are written with the collector, then replayed
each repetition into a new experiment by:

(a) the replay job (``Replayer``, databricks profile, 16 workers);
(b) the seed's serial replay: one payload after the other with MLflow's fluent API
    (start_run, log_params, log_metrics per step, set_tags, end_run);
(c) a naive thread pool (64 threads) sending each payload with ``MlflowClient`` (create, one
    log_batch, terminate) without throttling; MLflow's client retries the 429s.

The floor is N / 47 seconds (one log_batch per payload at 47 qps; N / (47 x --scale) with a
scaled profile). Targets for (a): a rate of
at least 90% of 47 payloads/s, and zero 429s. (b) and (c) run on fewer payloads (they are slow);
rates are per second, so they compare directly.

With ``--on objectstore`` the stores live on the tests' FUSE mount with the semantics of
Databricks' object-store mounts (tests/support/object_store_fuse.py: no rename, files written
once). A replayer that holds its store through a lease gets one on an embedded engine started
before the timing starts; taking the lease is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_support import proxy_stats, replayer_for, start_proxy, store_root, use_package_tree, write_report

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
LOG_BATCH_LIMIT = 47.0


def write_payloads(store: Path, closed_url: str, experiment_id: str, n: int, artifact_bytes: int = 0) -> None:
    """Deferred payloads, written by the collector against a proxy that lets nothing through;
    with ``artifact_bytes``, each logs one artifact file of that size."""
    from mlflow_spark_tools.collector import FailedRunCollector

    collector = FailedRunCollector(store, tracking_uri=closed_url, fail_fast_seconds=0)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "report.bin"
        for i in range(n):
            with collector.start_run(experiment_id=experiment_id, run_name=f"run-{i:05d}") as run:
                run.log_params({f"p{k}": f"{i}-{k}" for k in range(10)})
                for step in range(10):
                    run.log_metrics({"loss": 1 / (step + 1), "acc": step / 10, "lr": 0.1}, step=step)
                run.set_tags({f"t{k}": str(k) for k in range(5)})
                if artifact_bytes:
                    artifact.write_bytes(os.urandom(artifact_bytes))
                    run.log_artifact(str(artifact), "reports")
            assert run.status == "deferred", run.status


def payload_runs(store: Path) -> list[dict]:
    # read as files: the same code measures checkouts with different package layouts
    return [json.loads(p.read_text())["run"] for p in sorted((store / "pending").glob("*.json"))]


def replay_ours(store: Path, url: str, experiment_id: str, profile_path: str, warehouse: Path) -> dict:
    from mlflow_spark_tools.config import RateLimitProfile

    _retarget(store, experiment_id)
    replayer, engine = replayer_for(store, url, RateLimitProfile.load(profile_path), warehouse, max_workers=16)
    try:
        started, cpu = time.perf_counter(), time.process_time()
        summary = replayer.run_until_empty()
        seconds = time.perf_counter() - started
    finally:
        replayer.close()
        if engine is not None:
            engine.stop()
    return {"payloads": summary.replayed, "seconds": seconds, "failed": summary.failed,
            "client_429s": sum(summary.throttled.values()),
            "client_cpu_ms_per_payload": round((time.process_time() - cpu) * 1000 / max(1, summary.replayed), 2)}


def replay_serial(runs: list[dict], url: str, experiment_id: str) -> dict:
    import mlflow

    mlflow.set_tracking_uri(url)
    started = time.perf_counter()
    for run in runs:
        with mlflow.start_run(experiment_id=experiment_id, run_name=run["run_name"]):
            mlflow.log_params(run["params"])
            by_step: dict[int, dict[str, float]] = {}
            for key, value, _ts, step in run["metrics"]:
                by_step.setdefault(step, {})[key] = value
            for step, values in sorted(by_step.items()):
                mlflow.log_metrics(values, step=step)
            mlflow.set_tags(run["tags"])
    return {"payloads": len(runs), "seconds": time.perf_counter() - started}


def replay_naive_pool(runs: list[dict], url: str, experiment_id: str) -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(url)

    def one(run: dict) -> None:
        created = client.create_run(experiment_id, run_name=run["run_name"])
        client.log_batch(
            created.info.run_id,
            metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in run["metrics"]],
            params=[Param(k, v) for k, v in run["params"].items()],
            tags=[RunTag(k, v) for k, v in run["tags"].items()],
        )
        client.set_terminated(created.info.run_id)

    started = time.perf_counter()
    errors = 0
    with ThreadPoolExecutor(64) as pool:
        for future in [pool.submit(one, r) for r in runs]:
            try:
                future.result()
            except Exception:
                errors += 1
    return {"payloads": len(runs), "seconds": time.perf_counter() - started, "errors": errors}


def _retarget(store: Path, experiment_id: str) -> None:
    """Point every pending payload at another experiment (documents are unsigned here): each is
    written anew, under the name its bytes hash to where the name carries a digest."""
    for path in (store / "pending").glob("*.json"):
        document = json.loads(path.read_text())
        document["run"]["experiment_id"] = experiment_id
        data = json.dumps(document, sort_keys=True).encode()
        parts = path.name[:-5].rsplit(".", 2)
        target = path if len(parts) < 3 else path.with_name(f"{parts[0]}.{parts[1]}.{_digest(data)}.json")
        path.unlink()
        target.write_bytes(data)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a store with new files only (the object-store mount takes no times, modes or renames)."""
    for directory, _, names in os.walk(source):
        out = target / Path(directory).relative_to(source)
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            (out / name).write_bytes((Path(directory) / name).read_bytes())


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:32]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, default=1000)
    parser.add_argument("--serial-payloads", type=int, default=150)
    parser.add_argument("--naive-payloads", type=int, default=300)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Multiply the databricks limits (proxy and replayer) by this; below 1 "
                        "the limits bind before the local server's capacity does.")
    parser.add_argument("--only-ours", action="store_true", help="Skip the serial and naive baselines.")
    parser.add_argument("--artifact-bytes", type=int, default=0,
                        help="Each payload also logs one artifact file of this size (one more request).")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "replay.json"))
    parser.add_argument("--package-tree", help="Replay with the package of another checkout (the code "
                        "before a change), for a comparison in the same run.")
    parser.add_argument("--on", choices=("local", "objectstore"), default="local",
                        help="Where the stores live: a local directory, or the object-store FUSE mount.")
    return parser.parse_args()


def replay_repetitions(args: argparse.Namespace, client, stores: Path, runs: list, url: str, profile_path: Path,
                       root: Path, results: dict[str, list[dict]]) -> None:
    """Every repetition: our replayer on a copy of the store, then the two baselines, each with
    the proxy's counters zeroed and its buckets refilled first."""
    master = stores / "store"
    for rep in range(args.repetitions):
        store = stores / f"store-{rep}"
        _copy_tree(master, store)
        time.sleep(0.5)  # a listing on the mount shows new files late
        proxy_stats(url, reset=True)
        time.sleep(1.5)  # the proxy's buckets refill
        ours = replay_ours(store, url, client.create_experiment(f"ours-{rep}"), str(profile_path),
                           root / f"warehouse-{rep}")
        ours["proxy_429s"] = sum(proxy_stats(url)["rate_limited"].values())
        results["ours"].append(ours)
        print(f"rep {rep} ours: {ours}", flush=True)
        if args.only_ours:
            continue

        baselines = (
            ("serial", lambda e: replay_serial(runs[: args.serial_payloads], url, e)),
            ("naive_pool", lambda e: replay_naive_pool(runs[: args.naive_payloads], url, e)),
        )
        for kind, replay in baselines:
            proxy_stats(url, reset=True)
            time.sleep(1.5)  # the proxy's buckets refill
            result = replay(client.create_experiment(f"{kind}-{rep}"))
            result["proxy_429s"] = sum(proxy_stats(url)["rate_limited"].values())
            results[kind].append(result)
            print(f"rep {rep} {kind}: {result}", flush=True)


def main() -> None:
    args = parse_arguments()
    use_package_tree(args.package_tree)
    os.environ.pop("MLFLOW_SPARK_TOOLS_SIGNING_KEY", None)  # plain payloads, no models
    import logging

    logging.basicConfig(level=logging.ERROR)  # one warning per deferred run otherwise

    from mlflow import MlflowClient

    from tests.support.local_server import LocalTrackingServer

    root = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    stores, mount = store_root(args.on, root)
    results: dict[str, list[dict]] = {"ours": [], "serial": [], "naive_pool": []}
    # gunicorn's sync workers serve MLflow's Flask app directly: about half the server CPU per
    # request of the default uvicorn bridge, so that on two cores the replayer, not the local
    # sqlite server, is what is measured.
    with LocalTrackingServer(root / "mlflow", workers=2,
                             server_args=("--gunicorn-opts", "--log-level warning")) as server:
        client = MlflowClient(server.url)
        from mlflow_spark_tools.config import RateLimitProfile

        databricks = RateLimitProfile.load("databricks")
        profile_path = root / "profile.yaml"
        profile_path.write_text(json.dumps({"limits": {k: v * args.scale for k, v in databricks.limits.items()},
                                            "safety_factor": databricks.safety_factor}))
        proxy, url = start_proxy(server.url, str(profile_path), args.latency_ms)
        closed_profile = root / "closed.yaml"
        closed_profile.write_text("limits:\n  experiment_management: 0.001\n  search_runs: 0.001\n"
                                  "  log_batch: 0.001\n  other: 0.001\nsafety_factor: 1.0\n")
        closed, closed_url = start_proxy(server.url, str(closed_profile), 0)
        try:
            seed_experiment = client.create_experiment("bench-replay-seed")
            try:  # spend the closed proxy's one token
                urllib.request.urlopen(urllib.request.Request(f"{closed_url}/api/2.0/mlflow/runs/create",
                                                              data=b"{}"), timeout=10).close()
            except urllib.error.HTTPError:
                pass
            master = stores / "store"
            started = time.perf_counter()
            write_payloads(master, closed_url, seed_experiment, args.payloads, args.artifact_bytes)
            print(f"wrote {args.payloads} payloads in {time.perf_counter() - started:.1f}s", flush=True)
            runs = payload_runs(master)
            replay_repetitions(args, client, stores, runs, url, profile_path, root, results)
        finally:
            for process in (proxy, closed):
                process.terminate()
                process.wait(timeout=30)
            if mount is not None:
                mount.__exit__(None, None, None)

    write_report(report_of(args, results), args.out)
    shutil.rmtree(root, ignore_errors=True)


def report_of(args: argparse.Namespace, results: dict[str, list[dict]]) -> dict:
    """The median payloads per second of each replay, against the floor rate; the targets met."""
    def rate(kind: str) -> float | None:
        if not results[kind]:
            return None
        return statistics.median(r["payloads"] / r["seconds"] for r in results[kind])

    floor = LOG_BATCH_LIMIT * args.scale
    ours = rate("ours")
    return {
        "package": "this checkout" if args.package_tree is None else args.package_tree,
        "stores_on": args.on,
        "payloads": args.payloads,
        "latency_ms": args.latency_ms,
        "artifact_bytes": args.artifact_bytes,
        "scale": args.scale,
        "floor_payloads_per_second": floor,
        "median_payloads_per_second": {k: rate(k) for k in results},
        "ours_share_of_floor_rate": ours / floor,
        "ours_vs_serial": ours / rate("serial") if results["serial"] else None,
        "ours_vs_naive_pool": ours / rate("naive_pool") if results["naive_pool"] else None,
        "targets_met": {
            ">= 90% of floor rate": ours >= 0.9 * floor,
            "zero 429s": all(r["proxy_429s"] == 0 for r in results["ours"]),
        },
        "all": results,
    }


if __name__ == "__main__":
    main()
