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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity

from mlflow_spark_tools.payload_document import PAYLOAD_TAG
from mlflow_spark_tools.rate_limit_errors import is_rate_limited, is_retryable
from mlflow_spark_tools.redaction import redact_uri
from mlflow_spark_tools.request_pacing import PacingScope, RateLimitedResponse, paced, retry_after_of
from mlflow_spark_tools.run_data import metric_value_json

log = logging.getLogger(__name__)

API = "/api/2.0/mlflow"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one request.

    Attributes:
        attempts: tries in total (1 = no retry).
        initial_wait: seconds before the second try; doubles each time.
        max_wait: longest single wait.
        deadline: give up once this many seconds have passed since the first try.
        honour_retry_after: wait at least what the server's ``Retry-After`` asks.
        retry_transient: also retry 5xx, connection resets and timeouts.
        retry_rate_limits: retry 429s (else a 429 raises at once).
        rate_limit_deadline: retry 429s for this many seconds however many attempts that takes
            (back-pressure: wait and go on); None treats them like other errors.
    """

    attempts: int = 3
    initial_wait: float = 0.25
    max_wait: float = 2.0
    deadline: float = 5.0
    honour_retry_after: bool = False
    retry_transient: bool = True
    retry_rate_limits: bool = True
    rate_limit_deadline: float | None = None


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
        from mlflow.tracking._tracking_service.utils import _get_store

        store = _get_store(tracking_uri)
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
        # is paced and counted under this scope (see request_pacing).
        self.scope = PacingScope.for_uri(host, limiter=limiter, on_attempt=on_attempt)
        self._direct = _DirectSession.for_host(self._host_creds())

    # ---- one request -----------------------------------------------------------------

    def _attempt(self, api_class: str, endpoint: str, method: str, body: dict[str, Any] | None,
                 upload: str | None = None) -> dict[str, Any]:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        with paced(self.scope):
            kwargs: dict[str, Any] = {"json": body} if method == "POST" else {"params": body}
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
            raise RateLimitedResponse(endpoint, _retry_after(response.headers.get("Retry-After")))
        verify_rest_response(response, endpoint)
        return response.json() if response.content else {}

    def _one_attempt(self) -> dict[str, Any]:
        return {"max_retries": 0, "backoff_factor": 0, "backoff_jitter": 0, "retry_codes": (),
                "raise_on_status": False, "timeout": self.timeout,
                "retry_timeout_seconds": self.policy.deadline}

    def call(self, api_class: str, endpoint: str, method: str = "POST", body: dict[str, Any] | None = None,
             upload: str | None = None, raw_path: bool = False) -> dict[str, Any]:
        """Send a request with the retry policy; raises the last error when it gives up.

        Args:
            api_class: kept for the callers' readability; the pacing layer classifies the path.
            endpoint: below ``/api/2.0/mlflow`` (or the whole path with ``raw_path``).
            upload: the path of a file to send as the body (artifact uploads).
        """
        path = endpoint if raw_path else API + endpoint
        return self.run(f"{method} {endpoint}", self._attempt, api_class, path, method, body, upload)

    def run(self, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``func`` (any work that sends tracking requests, MLflow's artifact repositories
        included) with every request paced and counted, retried as a whole by the policy."""
        policy = self.policy
        started = time.monotonic()

        def retryable(exc: BaseException) -> bool:
            elapsed = time.monotonic() - started
            if is_rate_limited(exc):
                return policy.retry_rate_limits and elapsed < (policy.rate_limit_deadline or policy.deadline)
            if elapsed >= policy.deadline:
                return False
            return policy.retry_transient and is_retryable(exc)

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number < policy.attempts:
                return False
            exc = state.outcome.exception() if state.outcome else None
            return not (policy.rate_limit_deadline is not None and exc is not None and is_rate_limited(exc))

        def wait(state: tenacity.RetryCallState) -> float:
            exp = min(policy.max_wait, policy.initial_wait * 2 ** (state.attempt_number - 1))
            exc = state.outcome.exception() if state.outcome else None
            retry_after = retry_after_of(exc) if exc is not None else None
            if policy.honour_retry_after and retry_after is not None:
                return max(exp, retry_after)
            # the last try comes at the deadline, not a whole backoff after it
            return max(0.0, min(exp, policy.deadline - (time.monotonic() - started)))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info("Retrying %s in %.2fs after %s", what,
                     state.next_action.sleep if state.next_action else 0, type(exc).__name__)

        retrying = tenacity.Retrying(
            stop=stop,
            wait=wait,
            retry=tenacity.retry_if_exception(retryable),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

        def scoped() -> Any:
            with paced(self.scope):
                return func(*args, **kwargs)

        return retrying(scoped)

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
        return self.call("other", "/runs/create", "POST", body)["run"]["info"]

    def log_batch(self, run_id: str, params: list[tuple[str, str]],
                  metrics: list[tuple[str, float, int, int]], tags: list[tuple[str, str]]) -> None:
        self.call("log_batch", "/runs/log-batch", "POST", {
            "run_id": run_id,
            "params": [{"key": k, "value": v} for k, v in params],
            "metrics": [{"key": k, "value": metric_value_json(v), "timestamp": int(ts), "step": int(step)}
                        for k, v, ts, step in metrics],
            "tags": [{"key": k, "value": v} for k, v in tags],
        })

    def update_run(self, run_id: str, status: str, end_time: int) -> None:
        self.call("other", "/runs/update", "POST",
                  {"run_id": run_id, "status": status, "end_time": int(end_time)})

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self.call("other", "/runs/get", "GET", {"run_id": run_id})["run"]

    def experiment_id_by_name(self, name: str) -> str:
        return self.call("other", "/experiments/get-by-name", "GET",
                         {"experiment_name": name})["experiment"]["experiment_id"]

    def run_with_payload_tag(self, experiment_id: str, tag_value: str) -> str | None:
        """The run a previous replay created for a payload, if any (found by the value of its
        :data:`PAYLOAD_TAG`: a payload id, or a payload id and a hex digest, never quotes)."""
        if not all(c.isalnum() or c in "-_.:" for c in tag_value):
            raise ValueError(f"not a payload tag value: {tag_value[:80]!r}")
        found = self.call("search_runs", "/runs/search", "POST", {
            "experiment_ids": [str(experiment_id)],
            "filter": f"tags.`{PAYLOAD_TAG}` = '{tag_value}'",
            "run_view_type": "ALL",
            "max_results": 2,
        }).get("runs", [])
        return found[0]["info"]["run_id"] if found else None

    def upload_file(self, endpoint_path: str, local_file: str) -> None:
        """PUT one file to the tracking server's artifact proxy (``/api/2.0/mlflow-artifacts``)."""
        self.call("other", endpoint_path, "PUT", upload=local_file, raw_path=True)

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = []
        token = None
        while True:
            body: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": 25000}
            if token:
                body["page_token"] = token
            page = self.call("other", "/metrics/get-history", "GET", body)
            points.extend(page.get("metrics", []))
            token = page.get("next_page_token")
            if not token:
                return points


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

        from mlflow.environment_variables import _MLFLOW_DATABRICKS_TRAFFIC_ID
        from mlflow.tracking.request_header.registry import resolve_request_headers
        from mlflow.utils.workspace_context import get_request_workspace

        host = getattr(creds, "host", "") or ""
        if (not host.startswith(("http://", "https://")) or getattr(creds, "use_databricks_sdk", False)
                or getattr(creds, "auth", None) or getattr(creds, "aws_sigv4", False)
                or getattr(creds, "client_secret", None) or getattr(creds, "workspace_id", None)
                or get_request_workspace() or _MLFLOW_DATABRICKS_TRAFFIC_ID.get()):
            return None
        headers = dict(resolve_request_headers())
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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
