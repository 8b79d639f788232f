"""HTTP on the proxy's side: its paths and limits, and reading a request's body in full
(in memory, or spooled to disk above :data:`SPOOL_MEMORY_BYTES`) before anything is forwarded."""

from __future__ import annotations

import re
import tempfile
from typing import IO

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
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection"})
NOT_FORWARDED = HOP_BY_HOP | {"expect"}
COPY_CHUNK = 1 << 16
# Longest chunk-size line and all trailer lines together that a chunked body may have.
MAX_CHUNK_LINE = 4096
MAX_TRAILER_BYTES = 64 * 1024
CONTENT_LENGTH = re.compile(r"[0-9]+")
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# After refusing a request, what the client still sends is read and discarded for this long (or
# this many bytes) before the connection is closed, so that the close does not reset the
# connection before the client has read the answer.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024**2
# http.server's own refusals (bad request line, too long headers, unknown method), as error codes.
ERROR_CODES = {400: "MALFORMED_REQUEST", 414: "RESOURCE_LIMIT_EXCEEDED", 431: "RESOURCE_LIMIT_EXCEEDED",
                501: "NOT_IMPLEMENTED"}


class RequestError(Exception):
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


def malformed(message: str) -> RequestError:
    return RequestError(400, "MALFORMED_REQUEST", message)


class IncompleteRequest(Exception):
    """The client's stream ended before the request's body was complete."""


class SpoolError(Exception):
    """The proxy could not store a request body (a full disk, say)."""


class Body:
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
            raise SpoolError(exc) from exc
        self._pieces = []

    def write(self, data: bytes) -> None:
        """Append to the body.

        Raises:
            SpoolError: the temporary file could not be written.
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
            raise SpoolError(exc) from exc

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


