"""A reverse proxy for the MLflow REST API that enforces Databricks-style rate limits.

Point a pipeline's ``MLFLOW_TRACKING_URI`` at it to see how the pipeline behaves under a
workspace's limits: each API class (see :mod:`mlflow_spark_tools.endpoints`) has a token bucket
holding up to one second of its limit; a request that finds its bucket empty is answered at once
with HTTP 429, Databricks' error body and ``Retry-After``, and is not forwarded. Requests outside
the tracking API (health checks, the UI) pass unlimited. An optional latency is added to every
forwarded request, as a remote workspace would.

``GET /__proxy/stats`` returns the counters (requests and 429s per class and per endpoint) as
JSON; ``POST /__proxy/reset`` zeroes them and refills the buckets.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import sys
import threading
import time
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mlflow_spark_tools.config import API_CLASSES, RateLimitProfile
from mlflow_spark_tools.endpoints import api_class_of, endpoint_label
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.ratelimit import TokenBucket

log = logging.getLogger(__name__)

STATS_PATH = "/__proxy/stats"
RESET_PATH = "/__proxy/reset"
RATE_LIMIT_MESSAGE = "The request was rate limited: too many requests for this API. Retry after the given delay."
# Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection"})
_COPY_CHUNK = 1 << 16


class ProxyCounters:
    """Requests and 429s per API class and per endpoint; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.started = time.time()
            self.requests = dict.fromkeys(API_CLASSES, 0)
            self.rate_limited = dict.fromkeys(API_CLASSES, 0)
            self.endpoints: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "rate_limited": 0})
            self.unlimited = 0
            self.upstream_errors = 0

    def count(self, api_class: str | None, endpoint: str | None, limited: bool) -> None:
        with self._lock:
            if api_class is None:
                self.unlimited += 1
                return
            self.requests[api_class] += 1
            entry = self.endpoints[endpoint or ""]
            entry["requests"] += 1
            if limited:
                self.rate_limited[api_class] += 1
                entry["rate_limited"] += 1

    def upstream_error(self) -> None:
        with self._lock:
            self.upstream_errors += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "rate_limited": dict(self.rate_limited),
                "endpoints": {k: dict(v) for k, v in sorted(self.endpoints.items())},
                "unlimited_requests": self.unlimited,
                "upstream_errors": self.upstream_errors,
                "seconds": round(time.time() - self.started, 3),
            }


class RateLimitProxy:
    """The proxy server; run it in a thread (:meth:`start`) or in the foreground (:meth:`serve`).

    Args:
        upstream: the tracking server's base URL, ``http://host:port``.
        profile: the limits to enforce (the profile's raw limits: its safety factor is for
            clients, not for the server).
        latency_ms: added to every forwarded request.
        host, port: where to listen; port 0 picks a free one.
        upstream_timeout: seconds to wait for the upstream server.
    """

    def __init__(self, upstream: str, profile: RateLimitProfile, latency_ms: float = 0.0,
                 host: str = "127.0.0.1", port: int = 0, upstream_timeout: float = 120.0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError(f"--upstream must be an http(s) URL such as http://127.0.0.1:5000, not {upstream!r}.")
        if latency_ms < 0:
            raise UsageError("--latency-ms must be zero or positive.")
        self.upstream = parsed
        # host[:port] without any user:password@ of the URL (never echoed or sent as Host)
        self.upstream_host = parsed.hostname + (f":{parsed.port}" if parsed.port else "")
        self.profile = profile
        self.latency = latency_ms / 1000.0
        self.upstream_timeout = upstream_timeout
        self.counters = ProxyCounters()
        self.buckets = self._new_buckets()
        self._server = _Server((host, port), _handler_class(self))
        self._thread: threading.Thread | None = None

    def _new_buckets(self) -> dict[str, TokenBucket]:
        return {c: TokenBucket(float(self.profile.limits[c]), max(1.0, float(self.profile.limits[c])))
                for c in API_CLASSES}

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}"

    def reset(self) -> None:
        self.counters.reset()
        self.buckets = self._new_buckets()

    def admit(self, api_class: str | None) -> float:
        """0.0 if a request of this class may pass now, else the seconds until it could."""
        if api_class is None:
            return 0.0
        return self.buckets[api_class].try_take()

    def serve(self) -> None:
        """Serve in the calling thread until :meth:`stop` (or Ctrl-C)."""
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> RateLimitProxy:
        self._thread = threading.Thread(target=self.serve, name="rate-limit-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> RateLimitProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def new_upstream_connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.upstream.scheme == "https" else http.client.HTTPConnection
        default = 443 if self.upstream.scheme == "https" else 80
        return cls(self.upstream.hostname, self.upstream.port or default, timeout=self.upstream_timeout)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is not the proxy's error."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, TimeoutError)):
            log.debug("Client %s went away", client_address)
            return
        super().handle_error(request, client_address)


def _handler_class(proxy: RateLimitProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_ProxyHandler):
        pass

    Handler.proxy = proxy
    return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    """One client connection: keeps its own upstream connection for keep-alive."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the client's
    # delayed ACK would hold every response back by about 40 ms.
    disable_nagle_algorithm = True
    proxy: RateLimitProxy
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle()

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    # ---- the request -------------------------------------------------------------------

    def _handle(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == STATS_PATH and self.command == "GET":
            self._read_body()
            return self._send_json(200, self.proxy.counters.as_dict())
        if path == RESET_PATH and self.command == "POST":
            self._read_body()
            self.proxy.reset()
            return self._send_json(200, {"reset": True})

        body = self._read_body()
        api_class = api_class_of(path)
        wait = self.proxy.admit(api_class)
        self.proxy.counters.count(api_class, endpoint_label(path), limited=wait > 0)
        if wait > 0:
            return self._send_json(
                429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": RATE_LIMIT_MESSAGE},
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        if self.proxy.latency:
            time.sleep(self.proxy.latency)
        self._forward(body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = self.proxy.upstream_host
        headers["Content-Length"] = str(len(body))
        if not body and self.command in ("GET", "HEAD", "DELETE"):
            headers.pop("Content-Length")
        target = self.proxy.upstream.path.rstrip("/") + self.path
        try:
            response = self._upstream_request(target, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self.proxy.counters.upstream_error()
            log.warning("Upstream %s failed: %s", self.proxy.upstream_host, exc)
            return self._send_json(502, {"error_code": "TEMPORARILY_UNAVAILABLE",
                                         "message": f"The upstream tracking server failed: {exc}"})
        self.send_response(response.status, response.reason)
        length = response.getheader("Content-Length")
        payload = None if length is not None or self.command == "HEAD" else response.read()
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)) if payload is not None else length or "0")
        self.end_headers()
        if payload is not None:
            self.wfile.write(payload)
        elif self.command != "HEAD":
            remaining = int(length or 0)
            while remaining > 0:
                chunk = response.read(min(_COPY_CHUNK, remaining))
                if not chunk:
                    self.close_connection = True
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)
        response.close()
        if response.will_close:
            self._drop_upstream()

    def _upstream_request(self, target: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send on the kept upstream connection; if the upstream closed it while it was idle,
        send once more on a new one (nothing was processed on a connection closed before the
        request reached it)."""
        reused = self._upstream is not None
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = self.proxy.new_upstream_connection()
            try:
                self._upstream.request(self.command, target, body=body or None, headers=headers)
                return self._upstream.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_upstream()
                if not reused or attempt == 2:
                    raise
            except Exception:
                self._drop_upstream()
                raise
        raise AssertionError("unreachable")

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._drop_upstream()
