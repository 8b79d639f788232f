"""Benchmark: how many requests per second the rate-limit proxy sustains on this machine.

    .venv/bin/python bench/bench_proxy.py [--seconds 5] [--threads 16] [--repetitions 3]

The proxy runs as its own process (``mlflow-spark-tools rate-limit-proxy``) in front of a local
MLflow server; clients are threads with keep-alive connections. Measured, each for
``--seconds``:

- rejected: ``runs/get`` with the ``other`` limit set to 1 qps, so nearly every request is
  answered 429 by the proxy itself (its own cost);
- forwarded: ``experiments/get`` with no limit, through the proxy, against the same requests
  straight to the server (the server's capacity; the ratio is the proxy's overhead).

Target: far more than 127 requests per second (the highest documented limit) on both paths,
so the proxy is never what a benchmark measures.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from bench_support import start_proxy, write_report

HERE = Path(__file__).resolve()


def hammer(url: str, path: str, threads: int, seconds: float) -> dict:
    parsed = urllib.parse.urlsplit(url)
    counts: list[dict[int, int]] = [{} for _ in range(threads)]
    stop = time.monotonic() + seconds

    def client(slot: dict[int, int]) -> None:
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        while time.monotonic() < stop:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            slot[response.status] = slot.get(response.status, 0) + 1
            if response.will_close:
                connection.close()
                connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        connection.close()

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(slot,)) for slot in counts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    total: dict[int, int] = {}
    for slot in counts:
        for status, n in slot.items():
            total[status] = total.get(status, 0) + n
    return {"requests_per_second": sum(total.values()) / elapsed, "statuses": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", default=str(HERE.parent / "results" / "proxy.json"))
    args = parser.parse_args()

    from mlflow import MlflowClient

    from tests.support.local_server import LocalTrackingServer

    root = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    tight = root / "tight.yaml"
    tight.write_text("limits:\n  experiment_management: 1\n  search_runs: 1\n  log_batch: 1\n  other: 1\n"
                     "safety_factor: 1.0\n")
    results: dict[str, list[dict]] = {"rejected": [], "forwarded": [], "direct": []}
    with LocalTrackingServer(root / "mlflow", workers=2,
                             server_args=("--gunicorn-opts", "--log-level warning")) as server:
        experiment = MlflowClient(server.url).create_experiment("bench-proxy")
        limited, limited_url = start_proxy(server.url, str(tight), 0)
        open_proxy, open_url = start_proxy(server.url, "unlimited", 0)
        get = f"/api/2.0/mlflow/experiments/get?experiment_id={experiment}"
        try:
            for rep in range(args.repetitions):
                for kind, url, path in (("rejected", limited_url, "/api/2.0/mlflow/runs/get?run_id=x"),
                                        ("forwarded", open_url, get), ("direct", server.url, get)):
                    result = hammer(url, path, args.threads, args.seconds)
                    results[kind].append(result)
                    print(f"rep {rep} {kind}: {result}", flush=True)
        finally:
            for process in (limited, open_proxy):
                process.terminate()
                process.wait(timeout=30)
    median = {k: statistics.median(r["requests_per_second"] for r in v) for k, v in results.items()}
    report = {
        "threads": args.threads,
        "median_requests_per_second": median,
        "forwarded_over_direct": median["forwarded"] / median["direct"],
        "targets_met": {"rejected >> 127 qps": median["rejected"] > 4 * 127,
                        "forwarded >> 127 qps": median["forwarded"] > 2 * 127},
        "all": results,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
