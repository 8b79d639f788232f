"""The proxy: token buckets per API class in front of the upstream, a thread per connection."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import socket
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mlflow_spark_tools.config import API_CLASSES, RateLimitProfile
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.tools.proxy.counters import ProxyCounters
from mlflow_spark_tools.tools.proxy.handler import handler_class
from mlflow_spark_tools.tools.proxy.protocol import (
    COPY_CHUNK,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    IncompleteRequest,
    RequestError,
)
from mlflow_spark_tools.tracking.ratelimit import TokenBucket

log = logging.getLogger(__name__)


class RateLimitProxy:
    """The proxy server; run it in a thread (:meth:`start`) or in the foreground (:meth:`serve`).

    Args:
        upstream: the tracking server's base URL, ``http://host:port``; a ``user:password@`` in
            it is sent as HTTP Basic authentication (URL-decoded) and never shown.
        profile: the limits to enforce (the profile's raw limits: its safety factor is for
            clients, not for the server).
        latency_ms: added to every forwarded request.
        host: the address to listen on.
        port: the port to listen on; 0 picks a free one.
        upstream_timeout: seconds to wait for the upstream server.
        max_body_bytes: the largest request body accepted; larger ones are answered 413.
            See :data:`DEFAULT_MAX_BODY_BYTES`.
        idle_timeout: seconds a client connection may stay silent (between requests or in the
            middle of one) before it is closed.
        max_connections: client connections served at a time; one more is answered 503.

    Raises:
        UsageError: an upstream URL that is not http(s) or a limit out of range.
    """

    def __init__(self, upstream: str, profile: RateLimitProfile, latency_ms: float = 0.0,
                 host: str = "127.0.0.1", port: int = 0, upstream_timeout: float = 120.0,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, routes: dict[str, str] | None = None) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        try:
            port_of_upstream = parsed.port
        except ValueError:
            raise UsageError(f"--upstream has an invalid port: {redacted_url(upstream)!r}.") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError("--upstream must be an http(s) URL such as http://127.0.0.1:5000, "
                             f"not {redacted_url(upstream)!r}.")
        if latency_ms < 0:
            raise UsageError("--latency-ms must be zero or positive.")
        if max_body_bytes < 0:
            raise UsageError("--max-body-bytes must be zero or positive.")
        if not idle_timeout > 0:
            raise UsageError("--idle-timeout must be positive.")
        if max_connections < 1:
            raise UsageError("--max-connections must be at least 1.")
        hostname = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        # host[:port] without any user:password@ of the URL (never echoed or sent as Host)
        self.upstream_host = hostname + (f":{port_of_upstream}" if port_of_upstream else "")
        self.upstream = parsed._replace(netloc=self.upstream_host, query="", fragment="")
        # The Authorization header added to forwarded requests; private so that it is not shown.
        self.upstream_authorization: str | None = None
        if parsed.username is not None or parsed.password is not None:
            user = urllib.parse.unquote(parsed.username or "")
            password = urllib.parse.unquote(parsed.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self.upstream_authorization = f"Basic {token}"
        # Paths served by another upstream under the same limits, longest prefix first (a
        # workspace stand-in that answers the endpoints the tracking server has not); a ``*``
        # segment of a prefix stands for any one path segment (``/logged-models/*/artifacts/``).
        self.routes: list[tuple[re.Pattern[str], urllib.parse.SplitResult]] = []
        for prefix, url in sorted((routes or {}).items(), key=lambda item: -len(item[0])):
            route = urllib.parse.urlsplit(url)
            if route.scheme not in ("http", "https") or not route.hostname or route.username:
                raise UsageError(f"A route's upstream must be an http(s) URL without credentials, not {redacted_url(url)!r}.")
            pattern = re.compile("[^/]+".join(re.escape(part) for part in prefix.split("*")))
            self.routes.append((pattern, route._replace(query="", fragment="")))
        self.profile = profile
        self.latency = latency_ms / 1000.0
        self.upstream_timeout = upstream_timeout
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.counters = ProxyCounters()
        self.buckets = self._new_buckets()
        self._server = _Server((host, port), handler_class(self), counters=self.counters,
                               max_connections=max_connections)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RateLimitProxy(upstream={self.upstream.geturl()!r}, url={self.url!r})"

    def _new_buckets(self) -> dict[str, TokenBucket]:
        return {c: TokenBucket(float(self.profile.limits[c]), max(1.0, float(self.profile.limits[c])))
                for c in API_CLASSES}

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The proxy's base URL, for clients."""
        host = self._server.server_address[0]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        """The counters, and the client connections open now."""
        return {**self.counters.as_dict(), "active_connections": self._server.active_connections}

    def reset(self) -> None:
        """Zero the counters and refill the buckets."""
        self.counters.reset()
        self.buckets = self._new_buckets()

    def admit(self, api_class: str | None, request: str = "") -> float:
        """0.0 if a request of this class may pass now, else the seconds until it could;
        ``request`` (``"POST /api/2.0/mlflow/runs/create"``) is for subclasses that refuse
        particular requests."""
        if api_class is None:
            return 0.0
        return self.buckets[api_class].try_take()

    def serve(self) -> None:
        """Serve in the calling thread until :meth:`stop` (or Ctrl-C)."""
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> RateLimitProxy:
        """Serve in a daemon thread; returns the proxy."""
        self._thread = threading.Thread(target=self.serve, name="rate-limit-proxy", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Close the listening socket after :meth:`serve` returned."""
        self._server.server_close()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> RateLimitProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def upstream_for(self, path: str) -> urllib.parse.SplitResult:
        """The upstream that serves ``path``: a route's, or the tracking server."""
        for pattern, route in self.routes:
            if pattern.match(path):
                return route
        return self.upstream

    def new_upstream_connection(self, upstream: urllib.parse.SplitResult | None = None) -> http.client.HTTPConnection:
        """A connection to the tracking server, or another upstream (not connected yet)."""
        upstream = self.upstream if upstream is None else upstream
        cls = http.client.HTTPSConnection if upstream.scheme == "https" else http.client.HTTPConnection
        default = 443 if upstream.scheme == "https" else 80
        return cls(upstream.hostname or "", upstream.port or default, timeout=self.upstream_timeout,
                   blocksize=COPY_CHUNK)


def redacted_url(url: str) -> str:
    """``url`` for messages: everything up to its last ``@`` (a ``user:password@`` however
    malformed the URL is) replaced."""
    if "@" not in url:
        return url
    scheme, sep, _ = url.partition("://")
    return (scheme + sep if sep else "") + "***@" + url.rsplit("@", 1)[1]


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 counters: ProxyCounters, max_connections: int) -> None:
        self.counters = counters
        self.max_connections = max_connections
        self.active_connections = 0
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a handler thread for the connection, or refuse it if the cap is reached.

        A refused connection gets its 503 from the accepting thread (a small write into an
        empty socket buffer does not block) and is closed; no thread is started for it.
        """
        with self._connections_lock:
            admitted = self.active_connections < self.max_connections
            if admitted:
                self.active_connections += 1
        if not admitted:
            self.counters.rejected_connection()
            log.debug("Refused a connection from %s: %d connections open", client_address, self.max_connections)
            self._refuse_connection(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connection_ended()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve the connection, then release its place under the cap."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_ended()

    def _connection_ended(self) -> None:
        with self._connections_lock:
            self.active_connections -= 1

    def _refuse_connection(self, request: socket.socket) -> None:
        body = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE",
                           "message": f"The proxy is serving its maximum of {self.max_connections} "
                                      "connections; retry later."}).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)
            request.send(head + body)
            request.shutdown(socket.SHUT_WR)
            # Discard what the client has sent already: closing a socket with unread data
            # resets the connection, which could lose the answer before the client reads it.
            while request.recv(COPY_CHUNK):
                pass
        except OSError:
            pass
        finally:
            request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log an exception that ended a connection: quietly if the client caused it.

        A client that went away (reset, closed, timed out) or sent something unusable is not
        the proxy's error: DEBUG only. Anything else is one WARNING line; the traceback only
        when DEBUG is enabled.
        """
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, RequestError, IncompleteRequest)):
            log.debug("Client %s: %s: %s", client_address, type(exc).__name__, exc)
            return
        log.warning("Connection from %s failed: %s: %s", client_address, type(exc).__name__, exc,
                    exc_info=log.isEnabledFor(logging.DEBUG))


