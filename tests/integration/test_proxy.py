"""The rate-limit proxy in front of a real tracking server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from mlflow import MlflowClient


def _post(url, body=None):
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_excess_requests_get_databricks_429_and_are_not_forwarded(make_proxy, client, experiment):
    proxy = make_proxy({"other": 3})
    statuses = []
    for i in range(8):
        status, headers, body = _post(f"{proxy.url}/api/2.0/mlflow/runs/create",
                                      {"experiment_id": experiment, "run_name": f"p{i}"})
        statuses.append(status)
        if status == 429:
            assert body["error_code"] == "REQUEST_LIMIT_EXCEEDED"
            assert int(headers["Retry-After"]) >= 1
    # a bucket holds one second of the limit: the first 3 pass, the burst after them does not
    assert statuses[:3] == [200, 200, 200]
    assert statuses.count(429) >= 4
    created = client.search_runs([experiment])
    assert len(created) == statuses.count(200)  # nothing rejected reached the server
    stats = _get(f"{proxy.url}/__proxy/stats")
    assert stats["requests"]["other"] == 8
    assert stats["rate_limited"]["other"] == statuses.count(429)
    assert stats["endpoints"]["runs/create"] == {"requests": 8, "rate_limited": statuses.count(429)}


def test_classes_are_limited_separately_and_tokens_come_back(make_proxy, experiment):
    proxy = make_proxy({"search_runs": 1, "other": 2})
    search = f"{proxy.url}/api/2.0/mlflow/runs/search"
    assert _post(search, {"experiment_ids": [experiment]})[0] == 200
    assert _post(search, {"experiment_ids": [experiment]})[0] == 429
    # another class is not affected by the exhausted search bucket
    assert _post(f"{proxy.url}/api/2.0/mlflow/runs/create", {"experiment_id": experiment})[0] == 200
    time.sleep(1.1)
    assert _post(search, {"experiment_ids": [experiment]})[0] == 200
    # health checks and the UI are not rate limited
    for _ in range(5):
        with urllib.request.urlopen(f"{proxy.url}/health", timeout=10) as response:
            assert response.status == 200
    stats = _get(f"{proxy.url}/__proxy/stats")
    assert stats["requests"]["search_runs"] == 3 and stats["rate_limited"]["search_runs"] == 1
    assert stats["unlimited_requests"] == 5
    assert _post(f"{proxy.url}/__proxy/reset")[0] == 200
    assert _get(f"{proxy.url}/__proxy/stats")["requests"]["search_runs"] == 0


def test_mlflow_client_through_the_proxy_with_latency(make_proxy, experiment):
    proxy = make_proxy(latency_ms=100)
    proxied = MlflowClient(proxy.url)
    started = time.perf_counter()
    run = proxied.create_run(experiment)
    proxied.log_param(run.info.run_id, "k", "v")
    elapsed = time.perf_counter() - started
    assert elapsed >= 0.2  # two forwarded requests, 100 ms each
    assert proxied.get_run(run.info.run_id).data.params == {"k": "v"}


def test_concurrent_clients_keep_the_limit(make_proxy, experiment):
    proxy = make_proxy({"other": 20})
    url = f"{proxy.url}/api/2.0/mlflow/experiments/get?experiment_id={experiment}"

    def hit(_):
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(hit, range(400)))
    elapsed = time.monotonic() - started
    # at most the burst (20) plus 20 per second went through
    assert statuses.count(200) <= 20 + 20 * elapsed + 1
    assert statuses.count(429) > 0
    assert set(statuses) <= {200, 429}


def test_unreachable_upstream_is_a_502(tmp_path):
    from mlflow_spark_tools.config import RateLimitProfile
    from mlflow_spark_tools.local_server import free_port
    from mlflow_spark_tools.proxy import RateLimitProxy

    profile = RateLimitProfile.load("databricks")
    with RateLimitProxy(f"http://127.0.0.1:{free_port()}", profile) as proxy:
        status, _, body = _post(f"{proxy.url}/api/2.0/mlflow/runs/create", {"experiment_id": "0"})
    assert status == 502 and body["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_command_line_proxy_with_a_profile_file(tmp_path, tracking_server, experiment):
    from mlflow_spark_tools.local_server import free_port, wait_for_health

    profile = tmp_path / "mine.yaml"
    profile.write_text("limits:\n  experiment_management: 1\n  search_runs: 1\n  log_batch: 1\n"
                       "  other: 1\nsafety_factor: 0.5\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow_spark_tools.cli", "rate-limit-proxy", "--upstream", tracking_server.url,
         "--port", str(port), "--profile", str(profile)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, 60, process)
        statuses = [_post(f"{url}/api/2.0/mlflow/runs/create", {"experiment_id": experiment})[0]
                    for _ in range(3)]
        assert statuses == [200, 429, 429]
        assert _get(f"{url}/__proxy/stats")["rate_limited"]["other"] == 2
    finally:
        process.terminate()
        process.wait(timeout=30)
    bad = subprocess.run(
        [sys.executable, "-m", "mlflow_spark_tools.cli", "rate-limit-proxy", "--upstream", "ftp://x",
         "--port", "0"], capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "--upstream" in bad.stderr
