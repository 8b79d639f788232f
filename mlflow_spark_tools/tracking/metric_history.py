"""Reading metric histories (every logged point) of many runs in few requests.

MLflow servers answer ``GET /ajax-api/2.0/mlflow/metrics/get-history-bulk`` with the points of
one key for up to 100 runs; the answer holds at most 25,000 points, ordered by run id, and is
cut without a word where the limit falls. A cut answer is recognised by its length: the runs
before the last one in it are complete, the last one and those after it are asked again, and a
single run with more points than one answer holds is read with the paginated per-run endpoint.
The number of runs per request adapts to the points per run seen so far, so that an answer is
rarely cut.

Databricks documents only ``GET /api/2.0/mlflow/metrics/get-history`` (one run and key, pages
of up to 25,000 points). The bulk endpoint is tried first; a server that answers it with "no
such endpoint" is remembered (per process) and read run by run. Both go through the retrying
client: paced by the ``other`` class of the rate-limit profile and retried by the
``get_metric_history`` policy.

A tracking URI that is not served over REST (``sqlite:``, a file store) is read through the
store's own ``get_metric_history``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow_spark_tools.core.private_apis import tracking_store
from mlflow_spark_tools.core.redaction import redact_uri
from mlflow_spark_tools.errors import TrackingServerError
from mlflow_spark_tools.tracking.pages import follow_pages
from mlflow_spark_tools.tracking.rate_limit_errors import endpoint_missing, error_summary

log = logging.getLogger(__name__)

BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
HISTORY_ENDPOINT = "/api/2.0/mlflow/metrics/get-history"
MAX_RUNS_PER_BULK = 100
BULK_MAX_POINTS = 25000
PAGE_POINTS = 25000
OPERATION = "get_metric_history"
# Fields of a point besides run id, key, step, timestamp and value, as MLflow 3 servers send them.
LINK_FIELDS = ("model_id", "dataset_name", "dataset_digest")

_HOSTS_WITHOUT_BULK: set[str] = set()
_HOSTS_WITH_BULK: set[str] = set()
_HOSTS_LOCK = threading.Lock()
_PROBE_LOCK = threading.Lock()  # the first bulk request to a host goes alone: asked once


@dataclass
class HistoryCounts:
    """What reading histories cost and found; thread-safe updates through :meth:`add`."""

    bulk_requests: int = 0
    run_requests: int = 0
    points: int = 0
    cut_answers: int = 0
    truncated: list[tuple[str, str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def note_truncated(self, run_id: str, key: str, kept: int) -> None:
        with self._lock:
            self.truncated.append((run_id, key, kept))

    @property
    def requests(self) -> int:
        return self.bulk_requests + self.run_requests


Points = list[dict[str, Any]]


class MetricHistoryReader:
    """Reads every point of given metric keys of given runs.

    Args:
        client: a :class:`~mlflow_spark_tools.tracking.client.RetryingClient` of the server.
        max_points: the most points kept per run and key; a history longer than that keeps
            its first ``max_points`` points (in the server's order) and is listed in
            ``counts.truncated``, never cut silently. None keeps every point.
    """

    def __init__(self, client: Any, max_points: int | None = None) -> None:
        self.client = client
        self.max_points = max_points
        self.counts = HistoryCounts()
        self._store = tracking_store(client.tracking_uri)
        creds = getattr(self._store, "get_host_creds", None)
        self._creds: Callable[[], Any] | None = creds
        self._host = creds().host if creds is not None else None
        self._points_per_run: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def uses_bulk(self) -> bool:
        """Whether histories are read many runs per request (until the server says otherwise)."""
        with _HOSTS_LOCK:
            return self._creds is not None and self._host not in _HOSTS_WITHOUT_BULK

    # ---- planning ------------------------------------------------------------------------

    def runs_per_request(self, key: str) -> int:
        """How many runs one bulk request of ``key`` asks for: 100, fewer when the runs read
        so far had so many points that 100 runs would not fit in one answer."""
        with self._lock:
            per_run = self._points_per_run.get(key)
        if not per_run:
            return MAX_RUNS_PER_BULK
        return max(1, min(MAX_RUNS_PER_BULK, int(BULK_MAX_POINTS * 0.8 / per_run)))

    def _learn(self, key: str, runs: int, points: int) -> None:
        if runs <= 0:
            return
        with self._lock:
            old = self._points_per_run.get(key)
            seen = points / runs
            self._points_per_run[key] = seen if old is None else max(seen, 0.5 * old + 0.5 * seen)

    # ---- reading ---------------------------------------------------------------------------

    def read(self, key: str, run_ids: Sequence[str]) -> Iterator[Points]:
        """Every point of ``key`` of each run, as lists of points (``run_id``, ``key``,
        ``step``, ``timestamp``, ``value`` and, where the server sends them, the link fields),
        one list per request answered; a run's points are all in one list, in the server's
        order."""
        pending = sorted(set(run_ids))
        while pending:
            if not self.uses_bulk:
                for run_id in pending:
                    yield self.read_run(run_id, key)
                return
            chunk, pending = pending[: self.runs_per_request(key)], pending[self.runs_per_request(key):]
            answer = self._bulk(key, chunk)
            if answer is None:  # no bulk endpoint: this chunk and the rest run by run
                pending = chunk + pending
                continue
            if len(answer) < BULK_MAX_POINTS:
                self._learn(key, len(chunk), len(answer))
                yield self._limited_runs(key, answer)
                continue
            # Cut at the limit: the runs before the last one in the answer are complete.
            self.counts.add(cut_answers=1)
            last = answer[-1]["run_id"]
            complete = [p for p in answer if p["run_id"] != last]
            done = {p["run_id"] for p in complete}
            self._learn(key, max(1, len(done)), len(complete))
            if complete:
                yield self._limited_runs(key, complete)
            else:  # one run fills a whole answer: page through it alone
                yield self.read_run(last, key)
                done.add(last)
            pending = [r for r in chunk if r not in done] + pending

    def _bulk(self, key: str, run_ids: list[str]) -> Points | None:
        """One bulk request; None when the server has no such endpoint. Until a server has
        answered one, bulk requests to it go one at a time, so that a server without the
        endpoint is asked once."""
        with _HOSTS_LOCK:
            known = self._host in _HOSTS_WITH_BULK
        if known:
            return self._bulk_request(key, run_ids)
        with _PROBE_LOCK:
            with _HOSTS_LOCK:
                if self._host in _HOSTS_WITHOUT_BULK:
                    return None
            points = self._bulk_request(key, run_ids, probing=True)
            if points is not None:
                with _HOSTS_LOCK:
                    _HOSTS_WITH_BULK.add(self._host or "")
            return points

    def _bulk_request(self, key: str, run_ids: list[str], probing: bool = False) -> Points | None:
        """One bulk request. The first one to a server (``probing``) also takes an answer that
        is not the endpoint's (401/403 of a path the credentials do not open, as a workspace's
        UI paths may answer, or a page that is not JSON) as "no bulk endpoint"."""
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        def send() -> Points:
            response = http_request(self._creds(), BULK_ENDPOINT, "GET",  # type: ignore[misc]
                                    params={"run_id": run_ids, "metric_key": key,
                                            "max_results": BULK_MAX_POINTS})
            if probing and response.status_code in (401, 403):
                raise _NotThisEndpoint(f"{response.status_code} for {BULK_ENDPOINT}")
            verify_rest_response(response, BULK_ENDPOINT)
            try:
                answer = response.json()
            except ValueError:
                raise _NotThisEndpoint(f"an answer that is not JSON from {BULK_ENDPOINT}") from None
            if not isinstance(answer, dict) or not isinstance(answer.get("metrics", []), list):
                raise _NotThisEndpoint(f"an answer without metrics from {BULK_ENDPOINT}")
            return answer.get("metrics", [])

        try:
            points = self.client.call(OPERATION, send)
        except Exception as exc:
            if endpoint_missing(exc) or isinstance(exc, _NotThisEndpoint):
                log.info("The tracking server %s has no bulk metric history endpoint (%s); reading "
                         "histories run by run", redact_uri(self.client.tracking_uri), error_summary(exc, 200))
                with _HOSTS_LOCK:
                    _HOSTS_WITHOUT_BULK.add(self._host or "")
                return None
            raise self._failure(exc) from exc
        self.counts.add(bulk_requests=1, points=len(points))
        return [_point(p, key) for p in points]

    def read_run(self, run_id: str, key: str) -> Points:
        """Every point of one run's metric, page by page."""
        if self._creds is None:
            try:
                found = self.client.call(OPERATION, self._store.get_metric_history, run_id, key)
            except Exception as exc:
                raise self._failure(exc) from exc
            self.counts.add(run_requests=1, points=len(found))
            return self._limited(run_id, key, [_entity_point(m, run_id) for m in found])

        from mlflow.utils.rest_utils import http_request, verify_rest_response

        def page(token: str | None) -> tuple[Points, str | None]:
            params: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": PAGE_POINTS}
            if token:
                params["page_token"] = token

            def send() -> dict[str, Any]:
                response = http_request(self._creds(), HISTORY_ENDPOINT, "GET", params=params)  # type: ignore[misc]
                return verify_rest_response(response, HISTORY_ENDPOINT).json()

            try:
                answer = self.client.call(OPERATION, send)
            except Exception as exc:
                raise self._failure(exc) from exc
            found = answer.get("metrics", [])
            self.counts.add(run_requests=1, points=len(found))
            return [_point({**p, "run_id": run_id}, key) for p in found], answer.get("next_page_token") or None

        points: Points = []
        for found in follow_pages(page):
            points.extend(found)
            if self.max_points is not None and len(points) > self.max_points:
                break
        return self._limited(run_id, key, points)

    def _limited(self, run_id: str, key: str, points: Points) -> Points:
        """One run's points held to ``max_points``."""
        if self.max_points is not None and len(points) > self.max_points:
            self._note_truncated(run_id, key)
            return points[: self.max_points]
        return points

    def _limited_runs(self, key: str, points: Points) -> Points:
        """Points of several runs (each run's together) with each run held to ``max_points``."""
        if self.max_points is None or len(points) <= self.max_points:
            return points
        kept: Points = []
        taken: dict[str, int] = {}
        for p in points:
            n = taken[p["run_id"]] = taken.get(p["run_id"], 0) + 1
            if n <= self.max_points:
                kept.append(p)
            elif n == self.max_points + 1:
                self._note_truncated(p["run_id"], key)
        return kept

    def _note_truncated(self, run_id: str, key: str) -> None:
        self.counts.note_truncated(run_id, key, self.max_points or 0)
        log.warning("Run %s metric %r has more than %d points; the first %d are kept "
                    "(tables.max_history_points)", run_id, key, self.max_points, self.max_points)

    def _failure(self, exc: BaseException) -> TrackingServerError:
        return TrackingServerError(
            f"Tracking server {redact_uri(self.client.tracking_uri)} failed to read metric history: "
            f"{error_summary(exc, 500)}"
        )


class _NotThisEndpoint(Exception):
    """The server answered the bulk path with something that is not the bulk endpoint."""


def _point(raw: dict[str, Any], key: str) -> dict[str, Any]:
    """A point as the REST API sends it, with numbers as numbers (``"NaN"``, ``"Infinity"``
    strings and 64-bit integers as strings become floats and ints)."""
    point = {
        "run_id": raw.get("run_id"),
        "key": raw.get("key", key),
        "step": int(raw.get("step") or 0),
        "timestamp": int(raw["timestamp"]) if raw.get("timestamp") is not None else None,
        "value": float(raw["value"]) if raw.get("value") is not None else None,
    }
    for name in LINK_FIELDS:
        point[name] = raw.get(name) or None
    return point


def _entity_point(metric: Any, run_id: str) -> dict[str, Any]:
    point = {"run_id": run_id, "key": metric.key, "step": int(metric.step or 0),
             "timestamp": int(metric.timestamp) if metric.timestamp is not None else None,
             "value": float(metric.value) if metric.value is not None else None}
    for name in LINK_FIELDS:
        point[name] = getattr(metric, name, None) or None
    return point
