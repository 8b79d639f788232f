"""One HTTP layer under every tracking request this package causes: paced, counted, 429s raised.

The requests that reach a tracking server come from many places: our own REST calls, MLflow's
client and stores, MLflow's artifact repositories (a Databricks artifact repository asks the
tracking API for signed upload URLs; a logged model is created, finalized and linked to its
run), and the Databricks SDK that MLflow 3 uses for Databricks. Pacing each of those callers
separately leaves gaps (a ``runs/get`` MLflow sends to resolve an artifact URI, an SDK retry);
so the pacing lives where all of them meet: urllib3's ``HTTPConnectionPool.urlopen``, the one
call every attempt of every one of these HTTP clients goes through (``requests`` and the
Databricks SDK are built on it; each attempt of a retry loop calls it again).

While a :class:`PacingScope` is active (:func:`paced` for the calling thread, or
:func:`paced_process` for the whole process while a replay job runs), each request to the
scope's tracking host on a tracking API path:

- takes a token of its API class (:mod:`mlflow_spark_tools.core.endpoints`) from the scope's
  limiter first, then passes the scope's fence (the replay's lease: a replayer that no longer
  holds its store sends nothing more, :class:`StopSending`);
- is sent once: urllib3's own retries are turned off for it, so no attempt escapes the
  pacing and every retry is decided by the caller's policy;
- is counted per API class and per endpoint with its status (:class:`RequestCounts`);
- when answered 429, feeds the limiter's adaptive rate and raises :class:`RateLimitedResponse`
  (with the server's ``Retry-After``), whatever library sent it, so the caller's policy (fail
  fast in a Spark task, back off and continue in the replay) decides what happens next.

Outside a scope, and for other hosts (cloud storage behind signed URLs), nothing changes.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from mlflow_spark_tools.core.endpoints import API_CLASSES, api_class_of, endpoint_label


class RateLimitedResponse(Exception):
    """The tracking server answered 429; ``retry_after`` is its ``Retry-After`` in seconds."""

    status_code = 429
    error_code = "REQUEST_LIMIT_EXCEEDED"

    def __init__(self, endpoint: str | None, retry_after: float | None) -> None:
        after = "" if retry_after is None else f"; retry after {retry_after:g} s"
        super().__init__(f"429 Too Many Requests for {endpoint or 'the tracking API'} "
                         f"(REQUEST_LIMIT_EXCEEDED{after})")
        self.endpoint = endpoint
        self.retry_after = retry_after


class StopSending(Exception):
    """Raised by a scope's fence: this process may send no more requests for the scope's work
    (a replayer whose lease on its store was lost). Never retried."""


class RequestCounts:
    """Requests and 429s per API class and per endpoint; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = dict.fromkeys(API_CLASSES, 0)
        self.throttled = dict.fromkeys(API_CLASSES, 0)
        self.endpoints: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "429s": 0})

    def record(self, api_class: str, endpoint: str | None, status: int | None) -> None:
        with self._lock:
            self.requests[api_class] += 1
            entry = self.endpoints[endpoint or "?"]
            entry["requests"] += 1
            if status == 429:
                self.throttled[api_class] += 1
                entry["429s"] += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests), "429s": dict(self.throttled),
                    "endpoints": {k: dict(v) for k, v in sorted(self.endpoints.items())}}


@dataclass
class PacingScope:
    """Where requests are paced and counted, and by what.

    Attributes:
        hosts: (host, port) of the tracking server; requests to other hosts pass untouched.
        limiter: token buckets per API class (with ``on_success`` / ``on_throttled`` feedback);
            None counts without pacing (a collector in a Spark task fails fast instead).
        counts: where every attempt is counted.
        on_attempt: also called with (api_class, status) after every attempt.
        fence: called before every request is sent (after its token); raises
            :class:`StopSending` when no more may be sent.
    """

    hosts: frozenset[tuple[str, int]]
    limiter: Any = None
    counts: RequestCounts = field(default_factory=RequestCounts)
    on_attempt: Callable[[str, int | None], None] | None = None
    fence: Callable[[], None] | None = None

    @classmethod
    def for_uri(cls, base_url: str, **kwargs: Any) -> PacingScope:
        """A scope for the server at ``base_url`` (``http(s)://host[:port]``)."""
        return cls(frozenset({host_port(base_url)}), **kwargs)

    def record(self, api_class: str, endpoint: str | None, status: int | None) -> None:
        self.counts.record(api_class, endpoint, status)
        if self.on_attempt is not None:
            self.on_attempt(api_class, status)


def host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return (parts.hostname or "").lower(), parts.port or default


_SCOPE: ContextVar[PacingScope | None] = ContextVar("mlflow_spark_tools_request_scope", default=None)
_PROCESS_SCOPES: list[PacingScope] = []
_PROCESS_LOCK = threading.Lock()
_INSTALL_LOCK = threading.Lock()
_installed = False


@contextmanager
def paced(scope: PacingScope) -> Iterator[PacingScope]:
    """Pace and count the tracking requests of the calling thread inside the block."""
    install()
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


@contextmanager
def paced_process(scope: PacingScope) -> Iterator[PacingScope]:
    """Pace and count the tracking requests of every thread of the process inside the block
    (the replay job's workers and the worker threads MLflow starts for it), unless a thread
    has a scope of its own."""
    install()
    with _PROCESS_LOCK:
        _PROCESS_SCOPES.append(scope)
    try:
        yield scope
    finally:
        with _PROCESS_LOCK:
            _PROCESS_SCOPES.remove(scope)


def current_scope(host: str, port: int) -> PacingScope | None:
    key = (host.lower(), port)
    scope = _SCOPE.get()
    if scope is not None and key in scope.hosts:
        return scope
    with _PROCESS_LOCK:
        for candidate in reversed(_PROCESS_SCOPES):
            if key in candidate.hosts:
                return candidate
    return None


def retry_after_of(exc: BaseException) -> float | None:
    """The ``Retry-After`` of a 429 anywhere in an exception chain (MLflow wraps ours)."""
    from mlflow_spark_tools.tracking.rate_limit_errors import exception_chain

    for e in exception_chain(exc):
        value = getattr(e, "retry_after", None)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (its seconds form); None when absent or not a number."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def install() -> None:
    """Put the hook into urllib3 once per process (idempotent, inert outside a scope)."""
    global _installed
    with _INSTALL_LOCK:
        if _installed:
            return
        from urllib3.connectionpool import HTTPConnectionPool
        from urllib3.util.retry import Retry

        original = HTTPConnectionPool.urlopen
        once = Retry(total=0, connect=0, read=0, redirect=0, status=0, other=0,
                     raise_on_status=False, raise_on_redirect=False)

        def urlopen(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            host, port = self.host, self.port
            path = url
            if url.startswith(("http://", "https://")):  # through an HTTP proxy: absolute URL
                host, port = host_port(url)
                path = urllib.parse.urlsplit(url).path
            scope = current_scope(host or "", port or 80)
            api_class = api_class_of(path) if scope is not None else None
            if scope is None or api_class is None:
                return original(self, method, url, *args, **kwargs)
            endpoint = endpoint_label(path)
            if scope.limiter is not None:
                scope.limiter.acquire(api_class)
            if scope.fence is not None:
                scope.fence()
            if len(args) >= 3:  # urlopen(method, url, body, headers, retries, ...)
                args = (*args[:2], once, *args[3:])
            else:
                kwargs["retries"] = once
            status = None
            try:
                response = original(self, method, url, *args, **kwargs)
                status = response.status
            finally:
                scope.record(api_class, endpoint, status)
            if status == 429:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                try:
                    response.drain_conn()
                    response.release_conn()
                except Exception:
                    pass
                if scope.limiter is not None:
                    scope.limiter.on_throttled(api_class, retry_after)
                raise RateLimitedResponse(endpoint, retry_after)
            if scope.limiter is not None and status is not None and status < 500:
                scope.limiter.on_success(api_class)
            return response

        HTTPConnectionPool.urlopen = urlopen  # type: ignore[method-assign]
        _installed = True
