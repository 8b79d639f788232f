"""A reverse proxy for the MLflow REST API that enforces Databricks-style rate limits.

Point a pipeline's ``MLFLOW_TRACKING_URI`` at it to see how the pipeline behaves under a
workspace's limits: each API class (see :mod:`mlflow_spark_tools.core.endpoints`) has a token bucket
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

from mlflow_spark_tools.tools.proxy.counters import ProxyCounters
from mlflow_spark_tools.tools.proxy.protocol import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    RESET_PATH,
    SPOOL_MEMORY_BYTES,
    STATS_PATH,
)
from mlflow_spark_tools.tools.proxy.server import RateLimitProxy

__all__ = ["DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_CONNECTIONS", "RESET_PATH", "SPOOL_MEMORY_BYTES",
           "STATS_PATH", "ProxyCounters", "RateLimitProxy"]
