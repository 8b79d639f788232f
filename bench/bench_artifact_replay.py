"""Benchmark: replay on three artifact stores under binding limits, alone and beside other clients.

    .venv/bin/python bench/bench_artifact_replay.py [--payloads 300] [--repetitions 3] [--scale 0.1]
        [--setups proxied,direct,databricks] [--contend 0.5] [--latency-ms 20] [--modes alone,contended]

For each artifact setup, a tracking server whose runs get that store: ``proxied`` (served
artifacts, ``mlflow-artifacts:/``), ``direct`` (``--default-artifact-root DIR``) or
``databricks`` (``dbfs:/databricks/mlflow-tracking`` URIs written by MLflow's real
``DatabricksArtifactRepository`` against the loopback workspace stand-in of
``tests/support/databricks_artifacts.py``, whose credential endpoints the proxy routes under
the same limits). In front, the rate-limit proxy in its own process with the databricks
profile times ``--scale``, so that the limits bind before the local server does. Each
repetition writes ``--payloads`` signed deferred payloads (a 4 KiB artifact each, a
scikit-learn model every 20th) and replays them with the replay job (same profile and its
safety factor 0.95, 16 workers):

(a) alone. Targets: 0 429s; a payload rate >= 90% of what the binding class allows the client
    (limit x safety factor / that class's requests per payload, as the proxy counted them).
(b) contended: a load generator sends ``get_run`` and ``log_batch`` at ``--contend`` of the
    ``other`` and ``log_batch`` limits through the same proxy for the whole replay. Targets:
    429s <= 1% of the replay's requests; a payload rate >= 80% of the remaining capacity (the
    smallest over classes of (limit - load) / requests per payload).

Both: every run exactly once (with MLflow 3 every model a READY logged model of its run,
once), and the replay's own request counts equal what the proxy saw from it (no request it
did not pace).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from bench_support import proxy_stats, replayer_for, start_proxy, write_report

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # tests/support: the workspace stand-in
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
CLASSES = ("experiment_management", "search_runs", "log_batch", "other")


def write_payloads(store: Path, closed_url: str, experiment_id: str, n: int) -> None:
    from sklearn.linear_model import LinearRegression

    from mlflow_spark_tools.failed_runs.collector import FailedRunCollector

    collector = FailedRunCollector(store, tracking_uri=closed_url, fail_fast_seconds=0)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "report.bin"
        for i in range(n):
            with collector.start_run(experiment_id=experiment_id, run_name=f"run-{i:05d}") as run:
                run.log_params({f"p{k}": f"{i}-{k}" for k in range(10)})
                for step in range(10):
                    run.log_metrics({"loss": 1 / (step + 1), "acc": step / 10}, step=step)
                artifact.write_bytes(os.urandom(4096))
                run.log_artifact(str(artifact), "reports")
                if i % 20 == 0:
                    model = LinearRegression().fit([[0.0], [1.0]], [0.0, float(i)])
                    run.log_model(model, "model", flavor="sklearn", pip_requirements=["scikit-learn"])
            assert run.status == "deferred", run.status


class LoadGenerator:
    """Another client of the workspace: get_run and log_batch at fixed rates, unpaced by us."""

    def __init__(self, url: str, run_id: str, rates: dict[str, float]) -> None:
        self.url, self.run_id, self.rates = url, run_id, rates
        self.sent = dict.fromkeys(rates, 0)
        self.throttled = dict.fromkeys(rates, 0)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(c,), daemon=True) for c in rates if rates[c] > 0]

    def _request(self, api_class: str) -> urllib.request.Request:
        if api_class == "other":
            return urllib.request.Request(f"{self.url}/api/2.0/mlflow/runs/get?run_id={self.run_id}")
        body = json.dumps({"run_id": self.run_id, "metrics": [
            {"key": "load", "value": 1.0, "timestamp": int(time.time() * 1000), "step": 0}]}).encode()
        return urllib.request.Request(f"{self.url}/api/2.0/mlflow/runs/log-batch", data=body,
                                      headers={"Content-Type": "application/json"})

    def _loop(self, api_class: str) -> None:
        interval = 1.0 / self.rates[api_class]
        due = time.monotonic()
        while not self._stop.is_set():
            due += interval
            try:
                urllib.request.urlopen(self._request(api_class), timeout=30).close()
            except urllib.error.HTTPError as exc:
                if exc.code == 429:
                    self.throttled[api_class] += 1
            except OSError:
                pass
            self.sent[api_class] += 1
            # evenly spaced: a late request is not made up for by a burst
            due = max(due, time.monotonic())
            time.sleep(max(0.0, due - time.monotonic()))

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def logged_models(client, experiment: str) -> list[tuple]:
    """(source run, name, status) of the experiment's MLflow 3 logged models; none on MLflow 2."""
    models: list[tuple] = []
    if hasattr(client, "search_logged_models"):
        token = None
        while True:
            page = client.search_logged_models(experiment_ids=[experiment], page_token=token)
            models += [(m.source_run_id, m.name, m.status.to_int()) for m in page]
            token = page.token
            if not token:
                break
    return models


def one_replay(setup: str, server, proxy_url: str, closed_url: str, profile_path: Path, limits: dict,
               payloads: int, contend: float, store: Path) -> dict:
    from mlflow import MlflowClient

    from mlflow_spark_tools.config import RateLimitProfile
    from mlflow_spark_tools.failed_runs.signing import load_signing_key

    client = MlflowClient(server.url)
    experiment = client.create_experiment(f"{setup}-{uuid.uuid4().hex[:8]}")
    write_payloads(store, closed_url, experiment, payloads)
    load_rates = {"other": limits["other"] * contend, "log_batch": limits["log_batch"] * contend}
    target_run = client.create_run(client.create_experiment(f"load-{uuid.uuid4().hex[:8]}")).info.run_id
    proxy_stats(proxy_url, reset=True)
    time.sleep(1.5)  # the proxy's buckets refill
    replayer, engine = replayer_for(store, proxy_url, RateLimitProfile.load(str(profile_path)),
                                    store.parent / f"{store.name}-warehouse", max_workers=16,
                                    signing_key=load_signing_key())
    load = LoadGenerator(proxy_url, target_run, load_rates if contend else {})
    try:
        with load:
            if contend:
                time.sleep(3.0)  # the other clients were there first
            started = time.perf_counter()
            summary = replayer.run_until_empty(pause=0.5)
            seconds = time.perf_counter() - started
    finally:
        replayer.close()
        if engine is not None:
            engine.stop()
    seen = proxy_stats(proxy_url)
    replay_requests = sum(summary.requests.values())
    # requests that went through, per payload (a 429 is not a request the payload needed)
    per_payload = {c: (summary.requests[c] - summary.throttled[c]) / max(1, summary.replayed) for c in CLASSES}
    load_seen = {c: load.sent.get(c, 0) for c in CLASSES}
    names = [r.info.run_name for r in client.search_runs([experiment], max_results=5000)]
    # with MLflow 3 every model a logged model of its own run, READY, once
    models = logged_models(client, experiment)
    rate = summary.replayed / seconds
    safety = RateLimitProfile.load(str(profile_path)).safety_factor
    allowed = min(limits[c] * safety / per_payload[c] for c in CLASSES if per_payload[c] > 0)
    remaining = min((limits[c] - load_rates.get(c, 0.0) * (1 if contend else 0)) / per_payload[c]
                    for c in CLASSES if per_payload[c] > 0)
    return {
        "setup": setup, "contended": bool(contend), "payloads": summary.replayed, "failed": summary.failed,
        "seconds": round(seconds, 2), "payloads_per_second": round(rate, 3),
        "allowed_payloads_per_second": round(allowed, 3), "remaining_payloads_per_second": round(remaining, 3),
        "share_of_allowed": round(rate / allowed, 3), "share_of_remaining": round(rate / remaining, 3),
        "replay_requests": replay_requests, "replay_429s": sum(summary.throttled.values()),
        "replay_429s_per_class": {c: summary.throttled[c] for c in CLASSES if summary.throttled[c]},
        "replay_429_share": round(sum(summary.throttled.values()) / max(1, replay_requests), 4),
        "requests_per_payload": {c: round(v, 3) for c, v in per_payload.items()},
        "unpaced_requests": sum(seen["requests"].values()) - replay_requests - sum(load_seen.values()),
        "load_sent": load_seen, "load_429s": dict(load.throttled),
        "exactly_once": len(names) == payloads and len(set(names)) == payloads,
        "logged_models": len(models), "logged_models_ready_once": not models or (
            len(models) == len({(run, name) for run, name, _ in models}) == len(range(0, payloads, 20))
            and all(status == 2 for *_, status in models)),
        "endpoints": summary.endpoints, "rates_at_end": summary.rates,
    }


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=int, default=300)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--setups", default="proxied,direct,databricks")
    parser.add_argument("--contend", type=float, default=0.5)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--modes", default="alone,contended", help="alone, contended or both")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "artifact_replay.json"))
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    import logging

    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("MLFLOW_SPARK_TOOLS_SIGNING_KEY", "bench-signing-key-" + uuid.uuid4().hex)

    from mlflow_spark_tools.config import RateLimitProfile
    from tests.support.databricks_artifacts import DEFAULT_ARTIFACT_ROOT, DatabricksArtifactStore, routes
    from tests.support.local_server import LocalTrackingServer

    root = Path(tempfile.mkdtemp(prefix="bench-artifact-replay-"))
    databricks = RateLimitProfile.load("databricks")
    limits = {k: v * args.scale for k, v in databricks.limits.items()}
    profile_path = root / "profile.yaml"
    profile_path.write_text(json.dumps({"limits": limits, "safety_factor": databricks.safety_factor}))
    closed_profile = root / "closed.yaml"
    closed_profile.write_text(json.dumps({"limits": dict.fromkeys(CLASSES, 0.001), "safety_factor": 1.0}))
    results: list[dict] = []
    token = "dapi" + uuid.uuid4().hex
    stand_in = DatabricksArtifactStore(root / "cloud", token).start()
    os.environ["DATABRICKS_TOKEN"] = token
    try:
        for setup in args.setups.split(","):
            artifact_root = {"proxied": None, "direct": str(root / "direct-artifacts"),
                             "databricks": DEFAULT_ARTIFACT_ROOT}[setup]
            routed = routes(stand_in) if setup == "databricks" else None
            with LocalTrackingServer(root / f"mlflow-{setup}", workers=2, artifact_root=artifact_root,
                                     server_args=("--gunicorn-opts", "--log-level warning")) as server:
                proxy, url = start_proxy(server.url, str(profile_path), args.latency_ms, routed)
                closed, closed_url = start_proxy(server.url, str(closed_profile), 0, routed)
                os.environ["DATABRICKS_HOST"] = url
                try:
                    try:  # spend the closed proxy's one token
                        urllib.request.urlopen(urllib.request.Request(
                            f"{closed_url}/api/2.0/mlflow/runs/create", data=b"{}"), timeout=10).close()
                    except urllib.error.HTTPError:
                        pass
                    for rep in range(args.repetitions):
                        modes = args.modes.split(",")
                        for contend in [c for m, c in (("alone", 0.0), ("contended", args.contend)) if m in modes]:
                            result = one_replay(setup, server, url, closed_url, profile_path, limits,
                                                args.payloads, contend, root / f"store-{setup}-{rep}-{contend}")
                            result["repetition"] = rep
                            results.append(result)
                            print(json.dumps({k: v for k, v in result.items() if k not in ("endpoints",)}),
                                  flush=True)
                finally:
                    for process in (proxy, closed):
                        process.terminate()
                        process.wait(timeout=30)
    finally:
        stand_in.stop()

    write_report(report_of(args, limits, results), args.out)


def report_of(args: argparse.Namespace, limits: dict, results: list[dict]) -> dict:
    """Per setup, the medians alone and contended; the targets met."""
    def median(setup: str, contended: bool, key: str) -> float | None:
        values = [r[key] for r in results if r["setup"] == setup and r["contended"] == contended]
        return statistics.median(values) if values else None  # that mode was not run (--modes)

    summary = {}
    for setup in args.setups.split(","):
        summary[setup] = {
            "alone_share_of_allowed": median(setup, False, "share_of_allowed"),
            "alone_429s": sum(r["replay_429s"] for r in results if r["setup"] == setup and not r["contended"]),
            "contended_share_of_remaining": median(setup, True, "share_of_remaining"),
            "contended_429_share": max((r["replay_429_share"] for r in results
                                        if r["setup"] == setup and r["contended"]), default=None),
        }

    def holds(key: str, test: Callable[[float], bool]) -> bool | None:
        """Whether every setup meets a target; None when its mode was not run."""
        values = [s[key] for s in summary.values() if s[key] is not None]
        return all(test(v) for v in values) if values else None

    return {
        "payloads": args.payloads, "scale": args.scale, "contend": args.contend, "latency_ms": args.latency_ms,
        "limits": limits, "summary": summary,
        "targets_met": {
            "alone: 0 429s": all(s["alone_429s"] == 0 for s in summary.values()),
            "alone: >= 90% of the binding class": holds("alone_share_of_allowed", lambda v: v >= 0.9),
            "contended: 429s <= 1%": holds("contended_429_share", lambda v: v <= 0.01),
            "contended: >= 80% of the remaining capacity": holds("contended_share_of_remaining", lambda v: v >= 0.8),
            "every run exactly once": all(r["exactly_once"] for r in results),
            "every model a READY logged model, once (MLflow 3)": all(r["logged_models_ready_once"] for r in results),
            "no unpaced request": all(r["unpaced_requests"] == 0 for r in results),
        },
        "all": results,
    }


if __name__ == "__main__":
    main()
