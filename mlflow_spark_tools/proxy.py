"""A reverse proxy for the MLflow REST API that enforces Databricks-style rate limits.

Point a pipeline's ``MLFLOW_TRACKING_URI`` at it to see how the pipeline behaves under a
workspace's limits: each API class (see :mod:`mlflow_spark_tools.endpoints`) has a token bucket
holding up to one second of its limit; a request that finds its bucket empty is answered at once
with HTTP 429, Databricks' error body and ``Retry-After``, and is not forwarded. Requests outside
the tracking API (health checks, the UI) pass unlimited. An optional latency is added to every
forwarded request, as a remote workspace would.

``GET /__proxy/stats`` returns the counters (requests and 429s per class and per endpoint, and the
requests and connections refused by the limits below) as JSON; ``POST /__proxy/reset`` zeroes
them and refills the buckets.

Limits, so that one client (or a broken one) cannot exhaust the machine the proxy runs on:

- Request bodies: a body is read in full before anything is forwarded, so an incomplete request
  (the client's stream ends or stalls before ``Content-Length`` bytes, or before a chunked
  body's last chunk) never reaches the tracking server: the connection is closed and counted
  in ``incomplete_requests``. Bodies up to :data:`SPOOL_MEMORY_BYTES` are held in memory,
  larger ones in an anonymous temporary file (under ``TMPDIR``) that is forwarded from disk, so
  memory stays bounded whatever the upload's size. A body over ``max_body_bytes`` is answered
  413 without being read, and the connection closed.
- Framing: an invalid or negative ``Content-Length``, several different ones, ``Content-Length``
  together with ``Transfer-Encoding``, a ``Transfer-Encoding`` other than ``chunked`` or an
  invalid chunk is answered 400 (counted in ``malformed_requests``), and the connection closed.
- Connections: one that stays silent (idle between requests, or stalled in the middle of one)
  for ``idle_timeout`` seconds is closed; at most ``max_connections`` are served at a time (one
  thread each), one more is answered 503 and closed without starting a thread.
- Errors answered by the proxy itself carry a JSON body ``{"error_code": ..., "message": ...}``
  as the tracking server's do. Errors caused by clients (resets, timeouts, malformed input) are
  logged at DEBUG only; anything unexpected as one WARNING line (the traceback only at DEBUG).

Credentials in the upstream URL (``http://user:password@host:port``) are sent as HTTP Basic
authentication on every forwarded request without an ``Authorization`` header of its own; the
proxy never shows them (logs, stats, error bodies and ``repr`` name the upstream as host:port).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

from mlflow_spark_tools.config import API_CLASSES, RateLimitProfile
from mlflow_spark_tools.endpoints import api_class_of, endpoint_label
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.ratelimit import TokenBucket

log = logging.getLogger(__name__)

STATS_PATH = "/__proxy/stats"
RESET_PATH = "/__proxy/reset"
RATE_LIMIT_MESSAGE = "The request was rate limited: too many requests for this API. Retry after the given delay."

#: Default ``max_body_bytes``: 2 GiB. MLflow's proxied artifact uploads (``PUT
#: /api/2.0/mlflow-artifacts/artifacts/...``) send a whole file in one request, so the limit
#: must let model files through; bodies that large are spooled to disk, so the limit bounds
#: the disk a single request may take, not memory. Raise it for larger artifacts.
DEFAULT_MAX_BODY_BYTES = 2 * 1024**3
#: Default ``idle_timeout`` in seconds: far longer than any pause of a working client between
#: two reads or writes, short enough that abandoned connections do not pile up.
DEFAULT_IDLE_TIMEOUT = 60.0
#: Default ``max_connections``: many more than the clients a benchmark or a pipeline's executors
#: open, few enough that their threads (and in-memory bodies) stay cheap.
DEFAULT_MAX_CONNECTIONS = 256
#: Bodies up to this size stay in memory (no temporary file for ordinary REST calls, whose JSON
#: bodies are far smaller); larger ones go to disk. With the default connection cap the bodies in
#: memory take at most 256 MiB.
SPOOL_MEMORY_BYTES = 1024**2

# Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded; nor is Expect: the proxy has read the
# body already and sends it at once.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection"})
_NOT_FORWARDED = _HOP_BY_HOP | {"expect"}
_COPY_CHUNK = 1 << 16
# Longest chunk-size line and all trailer lines together that a chunked body may have.
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_BYTES = 64 * 1024
_CONTENT_LENGTH = re.compile(r"[0-9]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# After refusing a request, what the client still sends is read and discarded for this long (or
# this many bytes) before the connection is closed, so that the close does not reset the
# connection before the client has read the answer.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1024**2
# http.server's own refusals (bad request line, too long headers, unknown method), as error codes.
_ERROR_CODES = {400: "MALFORMED_REQUEST", 414: "RESOURCE_LIMIT_EXCEEDED", 431: "RESOURCE_LIMIT_EXCEEDED",
                501: "NOT_IMPLEMENTED"}


class ProxyCounters:
    """Requests and 429s per API class and per endpoint, and refused requests; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self.started = time.time()
            self.requests = dict.fromkeys(API_CLASSES, 0)
            self.rate_limited = dict.fromkeys(API_CLASSES, 0)
            self.endpoints: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "rate_limited": 0})
            self.unlimited = 0
            self.upstream_errors = 0
            self.incomplete = 0
            self.malformed = 0
            self.oversized = 0
            self.spooled = 0
            self.rejected_connections = 0

    def count(self, api_class: str | None, endpoint: str | None, limited: bool) -> None:
        """Count a complete request, and whether it was answered 429."""
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
        """Count a request the tracking server did not answer (in full)."""
        with self._lock:
            self.upstream_errors += 1

    def incomplete_request(self) -> None:
        """Count a request whose body the client did not send in full."""
        with self._lock:
            self.incomplete += 1

    def refused_request(self, status: int) -> None:
        """Count a request refused for its framing (400) or its size (413)."""
        with self._lock:
            if status == 413:
                self.oversized += 1
            else:
                self.malformed += 1

    def spooled_request(self) -> None:
        """Count a request whose body was too large to keep in memory."""
        with self._lock:
            self.spooled += 1

    def rejected_connection(self) -> None:
        """Count a connection refused because ``max_connections`` were open."""
        with self._lock:
            self.rejected_connections += 1

    def as_dict(self) -> dict[str, Any]:
        """All counters, as ``GET /__proxy/stats`` returns them."""
        with self._lock:
            return {
                "requests": dict(self.requests),
                "rate_limited": dict(self.rate_limited),
                "endpoints": {k: dict(v) for k, v in sorted(self.endpoints.items())},
                "unlimited_requests": self.unlimited,
                "upstream_errors": self.upstream_errors,
                "incomplete_requests": self.incomplete,
                "malformed_requests": self.malformed,
                "oversized_requests": self.oversized,
                "spooled_requests": self.spooled,
                "rejected_connections": self.rejected_connections,
                "seconds": round(time.time() - self.started, 3),
            }


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
            raise UsageError(f"--upstream has an invalid port: {_redacted(upstream)!r}.") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise UsageError("--upstream must be an http(s) URL such as http://127.0.0.1:5000, "
                             f"not {_redacted(upstream)!r}.")
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
        self._authorization: str | None = None
        if parsed.username is not None or parsed.password is not None:
            user = urllib.parse.unquote(parsed.username or "")
            password = urllib.parse.unquote(parsed.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._authorization = f"Basic {token}"
        # Paths served by another upstream under the same limits, longest prefix first (a
        # workspace stand-in that answers the endpoints the tracking server has not).
        self.routes: list[tuple[str, urllib.parse.SplitResult]] = []
        for prefix, url in sorted((routes or {}).items(), key=lambda item: -len(item[0])):
            route = urllib.parse.urlsplit(url)
            if route.scheme not in ("http", "https") or not route.hostname or route.username:
                raise UsageError(f"A route's upstream must be an http(s) URL without credentials, not {_redacted(url)!r}.")
            self.routes.append((prefix, route._replace(query="", fragment="")))
        self.profile = profile
        self.latency = latency_ms / 1000.0
        self.upstream_timeout = upstream_timeout
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.counters = ProxyCounters()
        self.buckets = self._new_buckets()
        self._server = _Server((host, port), _handler_class(self), counters=self.counters,
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
        return f"http://{self._server.server_address[0]}:{self.port}"

    def stats(self) -> dict[str, Any]:
        """The counters, and the client connections open now."""
        return {**self.counters.as_dict(), "active_connections": self._server.active_connections}

    def reset(self) -> None:
        """Zero the counters and refill the buckets."""
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
        """Serve in a daemon thread; returns the proxy."""
        self._thread = threading.Thread(target=self.serve, name="rate-limit-proxy", daemon=True)
        self._thread.start()
        return self

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
        for prefix, route in self.routes:
            if path.startswith(prefix):
                return route
        return self.upstream

    def new_upstream_connection(self, upstream: urllib.parse.SplitResult | None = None) -> http.client.HTTPConnection:
        """A connection to the tracking server, or another upstream (not connected yet)."""
        upstream = self.upstream if upstream is None else upstream
        cls = http.client.HTTPSConnection if upstream.scheme == "https" else http.client.HTTPConnection
        default = 443 if upstream.scheme == "https" else 80
        return cls(upstream.hostname, upstream.port or default, timeout=self.upstream_timeout,
                   blocksize=_COPY_CHUNK)


def _redacted(url: str) -> str:
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
            while request.recv(_COPY_CHUNK):
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
        if isinstance(exc, (ConnectionError, TimeoutError, _RequestError, _IncompleteRequest)):
            log.debug("Client %s: %s: %s", client_address, type(exc).__name__, exc)
            return
        log.warning("Connection from %s failed: %s: %s", client_address, type(exc).__name__, exc,
                    exc_info=log.isEnabledFor(logging.DEBUG))


class _RequestError(Exception):
    """A request the proxy answers itself with an error and then closes the connection on.

    Args:
        status: the HTTP status.
        error_code: the ``error_code`` of the JSON body.
        message: the ``message`` of the JSON body.
    """

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _malformed(message: str) -> _RequestError:
    return _RequestError(400, "MALFORMED_REQUEST", message)


class _IncompleteRequest(Exception):
    """The client's stream ended before the request's body was complete."""


class _SpoolError(Exception):
    """The proxy could not store a request body (a full disk, say)."""


class _Body:
    """A request body read in full: bytes in memory, or an anonymous temporary file once it
    grows over ``memory_limit`` bytes.

    Args:
        memory_limit: the most bytes kept in memory.
        expected: the body's length if known (``Content-Length``); over the limit, the body goes
            to a file from the start.
    """

    def __init__(self, memory_limit: int, expected: int | None = None) -> None:
        self._memory_limit = memory_limit
        self._pieces: list[bytes] = []
        self._file: IO[bytes] | None = None
        self.length = 0
        if expected is not None and expected > memory_limit:
            self._to_disk()

    @property
    def on_disk(self) -> bool:
        """Whether the body went to a temporary file."""
        return self._file is not None

    def _to_disk(self) -> None:
        try:
            self._file = tempfile.TemporaryFile(prefix="rate-limit-proxy-")
            for piece in self._pieces:
                self._file.write(piece)
        except OSError as exc:
            raise _SpoolError(exc) from exc
        self._pieces = []

    def write(self, data: bytes) -> None:
        """Append to the body.

        Raises:
            _SpoolError: the temporary file could not be written.
        """
        self.length += len(data)
        if self._file is None and self.length > self._memory_limit:
            self._to_disk()
        if self._file is None:
            self._pieces.append(data)
            return
        try:
            self._file.write(data)
        except OSError as exc:
            raise _SpoolError(exc) from exc

    def payload(self) -> bytes | IO[bytes] | None:
        """What ``http.client`` sends: bytes, the file rewound to its start, or None if empty."""
        if self._file is not None:
            self._file.seek(0)
            return self._file
        return b"".join(self._pieces) if self._pieces else None

    def close(self) -> None:
        """Delete the temporary file, if any."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _handler_class(proxy: RateLimitProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_ProxyHandler):
        pass

    Handler.proxy = proxy
    Handler.timeout = proxy.idle_timeout
    return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    """One client connection: keeps its own upstream connection for keep-alive.

    ``timeout`` (the idle timeout) applies to every read and write on the client's socket.
    """

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the client's
    # delayed ACK would hold every response back by about 40 ms.
    disable_nagle_algorithm = True
    proxy: RateLimitProxy
    _upstream: http.client.HTTPConnection | None = None
    _upstream_netloc: str | None = None

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
        """Read the request's whole body, then answer or forward it; a request refused for its
        framing or size, or one the client did not finish, ends the connection."""
        try:
            body = self._read_body()
        except _RequestError as exc:
            self.proxy.counters.refused_request(exc.status)
            log.debug("Refused %s %s from %s: %s", self.command, self.path, self.address_string(), exc)
            return self._refuse(exc.status, exc.error_code, exc.message)
        except (_IncompleteRequest, ConnectionError, TimeoutError) as exc:
            # The client went away or stalled: nothing is forwarded, the connection is closed.
            self.proxy.counters.incomplete_request()
            log.debug("Incomplete %s %s from %s: %s", self.command, self.path, self.address_string(),
                      exc or type(exc).__name__)
            self.close_connection = True
            return
        except _SpoolError as exc:
            log.warning("Could not store a request body: %s", exc)
            return self._refuse(503, "TEMPORARILY_UNAVAILABLE",
                                "The proxy could not store the request body; retry later.")
        try:
            self._dispatch(body)
        finally:
            body.close()

    def _dispatch(self, body: _Body) -> None:
        """Answer the proxy's own paths, refuse what the rate limit does not admit, forward
        the rest."""
        path = self.path.split("?", 1)[0]
        if path == STATS_PATH and self.command == "GET":
            return self._send_json(200, self.proxy.stats())
        if path == RESET_PATH and self.command == "POST":
            self.proxy.reset()
            return self._send_json(200, {"reset": True})

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

    def _framing(self) -> tuple[str, int]:
        """How the request's body is delimited: ``("length", n)``, ``("chunked", 0)`` or
        ``("none", 0)``.

        Raises:
            _RequestError: 400 for invalid framing, 413 for a Content-Length over the limit.
        """
        encodings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        if encodings:
            if lengths:
                raise _malformed("A request may not have both Content-Length and Transfer-Encoding.")
            coding = ",".join(encodings).strip().lower()
            if coding != "chunked":
                raise _malformed(f"Unsupported Transfer-Encoding {coding[:100]!r}: only chunked is.")
            return "chunked", 0
        if not lengths:
            return "none", 0
        values = {v.strip() for v in lengths}
        if len(values) != 1:
            raise _malformed("The request has several different Content-Length headers.")
        value = values.pop()
        if not _CONTENT_LENGTH.fullmatch(value):
            raise _malformed(f"Invalid Content-Length {value[:100]!r}.")
        length = int(value) if len(value) <= 18 else sys.maxsize
        if length > self.proxy.max_body_bytes:
            raise self._too_large()
        return "length", length

    def _too_large(self) -> _RequestError:
        return _RequestError(413, "RESOURCE_LIMIT_EXCEEDED",
                             f"The request body is larger than the proxy's limit of "
                             f"{self.proxy.max_body_bytes} bytes.")

    def _read_body(self) -> _Body:
        """Read the whole body: exactly Content-Length bytes, or the chunked body through its
        last chunk and trailers; in memory if small, else in a temporary file.

        Raises:
            _RequestError: invalid framing (400) or a body over the limit (413).
            _IncompleteRequest: the client's stream ended before the body did.
            _SpoolError: the body could not be written to disk.
            TimeoutError: the client stalled for the idle timeout.
            ConnectionError: the client reset the connection.
        """
        kind, length = self._framing()
        body = _Body(SPOOL_MEMORY_BYTES, expected=length if kind == "length" else None)
        if kind == "none":
            return body
        if kind == "length" and length <= SPOOL_MEMORY_BYTES:
            # the common case, a small JSON body: one read, kept as it is
            data = self.rfile.read(length)
            if len(data) < length:
                raise _IncompleteRequest(f"the stream ended {length - len(data)} bytes before the end of the body")
            body.write(data)
            return body
        try:
            if kind == "length":
                self._copy(length, body)
            else:
                self._read_chunked(body)
        except BaseException:
            body.close()
            raise
        if body.on_disk:
            self.proxy.counters.spooled_request()
        return body

    def _copy(self, length: int, body: _Body) -> None:
        """Move exactly ``length`` bytes of the client's stream into ``body``."""
        remaining = length
        while remaining:
            data = self.rfile.read(min(_COPY_CHUNK, remaining))
            if not data:
                raise _IncompleteRequest(f"the stream ended {remaining} bytes before the end of the body")
            body.write(data)
            remaining -= len(data)

    def _read_chunked(self, body: _Body) -> None:
        """Read a chunked body (RFC 9112 7.1) into ``body``, through its trailers (dropped)."""
        while True:
            line = self._read_line(_MAX_CHUNK_LINE, "chunk-size line")
            size_text = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_text):
                raise _malformed(f"Invalid chunk size {size_text[:100]!r}.")
            size = int(size_text, 16)
            if size == 0:
                break
            if body.length + size > self.proxy.max_body_bytes:
                raise self._too_large()
            self._copy(size, body)
            if self._read_line(_MAX_CHUNK_LINE, "chunk end").strip(b"\r\n"):
                raise _malformed("A chunk is longer than its chunk size.")
        trailers = 0
        while True:
            line = self._read_line(_MAX_TRAILER_BYTES, "trailer")
            trailers += len(line)
            if trailers > _MAX_TRAILER_BYTES:
                raise _malformed("The chunked body's trailers are too long.")
            if line in (b"\r\n", b"\n"):
                break

    def _read_line(self, limit: int, what: str) -> bytes:
        line = self.rfile.readline(limit + 1)
        if len(line) > limit:
            raise _malformed(f"The {what} is too long.")
        if not line.endswith(b"\n"):
            raise _IncompleteRequest(f"the stream ended in a {what}")
        return line

    def _refuse(self, status: int, error_code: str, message: str) -> None:
        """Answer with an error and close the connection, reading and discarding (for a short
        while) what the client still sends so that it gets to read the answer."""
        self.close_connection = True
        try:
            self._send_json(status, {"error_code": error_code, "message": message}, {"Connection": "close"})
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            discarded = 0
            while discarded < _LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                data = self.connection.recv(_COPY_CHUNK)
                if not data:
                    break
                discarded += len(data)
        except OSError:
            pass

    def handle_expect_100(self) -> bool:
        """Refuse a body that is malformed or over the limit before the client sends it."""
        try:
            self._framing()
        except _RequestError as exc:
            self.proxy.counters.refused_request(exc.status)
            self._refuse(exc.status, exc.error_code, exc.message)
            return False
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, too long headers, unsupported method)
        with a JSON body as the proxy's other errors, and the connection closed; a client
        error counts as a malformed request."""
        short = self.responses.get(code, ("Error", ""))[0]
        if 400 <= code < 500:
            self.proxy.counters.refused_request(code)
        self.log_error("code %d, message %s", code, message or short)
        self.close_connection = True
        self._send_json(code, {"error_code": _ERROR_CODES.get(code, "BAD_REQUEST"), "message": message or short},
                        {"Connection": "close"})

    # ---- forwarding --------------------------------------------------------------------

    def _forward(self, body: _Body) -> None:
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in _NOT_FORWARDED and k.lower() != "content-length"}
        upstream = self.proxy.upstream_for(self.path.split("?", 1)[0])
        headers["Host"] = upstream.netloc
        authorization = self.proxy._authorization if upstream is self.proxy.upstream else None
        if authorization is not None and not any(k.lower() == "authorization" for k in headers):
            headers["Authorization"] = authorization
        if body.length or self.command not in ("GET", "HEAD", "DELETE"):
            headers["Content-Length"] = str(body.length)
        target = upstream.path.rstrip("/") + self.path
        if self._upstream is not None and self._upstream_netloc != upstream.netloc:
            self._drop_upstream()  # this connection's last request went to another upstream
        try:
            response = self._upstream_request(target, body, headers, upstream)
        except (OSError, http.client.HTTPException) as exc:
            self.proxy.counters.upstream_error()
            log.warning("Upstream %s failed: %s", self.proxy.upstream_host, exc)
            return self._send_json(502, {"error_code": "TEMPORARILY_UNAVAILABLE",
                                         "message": f"The upstream tracking server failed: {exc}"})
        try:
            self._relay(response)
        finally:
            response.close()
            if response.will_close:
                self._drop_upstream()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """Send the upstream's response to the client as it arrives (never all of it in memory):
        with its Content-Length if it has one, else chunked (or, to an HTTP/1.0 client, until
        the connection closes)."""
        length = response.getheader("Content-Length")
        no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        chunked = False
        if no_body:
            if length is not None and response.status != 204:
                self.send_header("Content-Length", length)
        elif length is not None:
            self.send_header("Content-Length", length)
        elif self.request_version == "HTTP/1.1":
            chunked = True
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if no_body:
            return
        remaining = int(length) if length is not None else None
        while remaining is None or remaining > 0:
            try:
                chunk = response.read1(_COPY_CHUNK if remaining is None else min(_COPY_CHUNK, remaining))
            except (OSError, http.client.HTTPException) as exc:
                return self._cut_short(str(exc) or type(exc).__name__)
            if not chunk:
                if remaining:
                    return self._cut_short(f"the response ended {remaining} bytes early")
                break
            if chunked:
                self.wfile.write(b"%X\r\n%s\r\n" % (len(chunk), chunk))
            else:
                self.wfile.write(chunk)
            if remaining is not None:
                remaining -= len(chunk)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _cut_short(self, reason: str) -> None:
        """The upstream's response broke off: close the client's connection without ending the
        response properly, so that the client sees it as incomplete."""
        self.proxy.counters.upstream_error()
        log.warning("Upstream %s failed during a response: %s", self.proxy.upstream_host, reason)
        self.close_connection = True
        self._drop_upstream()

    def _upstream_request(self, target: str, body: _Body, headers: dict[str, str],
                          upstream: urllib.parse.SplitResult) -> http.client.HTTPResponse:
        """Send on the kept upstream connection; if the upstream closed it while it was idle,
        send once more on a new one (nothing was processed on a connection closed before the
        request reached it)."""
        reused = self._upstream is not None
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = self.proxy.new_upstream_connection(upstream)
                self._upstream_netloc = upstream.netloc
            try:
                self._upstream.request(self.command, target, body=body.payload(), headers=headers)
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
