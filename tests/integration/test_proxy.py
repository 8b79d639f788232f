"""The rate-limit proxy in front of a real tracking server."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
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
    from mlflow_spark_tools.tools.proxy import RateLimitProxy
    from tests.support.local_server import free_port

    profile = RateLimitProfile.load("databricks")
    with RateLimitProxy(f"http://127.0.0.1:{free_port()}", profile) as proxy:
        status, _, body = _post(f"{proxy.url}/api/2.0/mlflow/runs/create", {"experiment_id": "0"})
    assert status == 502 and body["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_command_line_proxy_with_a_profile_file(tmp_path, tracking_server, experiment):
    from tests.support.local_server import free_port, wait_for_health

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


# ---- limits: bodies, connections, framing, credentials ------------------------------------

SECRET = "S3cret"  # planted in upstream URLs; must never be shown


class _Recorder:
    """A tiny upstream that records every request it receives and answers 200 with JSON;
    ``GET /stream`` answers with a chunked body of three parts."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.requests.append({"method": self.command, "path": self.path,
                                          "headers": dict(self.headers), "body": body})
                if self.path == "/stream":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for part in (b"first,", b"second,", b"third"):
                        self.wfile.write(b"%X\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                data = json.dumps({"received": len(body)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self._stopped = False

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def recorder():
    upstream = _Recorder()
    yield upstream
    upstream.stop()


@pytest.fixture
def proxy_to():
    """``proxy_to(upstream_url, **limits)``: a proxy (no rate limits to speak of) for the test."""
    from mlflow_spark_tools.config import RateLimitProfile
    from mlflow_spark_tools.tools.proxy import RateLimitProxy

    started = []

    def make(upstream: str, **kwargs):
        profile = RateLimitProfile(name="test", limits=dict.fromkeys(
            ("experiment_management", "search_runs", "log_batch", "other"), 1000))
        proxy = RateLimitProxy(upstream, profile, **kwargs).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def _raw(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: proxy"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _exchange(proxy, data: bytes, end_stream: bool = False, timeout: float = 4.0):
    """Send raw bytes, optionally end the stream, and read until the proxy closes the
    connection: (status or None, headers, body, everything received)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(data)
        if end_stream:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    if not received:
        return None, {}, b"", received
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body, received


def _stats(proxy) -> dict:
    return _get(f"{proxy.url}/__proxy/stats")


def _assert_quiet(capfd, caplog) -> None:
    """No traceback on stderr and nothing logged at WARNING or above by the proxy."""
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert [r for r in caplog.records if r.name.startswith("mlflow_spark_tools") and r.levelno >= logging.WARNING] == []


def test_a_body_over_the_limit_is_413_and_never_forwarded(recorder, proxy_to, capfd, caplog):
    proxy = proxy_to(recorder.url, max_body_bytes=1024)
    # declared too long: answered at once, before any of the body is sent
    status, headers, body, _ = _exchange(proxy, _raw("POST", "/api/2.0/mlflow/runs/create",
                                                     {"Content-Length": "1025"}))
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error_code"] == "RESOURCE_LIMIT_EXCEEDED"
    # with Expect: 100-continue, 413 instead of 100 Continue
    status, _, _, received = _exchange(proxy, _raw("PUT", "/api/2.0/mlflow-artifacts/artifacts/x",
                                                   {"Content-Length": "5000", "Expect": "100-continue"}))
    assert status == 413 and b"100 Continue" not in received
    # a chunked body that grows over the limit
    chunks = b"".join(b"200\r\n" + b"x" * 512 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    status, _, body, _ = _exchange(proxy, _raw("POST", "/api/2.0/mlflow/runs/create",
                                               {"Transfer-Encoding": "chunked"}, chunks))
    assert status == 413 and json.loads(body)["message"]
    assert recorder.requests == []
    # exactly the limit passes, intact
    status, _, _ = _post_bytes(f"{proxy.url}/api/2.0/mlflow/runs/create", b"y" * 1024)
    assert status == 200 and recorder.requests[0]["body"] == b"y" * 1024
    assert _stats(proxy)["oversized_requests"] == 3
    _assert_quiet(capfd, caplog)


def _post_bytes(url: str, data: bytes, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_a_large_upload_is_spooled_to_disk_and_arrives_intact(make_proxy, experiment):
    proxy = make_proxy()
    data = os.urandom(20 * 1024 * 1024)
    path = f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{uuid.uuid4().hex}/blob.bin"
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        connection.request("PUT", path, body=data, headers={"Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        for _ in range(3):  # small requests stay in memory
            connection.request("GET", f"/api/2.0/mlflow/experiments/get?experiment_id={experiment}")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200 and response.read() == data
    finally:
        connection.close()
    assert _stats(proxy)["spooled_requests"] == 1


def test_a_large_chunked_upload_is_forwarded_whole_with_its_length(recorder, proxy_to):
    proxy = proxy_to(recorder.url)
    parts = [os.urandom(1024 * 1024 + 17) for _ in range(5)]
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        connection.request("PUT", "/api/2.0/mlflow-artifacts/artifacts/x/blob", body=iter(parts),
                           encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"received": sum(map(len, parts))}
    finally:
        connection.close()
    (forwarded,) = recorder.requests
    assert forwarded["body"] == b"".join(parts)
    assert forwarded["headers"]["Content-Length"] == str(sum(map(len, parts)))
    assert "Transfer-Encoding" not in forwarded["headers"]
    assert _stats(proxy)["spooled_requests"] == 1


def test_an_upstream_response_without_length_is_streamed_chunked(recorder, proxy_to):
    proxy = proxy_to(recorder.url)
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.request("GET", "/stream")
        response = connection.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.read() == b"first,second,third"
        connection.request("GET", "/health")  # the connection is still usable
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_silent_and_stalled_connections_are_closed_after_the_idle_timeout(recorder, proxy_to, capfd, caplog):
    proxy = proxy_to(recorder.url, idle_timeout=0.5)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=4) as silent:
        assert silent.recv(1) == b""  # closed by the proxy, not by our timeout
    assert time.monotonic() - started < 3
    # a request whose body stalls: closed, not forwarded
    started = time.monotonic()
    stalled = _raw("POST", "/api/2.0/mlflow/runs/create", {"Content-Length": "100"}, b"0123456789")
    assert _exchange(proxy, stalled)[3] == b""
    assert time.monotonic() - started < 3
    # between two requests of a keep-alive connection
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=4)
    connection.request("GET", "/health")
    connection.getresponse().read()
    started = time.monotonic()
    assert connection.sock.recv(1) == b""
    assert time.monotonic() - started < 3
    connection.close()
    assert [r["path"] for r in recorder.requests] == ["/health"]
    assert _stats(proxy)["incomplete_requests"] == 1
    _assert_quiet(capfd, caplog)


def test_connections_over_the_cap_get_503_without_a_thread(recorder, proxy_to):
    proxy = proxy_to(recorder.url, max_connections=2)
    held = [http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=4) for _ in range(2)]
    for connection in held:  # two connections, served and left open
        connection.request("GET", "/health")
        assert connection.getresponse().read() == b'{"received": 0}'
    threads = threading.active_count()
    status, headers, body, _ = _exchange(proxy, b"")
    assert status == 503 and headers["connection"] == "close"
    assert json.loads(body)["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert threading.active_count() == threads
    held[0].close()  # its place is given back when its thread ends
    deadline = time.monotonic() + 3
    while True:
        status, _, body, _ = _exchange(proxy, _raw("GET", "/health", {"Connection": "close"}))
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200
    held[1].close()
    stats = _stats(proxy)
    assert stats["rejected_connections"] >= 1 and stats["active_connections"] >= 1


TRUNCATED = {
    "content-length": ({"Content-Length": "1000"}, b"x" * 100),
    "chunked-without-last-chunk": ({"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n"),
    "chunked-cut-in-a-chunk": ({"Transfer-Encoding": "chunked"}, b"a\r\nhello"),
    "chunked-cut-in-a-size-line": ({"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n0"),
    "chunked-without-final-line": ({"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n0\r\n"),
}


@pytest.mark.parametrize("headers, body", TRUNCATED.values(), ids=TRUNCATED.keys())
def test_truncated_requests_are_never_forwarded(recorder, proxy_to, capfd, caplog, headers, body):
    proxy = proxy_to(recorder.url)
    status, _, _, received = _exchange(proxy, _raw("POST", "/api/2.0/mlflow/runs/create", headers, body),
                                       end_stream=True)
    assert received == b""  # closed without an answer: the client is gone
    assert recorder.requests == []
    stats = _stats(proxy)
    assert stats["incomplete_requests"] == 1 and stats["requests"]["other"] == 0
    _assert_quiet(capfd, caplog)


def test_a_client_reset_in_the_middle_of_a_body_is_not_forwarded(recorder, proxy_to, capfd, caplog):
    proxy = proxy_to(recorder.url)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=4)
    sock.sendall(_raw("POST", "/api/2.0/mlflow/runs/create", {"Content-Length": "100000"}, b"x" * 5000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset, not an orderly end
    deadline = time.monotonic() + 3
    while _stats(proxy)["incomplete_requests"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stats(proxy)["incomplete_requests"] == 1
    assert recorder.requests == []
    _assert_quiet(capfd, caplog)


MALFORMED = {
    "content-length-not-a-number": _raw("POST", "/api/2.0/mlflow/runs/create", {"Content-Length": "abc"}),
    "content-length-negative": _raw("POST", "/api/2.0/mlflow/runs/create", {"Content-Length": "-5"}, b"hello"),
    "content-length-signed": _raw("POST", "/api/2.0/mlflow/runs/create", {"Content-Length": "+5"}, b"hello"),
    "content-lengths-differ": _raw("POST", "/api/2.0/mlflow/runs/create", {"Content-Length": "5"}, b"hello")
    .replace(b"Content-Length: 5", b"Content-Length: 5\r\nContent-Length: 6"),
    "content-length-and-chunked": _raw("POST", "/api/2.0/mlflow/runs/create",
                                       {"Content-Length": "5", "Transfer-Encoding": "chunked"},
                                       b"5\r\nhello\r\n0\r\n\r\n"),
    "transfer-encoding-gzip": _raw("POST", "/api/2.0/mlflow/runs/create", {"Transfer-Encoding": "gzip"}, b"x"),
    "transfer-encoding-gzip-chunked": _raw("POST", "/api/2.0/mlflow/runs/create",
                                           {"Transfer-Encoding": "gzip, chunked"}, b"0\r\n\r\n"),
    "chunk-size-not-hex": _raw("POST", "/api/2.0/mlflow/runs/create", {"Transfer-Encoding": "chunked"},
                               b"zz\r\nhello\r\n0\r\n\r\n"),
    "chunk-size-empty": _raw("POST", "/api/2.0/mlflow/runs/create", {"Transfer-Encoding": "chunked"},
                             b"\r\nhello\r\n0\r\n\r\n"),
    "chunk-longer-than-its-size": _raw("POST", "/api/2.0/mlflow/runs/create", {"Transfer-Encoding": "chunked"},
                                       b"3\r\nhello\r\n0\r\n\r\n"),
    "request-line": b"GET /a b HTTP/1.1\r\nHost: proxy\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_framing_is_a_400_with_json_and_no_traceback(recorder, proxy_to, capfd, caplog, request_bytes):
    proxy = proxy_to(recorder.url)
    status, headers, body, _ = _exchange(proxy, request_bytes)
    assert status == 400 and headers["connection"] == "close"
    error = json.loads(body)
    assert error["error_code"] == "MALFORMED_REQUEST" and error["message"]
    assert recorder.requests == []
    assert _stats(proxy)["malformed_requests"] == 1
    _assert_quiet(capfd, caplog)


def test_an_unexpected_error_is_one_warning_line_without_traceback(recorder, proxy_to, capfd, caplog):
    proxy = proxy_to(recorder.url)

    def broken(api_class, request=""):
        raise ZeroDivisionError("planted failure")

    proxy.admit = broken
    assert _exchange(proxy, _raw("GET", "/api/2.0/mlflow/experiments/get?experiment_id=1"))[3] == b""
    deadline = time.monotonic() + 3
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.05)
    (record,) = [r for r in caplog.records if r.name.startswith("mlflow_spark_tools")]
    assert record.levelno == logging.WARNING and "ZeroDivisionError: planted failure" in record.getMessage()
    assert not record.exc_info  # no traceback below DEBUG
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_upstream_credentials_are_sent_as_basic_auth_and_never_shown(recorder, proxy_to, capfd, caplog):
    from mlflow_spark_tools.config import RateLimitProfile
    from mlflow_spark_tools.errors import UsageError
    from mlflow_spark_tools.tools.proxy import RateLimitProxy
    from tests.support.local_server import free_port

    caplog.set_level(logging.DEBUG)
    upstream = recorder.url.replace("http://", f"http://alice:{SECRET}%2FPW@")
    proxy = proxy_to(upstream)
    assert _post(f"{proxy.url}/api/2.0/mlflow/runs/create", {"experiment_id": "1"})[0] == 200
    token = base64.b64encode(f"alice:{SECRET}/PW".encode()).decode()  # user and password URL-decoded
    assert recorder.requests[0]["headers"]["Authorization"] == f"Basic {token}"
    # a request's own credentials are kept
    _post_bytes(f"{proxy.url}/api/2.0/mlflow/runs/create", b"{}", {"Authorization": "Bearer mine"})
    assert recorder.requests[1]["headers"]["Authorization"] == "Bearer mine"
    # nowhere to be seen: repr, stats, the 502 body of an unreachable upstream, a usage error
    dead = proxy_to(f"http://alice:{SECRET}%2FPW@127.0.0.1:{free_port()}")
    status, _, bad_gateway = _post(f"{dead.url}/api/2.0/mlflow/runs/create", {"experiment_id": "1"})
    assert status == 502
    usage_errors = []
    for bad in (f"ftp://alice:{SECRET}@host", f"alice:{SECRET}@host:5000", f"http://alice:{SECRET}@host:port",
                f"http://alice:{SECRET}@@host:99999"):
        with pytest.raises(UsageError) as usage:
            RateLimitProxy(bad, RateLimitProfile.load("databricks"))
        usage_errors.append(str(usage.value))
    out, err = capfd.readouterr()
    shown = [repr(proxy), repr(dead), str(proxy.upstream), json.dumps(_stats(proxy)), json.dumps(bad_gateway),
             *usage_errors, caplog.text, out, err]
    for text in shown:
        assert SECRET not in text and token not in text


@pytest.mark.parametrize("given", ["environment", "command line"])
def test_command_line_never_prints_upstream_credentials(recorder, given):
    """The upstream URL with its password comes from the environment, out of the process list
    (/proc/<pid>/cmdline, readable by every user); on the command line it works and is warned of."""
    import os

    port = recorder.url.rsplit(":", 1)[1]
    upstream = f"http://alice:{SECRET}PW@127.0.0.1:{port}"
    arguments = ["--upstream", upstream] if given == "command line" else []
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow_spark_tools.cli", "--debug", "rate-limit-proxy", *arguments, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MLFLOW_SPARK_TOOLS_PROXY_UPSTREAM": upstream} if given == "environment" else None,
    )
    listed = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()
    assert (SECRET in listed) == (given == "command line")
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        listening = None
        while listening is None and time.monotonic() < deadline and process.poll() is None:
            for line in list(err_lines):
                if line.startswith("{") and "listening" in line:
                    listening = json.loads(line)
            time.sleep(0.05)
        assert listening is not None, "".join(err_lines)
        assert listening["upstream"] == f"127.0.0.1:{port}"
        url = listening["listening"]
        assert _post(f"{url}/api/2.0/mlflow/runs/create", {"experiment_id": "1"})[0] == 200
        token = base64.b64encode(f"alice:{SECRET}PW".encode()).decode()
        assert recorder.requests[0]["headers"]["Authorization"] == f"Basic {token}"
        recorder.stop()  # the upstream fails: the warning and the 502 name it as host:port
        status, _, body = _post(f"{url}/api/2.0/mlflow/runs/create", {"experiment_id": "1"})
        assert status == 502 and SECRET not in json.dumps(body)
        warned = [line for line in err_lines if "MLFLOW_SPARK_TOOLS_PROXY_UPSTREAM instead" in line]
        assert len(warned) == (given == "command line") and all(SECRET not in line for line in err_lines)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        out = process.stdout.read()
    printed = out + "".join(err_lines)
    assert "Upstream 127.0.0.1" in printed  # the output was captured
    assert SECRET not in printed and token not in printed


def test_a_route_with_a_star_segment_serves_the_paths_of_every_id():
    from mlflow_spark_tools.config import RateLimitProfile
    from mlflow_spark_tools.tools.proxy import RateLimitProxy

    profile = RateLimitProfile.load("unlimited")
    routes = {"/api/2.0/mlflow/artifacts/": "http://127.0.0.1:1",
              "/api/2.0/mlflow/logged-models/*/artifacts/credentials-for-": "http://127.0.0.1:2"}
    with RateLimitProxy("http://127.0.0.1:3", profile, routes=routes) as proxy:
        def port(path):
            return proxy.upstream_for(path).port

        assert port("/api/2.0/mlflow/logged-models/m-1/artifacts/credentials-for-upload") == 2
        assert port("/api/2.0/mlflow/logged-models/m-1/params") == 3
        assert port("/api/2.0/mlflow/logged-models/a/b/artifacts/credentials-for-upload") == 3  # one segment
        assert port("/api/2.0/mlflow/logged-models") == 3
        assert port("/api/2.0/mlflow/artifacts/credentials-for-write") == 1
