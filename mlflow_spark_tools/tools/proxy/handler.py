"""One client connection of the proxy: read the request, admit or refuse it, forward it and
relay the answer."""

from __future__ import annotations

import http.client
import json
import logging
import math
import socket
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from mlflow_spark_tools.core.endpoints import api_class_of, endpoint_label
from mlflow_spark_tools.tools.proxy.counters import ProxyCounters
from mlflow_spark_tools.tools.proxy.protocol import (
    CHUNK_SIZE,
    CONTENT_LENGTH,
    COPY_CHUNK,
    ERROR_CODES,
    HOP_BY_HOP,
    LINGER_BYTES,
    LINGER_SECONDS,
    MAX_CHUNK_LINE,
    MAX_TRAILER_BYTES,
    NOT_FORWARDED,
    RATE_LIMIT_MESSAGE,
    RESET_PATH,
    SPOOL_MEMORY_BYTES,
    STATS_PATH,
    Body,
    IncompleteRequest,
    RequestError,
    SpoolError,
    malformed,
)

log = logging.getLogger(__name__)


class ProxyServer(Protocol):
    """What a connection's handler needs from the proxy server
    (:class:`~mlflow_spark_tools.tools.proxy.server.RateLimitProxy`): its limits and counters,
    and where and how to forward."""

    counters: ProxyCounters
    latency: float
    max_body_bytes: int
    idle_timeout: float
    upstream: urllib.parse.SplitResult
    upstream_host: str
    upstream_authorization: str | None

    def stats(self) -> dict[str, Any]: ...

    def reset(self) -> None: ...

    def admit(self, api_class: str | None, request: str = "") -> float: ...

    def upstream_for(self, path: str) -> urllib.parse.SplitResult: ...

    def new_upstream_connection(
            self, upstream: urllib.parse.SplitResult | None = None) -> http.client.HTTPConnection: ...


def handler_class(proxy: ProxyServer) -> type[BaseHTTPRequestHandler]:
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
    proxy: ProxyServer
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
        except RequestError as exc:
            self.proxy.counters.refused_request(exc.status)
            log.debug("Refused %s %s from %s: %s", self.command, self.path, self.address_string(), exc)
            return self._refuse(exc.status, exc.error_code, exc.message)
        except (IncompleteRequest, ConnectionError, TimeoutError) as exc:
            # The client went away or stalled: nothing is forwarded, the connection is closed.
            self.proxy.counters.incomplete_request()
            log.debug("Incomplete %s %s from %s: %s", self.command, self.path, self.address_string(),
                      exc or type(exc).__name__)
            self.close_connection = True
            return
        except SpoolError as exc:
            log.warning("Could not store a request body: %s", exc)
            return self._refuse(503, "TEMPORARILY_UNAVAILABLE",
                                "The proxy could not store the request body; retry later.")
        try:
            self._dispatch(body)
        finally:
            body.close()

    def _dispatch(self, body: Body) -> None:
        """Answer the proxy's own paths, refuse what the rate limit does not admit, forward
        the rest."""
        path = self.path.split("?", 1)[0]
        if path == STATS_PATH and self.command == "GET":
            return self._send_json(200, self.proxy.stats())
        if path == RESET_PATH and self.command == "POST":
            self.proxy.reset()
            return self._send_json(200, {"reset": True})

        api_class = api_class_of(path)
        wait = self.proxy.admit(api_class, f"{self.command} {path}")
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
            RequestError: 400 for invalid framing, 413 for a Content-Length over the limit.
        """
        encodings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        if encodings:
            if lengths:
                raise malformed("A request may not have both Content-Length and Transfer-Encoding.")
            coding = ",".join(encodings).strip().lower()
            if coding != "chunked":
                raise malformed(f"Unsupported Transfer-Encoding {coding[:100]!r}: only chunked is.")
            return "chunked", 0
        if not lengths:
            return "none", 0
        values = {v.strip() for v in lengths}
        if len(values) != 1:
            raise malformed("The request has several different Content-Length headers.")
        value = values.pop()
        if not CONTENT_LENGTH.fullmatch(value):
            raise malformed(f"Invalid Content-Length {value[:100]!r}.")
        length = int(value) if len(value) <= 18 else sys.maxsize
        if length > self.proxy.max_body_bytes:
            raise self._too_large()
        return "length", length

    def _too_large(self) -> RequestError:
        return RequestError(413, "RESOURCE_LIMIT_EXCEEDED",
                             f"The request body is larger than the proxy's limit of "
                             f"{self.proxy.max_body_bytes} bytes.")

    def _read_body(self) -> Body:
        """Read the whole body: exactly Content-Length bytes, or the chunked body through its
        last chunk and trailers; in memory if small, else in a temporary file.

        Raises:
            RequestError: invalid framing (400) or a body over the limit (413).
            IncompleteRequest: the client's stream ended before the body did.
            SpoolError: the body could not be written to disk.
            TimeoutError: the client stalled for the idle timeout.
            ConnectionError: the client reset the connection.
        """
        kind, length = self._framing()
        body = Body(SPOOL_MEMORY_BYTES, expected=length if kind == "length" else None)
        if kind == "none":
            return body
        if kind == "length" and length <= SPOOL_MEMORY_BYTES:
            # the common case, a small JSON body: one read, kept as it is
            data = self.rfile.read(length)
            if len(data) < length:
                raise IncompleteRequest(f"the stream ended {length - len(data)} bytes before the end of the body")
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

    def _copy(self, length: int, body: Body) -> None:
        """Move exactly ``length`` bytes of the client's stream into ``body``."""
        remaining = length
        while remaining:
            data = self.rfile.read(min(COPY_CHUNK, remaining))
            if not data:
                raise IncompleteRequest(f"the stream ended {remaining} bytes before the end of the body")
            body.write(data)
            remaining -= len(data)

    def _read_chunked(self, body: Body) -> None:
        """Read a chunked body (RFC 9112 7.1) into ``body``, through its trailers (dropped)."""
        while True:
            line = self._read_line(MAX_CHUNK_LINE, "chunk-size line")
            size_text = line.split(b";", 1)[0].strip()
            if not CHUNK_SIZE.fullmatch(size_text):
                raise malformed(f"Invalid chunk size {size_text[:100]!r}.")
            size = int(size_text, 16)
            if size == 0:
                break
            if body.length + size > self.proxy.max_body_bytes:
                raise self._too_large()
            self._copy(size, body)
            if self._read_line(MAX_CHUNK_LINE, "chunk end").strip(b"\r\n"):
                raise malformed("A chunk is longer than its chunk size.")
        trailers = 0
        while True:
            line = self._read_line(MAX_TRAILER_BYTES, "trailer")
            trailers += len(line)
            if trailers > MAX_TRAILER_BYTES:
                raise malformed("The chunked body's trailers are too long.")
            if line in (b"\r\n", b"\n"):
                break

    def _read_line(self, limit: int, what: str) -> bytes:
        line = self.rfile.readline(limit + 1)
        if len(line) > limit:
            raise malformed(f"The {what} is too long.")
        if not line.endswith(b"\n"):
            raise IncompleteRequest(f"the stream ended in a {what}")
        return line

    def _refuse(self, status: int, error_code: str, message: str) -> None:
        """Answer with an error and close the connection, reading and discarding (for a short
        while) what the client still sends so that it gets to read the answer."""
        self.close_connection = True
        try:
            self._send_json(status, {"error_code": error_code, "message": message}, {"Connection": "close"})
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            discarded = 0
            while discarded < LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                data = self.connection.recv(COPY_CHUNK)
                if not data:
                    break
                discarded += len(data)
        except OSError:
            pass

    def handle_expect_100(self) -> bool:
        """Refuse a body that is malformed or over the limit before the client sends it."""
        try:
            self._framing()
        except RequestError as exc:
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
        self._send_json(code, {"error_code": ERROR_CODES.get(code, "BAD_REQUEST"), "message": message or short},
                        {"Connection": "close"})

    # ---- forwarding --------------------------------------------------------------------

    def _forward(self, body: Body) -> None:
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in NOT_FORWARDED and k.lower() != "content-length"}
        upstream = self.proxy.upstream_for(self.path.split("?", 1)[0])
        headers["Host"] = upstream.netloc
        authorization = self.proxy.upstream_authorization if upstream is self.proxy.upstream else None
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
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
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
                chunk = response.read1(COPY_CHUNK if remaining is None else min(COPY_CHUNK, remaining))
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

    def _upstream_request(self, target: str, body: Body, headers: dict[str, str],
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
