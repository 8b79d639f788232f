"""REST calls to the tracking server with a retry policy chosen per caller.

MLflow's client retries a 429 for minutes, with settings read from process-wide environment
variables. The collector must give up within seconds (inside a Spark task) and the replayer
must wait exactly as long as the server's ``Retry-After`` says, without changing how any other
code in the same process retries. So both send their requests here: each request is one HTTP
attempt, and retries are decided by a tenacity policy given to this object. Databricks and
servers with authentication plugins are reached through MLflow's own request code
(authentication, TLS, Databricks profiles as usual); a plain HTTP(S) server through a
keep-alive session set up once with the same headers, credentials and TLS settings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from mlflow_spark_tools.core.json_values import json_float
from mlflow_spark_tools.core.private_apis import (
    databricks_traffic_id,
    request_headers,
    request_workspace,
    tracking_store,
)
from mlflow_spark_tools.core.redaction import redact_uri
from mlflow_spark_tools.tracking.pacing import PacingScope, RateLimitedResponse, paced, parse_retry_after
from mlflow_spark_tools.tracking.pages import follow_pages
from mlflow_spark_tools.tracking.retries import RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

API = "/api/2.0/mlflow"


class TrackingRequests:
    """One tracking server's REST API, one HTTP attempt per try.

    Args:
        tracking_uri: the server (``databricks``, ``http://...``).
        policy: retries.
        limiter: optional; every attempt takes a token of its API class first.
        on_attempt: called with (api_class, status) after every attempt, for counters.
        sleep: the function that waits (injectable for tests).
        timeout: seconds for one HTTP attempt.
    """

    def __init__(
        self,
        tracking_uri: str,
        policy: RetryPolicy,
        limiter: Any = None,
        on_attempt: Callable[[str, int | None], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 60.0,
    ) -> None:
        store = tracking_store(tracking_uri)
        if not hasattr(store, "get_host_creds"):
            raise ValueError(
                f"Tracking URI {redact_uri(tracking_uri)!r} is not served over REST; the collector and the "
                "replayer need a tracking server (http(s)://... or databricks)."
            )
        self.tracking_uri = tracking_uri
        self._host_creds = store.get_host_creds
        self.policy = policy
        self.limiter = limiter
        self.sleep = sleep
        self.timeout = timeout
        host = self._host_creds().host
        self.host = host
        # Every attempt, ours or MLflow's on our behalf (artifact repositories, logged models),
        # is paced and counted under this scope (see tracking.pacing).
        self.scope = PacingScope.for_uri(host, limiter=limiter, on_attempt=on_attempt)
        self._direct = _DirectSession.for_host(self._host_creds())

    def close(self) -> None:
        """Close the connections this object opened (its keep-alive pool); MLflow's own stay."""
        if self._direct is not None:
            self._direct.session.close()

    # ---- one request -----------------------------------------------------------------

    def _attempt(self, endpoint: str, method: str, body: dict[str, Any] | None,
                 upload: str | None = None) -> dict[str, Any]:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        with paced(self.scope):
            kwargs: dict[str, Any] = {"json": body} if method in ("POST", "PATCH") else {"params": body}
            if upload is not None:
                with open(upload, "rb") as data:
                    if self._direct is not None:
                        response = self._direct.request(method, endpoint, self.timeout, data=data,
                                                        headers={"Content-Type": "application/octet-stream"})
                    else:
                        response = http_request(
                            self._host_creds(), endpoint, method, data=data,
                            extra_headers={"Content-Type": "application/octet-stream"},
                            **self._one_attempt(),
                        )
            elif self._direct is not None:
                response = self._direct.request(method, endpoint, self.timeout, **kwargs)
            else:
                response = http_request(self._host_creds(), endpoint, method, **self._one_attempt(), **kwargs)
        if response.status_code == 429:  # a path the scope does not pace (not a tracking API path)
            raise RateLimitedResponse(endpoint, parse_retry_after(response.headers.get("Retry-After")))
        verify_rest_response(response, endpoint)
        return response.json() if response.content else {}

    def _one_attempt(self) -> dict[str, Any]:
        return {"max_retries": 0, "backoff_factor": 0, "backoff_jitter": 0, "retry_codes": (),
                "raise_on_status": False, "timeout": self.timeout,
                "retry_timeout_seconds": self.policy.deadline}

    def call(self, endpoint: str, method: str = "POST", body: dict[str, Any] | None = None,
             upload: str | None = None, *, raw_path: bool = False) -> dict[str, Any]:
        """Send a request with the retry policy; raises the last error when it gives up.

        The request's rate-limit class comes from its path, where it is paced
        (:mod:`mlflow_spark_tools.tracking.pacing`).

        Args:
            endpoint: below ``/api/2.0/mlflow`` (or the whole path with ``raw_path``).
            upload: the path of a file to send as the body (artifact uploads).
        """
        path = endpoint if raw_path else API + endpoint
        return self.run(f"{method} {endpoint}", self._attempt, path, method, body, upload)

    def run(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``func`` (any work that sends tracking requests, MLflow's artifact repositories
        included) with every request paced and counted, retried as a whole by the policy."""
        def scoped() -> Any:
            with paced(self.scope):
                return func(*args, **kwargs)

        return call_with_retries(self.policy, what, scoped, sleep=self.sleep)

    # ---- the endpoints the collector and the replayer use ------------------------------

    def create_run(self, experiment_id: str, run_name: str | None, start_time: int,
                   tags: dict[str, str]) -> dict[str, Any]:
        """Create a run; returns its info (``run_id``, ``artifact_uri``, ...)."""
        body: dict[str, Any] = {
            "experiment_id": str(experiment_id),
            "start_time": int(start_time),
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if run_name:
            body["run_name"] = run_name
        return self.call("/runs/create", "POST", body)["run"]["info"]

    def log_batch(self, run_id: str, params: list[tuple[str, str]],
                  metrics: Sequence[tuple[Any, ...]], tags: list[tuple[str, str]],
                  model_id: str | None = None) -> None:
        """Log params, metric points and tags; with ``model_id`` the points are linked to
        that MLflow 3 logged model too. A point is (key, value, timestamp, step) or, linked
        one by one, (key, value, timestamp, step, model id, dataset name, dataset digest)."""
        self.call("/runs/log-batch", "POST", {
            "run_id": run_id,
            "params": [{"key": k, "value": v} for k, v in params],
            "metrics": [_metric_json(point, model_id) for point in metrics],
            "tags": [{"key": k, "value": v} for k, v in tags],
        })

    def log_inputs(self, run_id: str, datasets: list[dict[str, Any]]) -> None:
        """Record dataset inputs of a run (``runs/log-inputs``; the server keeps a dataset input
        of a run once, so repeating the request changes nothing)."""
        self.call("/runs/log-inputs", "POST", {
            "run_id": run_id,
            "datasets": [{
                "tags": [{"key": k, "value": v} for k, v in d.get("tags", {}).items()],
                "dataset": {k: d[k] for k in ("name", "digest", "source_type", "source", "schema", "profile")
                            if d.get(k) is not None},
            } for d in datasets],
        })

    def update_run(self, run_id: str, status: str, end_time: int) -> None:
        self.call("/runs/update", "POST",
                  {"run_id": run_id, "status": status, "end_time": int(end_time)})

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self.call("/runs/get", "GET", {"run_id": run_id})["run"]

    def experiment_id_by_name(self, name: str) -> str:
        return self.call("/experiments/get-by-name", "GET",
                         {"experiment_name": name})["experiment"]["experiment_id"]

    def run_with_tag(self, experiment_id: str, tag_key: str, tag_value: str) -> str | None:
        """A run of the experiment with this tag value, if any (the run a previous replay
        created for a payload: key and value are ids and hex digests, never quotes)."""
        for text in (tag_key, tag_value):
            if not all(c.isalnum() or c in "-_.:" for c in text):
                raise ValueError(f"not a tag key or value to search by: {text[:80]!r}")
        found = self.call("/runs/search", "POST", {
            "experiment_ids": [str(experiment_id)],
            "filter": f"tags.`{tag_key}` = '{tag_value}'",
            "run_view_type": "ALL",
            "max_results": 2,
        }).get("runs", [])
        return found[0]["info"]["run_id"] if found else None

    def upload_file(self, endpoint_path: str, local_file: str) -> None:
        """PUT one file to the tracking server's artifact proxy (``/api/2.0/mlflow-artifacts``)."""
        self.call(endpoint_path, "PUT", upload=local_file, raw_path=True)

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        """Every point of one metric of a run."""
        def fetch(token: str | None) -> tuple[list[dict[str, Any]], str | None]:
            body: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": 25000}
            if token:
                body["page_token"] = token
            page = self.call("/metrics/get-history", "GET", body)
            return page.get("metrics", []), page.get("next_page_token")

        return [point for page in follow_pages(fetch) for point in page]


def _metric_json(point: tuple[Any, ...], model_id: str | None) -> dict[str, Any]:
    key, value, ts, step = point[:4]
    entry: dict[str, Any] = {"key": key, "value": json_float(value), "timestamp": int(ts), "step": int(step)}
    own_model, dataset_name, dataset_digest = point[4:7] if len(point) > 4 else (None, None, None)
    if model_id or own_model:
        entry["model_id"] = model_id or own_model
    if dataset_name:
        entry["dataset_name"], entry["dataset_digest"] = dataset_name, dataset_digest
    return entry


class _DirectSession:
    """One HTTP attempt to a plain tracking server without MLflow's per-request set-up.

    MLflow's ``http_request`` resolves its request headers (probing for Databricks runtime
    modules on every call) and the proxy environment for every request; for a replay sending
    thousands of requests that is most of the client's CPU. For a server reached over plain
    HTTP(S) with no authentication or static basic/token authentication, the same headers,
    proxies and TLS settings are resolved once here. Anything else (Databricks, auth plugins,
    SigV4, workspaces) goes through MLflow's ``http_request``.
    """

    def __init__(self, host: str, headers: dict[str, str], verify: Any, cert: Any) -> None:
        import requests
        import requests.adapters

        self.host = host.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # resolved once below instead of on every request
        self.session.proxies = requests.utils.get_environ_proxies(self.host)
        self.session.headers.update(headers)
        self.session.verify = verify
        self.session.cert = cert
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @classmethod
    def for_host(cls, creds: Any) -> _DirectSession | None:
        import base64
        import os

        host = getattr(creds, "host", "") or ""
        if (not host.startswith(("http://", "https://")) or getattr(creds, "use_databricks_sdk", False)
                or getattr(creds, "auth", None) or getattr(creds, "aws_sigv4", False)
                or getattr(creds, "client_secret", None) or getattr(creds, "workspace_id", None)
                or request_workspace() or databricks_traffic_id()):
            return None
        headers = request_headers()
        if creds.username and creds.password:
            pair = f"{creds.username}:{creds.password}".encode()
            headers["Authorization"] = "Basic " + base64.standard_b64encode(pair).decode("utf-8")
        elif creds.token:
            headers["Authorization"] = f"Bearer {creds.token}"
        if creds.ignore_tls_verification:
            verify: Any = False
        elif creds.server_cert_path:
            verify = creds.server_cert_path
        else:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        return cls(host, headers, verify, creds.client_cert_path)

    def request(self, method: str, endpoint: str, timeout: float, headers: dict[str, str] | None = None,
                **kwargs: Any) -> Any:
        return self.session.request(method, self.host + endpoint, timeout=timeout, headers=headers, **kwargs)
