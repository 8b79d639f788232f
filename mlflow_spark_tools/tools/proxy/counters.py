"""What the proxy counts: requests and 429s per API class and endpoint, and the requests and
connections its limits refused."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from mlflow_spark_tools.config import API_CLASSES


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


