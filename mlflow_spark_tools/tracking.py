"""Talking to the tracking server: experiments and paginated run search.

Run search goes straight to the REST endpoint (``POST /api/2.0/mlflow/runs/search``) with
MLflow's own host credentials and request code, so authentication, TLS and Databricks
profiles work exactly as for ``MlflowClient``; the JSON pages are turned into Arrow columns
without building MLflow entity objects first. A tracking URI that is not served over REST
(a local ``sqlite:`` or file store) is searched through the store's own ``search_runs``.
Every request is paced by the rate limiter and retried by its operation's policy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlflow_spark_tools.errors import ExperimentNotFoundError, TrackingServerError
from mlflow_spark_tools.rate_limit_errors import error_summary, is_not_found
from mlflow_spark_tools.ratelimit import RateLimiter
from mlflow_spark_tools.redaction import redact_uri

if TYPE_CHECKING:
    from mlflow_spark_tools.config import ClientConfig

log = logging.getLogger(__name__)

SEARCH_ENDPOINT = "/api/2.0/mlflow/runs/search"
ACTIVE_ONLY, DELETED_ONLY, ALL = "ACTIVE_ONLY", "DELETED_ONLY", "ALL"


@dataclass(frozen=True)
class ExperimentInfo:
    experiment_id: str
    name: str
    lifecycle_stage: str
    artifact_location: str | None


def _is_usage_error(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")


class TrackingSource:
    """Experiments and run pages from one tracking server, for the table builds and queries.

    Every request goes through a :class:`~mlflow_spark_tools.client.RetryingClient`: paced by
    ``limiter`` and retried by the operation's policy. Errors that remain become
    :class:`ExperimentNotFoundError` (a usage error) or :class:`TrackingServerError`.

    Args:
        tracking_uri: the server; None means MLflow's usual resolution (``MLFLOW_TRACKING_URI``).
        limiter: the rate limiter every request takes a token from.
        config: retries per operation; None loads them from the package configuration.
    """

    def __init__(self, tracking_uri: str | None, limiter: RateLimiter,
                 config: ClientConfig | None = None) -> None:
        from mlflow.tracking._tracking_service.utils import _get_store

        from mlflow_spark_tools.client import RetryingClient

        self.client = RetryingClient(tracking_uri, config=config, limiter=limiter)
        self.tracking_uri = self.client.tracking_uri
        self._store = _get_store(self.tracking_uri)

    # ---- experiments -------------------------------------------------------------------

    def _call(self, operation: str, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.client.call(operation, func, *args, **kwargs)
        except Exception as exc:
            if is_not_found(exc) or _is_usage_error(exc):
                raise
            raise TrackingServerError(
                f"Tracking server {redact_uri(self.tracking_uri)} failed to {what}: {error_summary(exc, 500)}"
            ) from exc

    def experiment_by_id(self, experiment_id: str) -> ExperimentInfo:
        try:
            exp = self._call("get_experiment", "get an experiment", self.client.mlflow.get_experiment,
                             experiment_id)
        except TrackingServerError:
            raise
        except Exception as exc:
            if is_not_found(exc) or _is_usage_error(exc):
                raise ExperimentNotFoundError(
                    f"Experiment id {experiment_id!r} does not exist on {redact_uri(self.tracking_uri)}."
                ) from None
            raise
        return _experiment_info(exp)

    def experiment_by_name(self, name: str) -> ExperimentInfo:
        exp = self._call("get_experiment_by_name", "get an experiment",
                         self.client.mlflow.get_experiment_by_name, name)
        if exp is None:
            raise ExperimentNotFoundError(
                f"Experiment {name!r} does not exist on {redact_uri(self.tracking_uri)}."
            )
        return _experiment_info(exp)

    def all_experiments(self) -> list[ExperimentInfo]:
        """Every active experiment, all pages."""
        out: list[ExperimentInfo] = []
        token = None
        while True:
            page = self._call(
                "search_experiments",
                "list experiments",
                self.client.mlflow.search_experiments,
                max_results=1000,
                page_token=token,
            )
            out.extend(_experiment_info(e) for e in page)
            token = page.token
            if not token:
                return out

    # ---- runs ------------------------------------------------------------------------

    def search_page(
        self,
        experiment_id: str,
        filter_string: str = "",
        view: str = ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of runs in the REST API's JSON shape, and the next page token."""
        try:
            return self.client.call("search_runs", search_runs_json, self._store, [experiment_id],
                                    filter_string, view, max_results, order_by, page_token)
        except Exception as exc:
            if is_not_found(exc):
                raise ExperimentNotFoundError(
                    f"Experiment id {experiment_id!r} does not exist on {redact_uri(self.tracking_uri)}."
                ) from None
            if _is_usage_error(exc):
                raise
            raise TrackingServerError(
                f"Tracking server {redact_uri(self.tracking_uri)} failed to search runs: {error_summary(exc, 500)}"
            ) from exc

    def iter_pages(
        self,
        experiment_id: str,
        filter_string: str = "",
        view: str = ACTIVE_ONLY,
        page_size: int = 1000,
        order_by: list[str] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Every page of a search, following ``next_page_token``."""
        token = None
        while True:
            runs, token = self.search_page(
                experiment_id, filter_string, view, page_size, order_by, token
            )
            yield runs
            if not token:
                return


def search_runs_json(
    store: Any,
    experiment_ids: list[str],
    filter_string: str = "",
    view: str = ACTIVE_ONLY,
    max_results: int = 1000,
    order_by: list[str] | None = None,
    page_token: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of runs in the REST API's JSON shape, and the next page token.

    A REST store is asked with one ``runs/search`` request (its JSON is used as it comes,
    without building MLflow entities); any other store through its own ``search_runs``.
    """
    body: dict[str, Any] = {
        "experiment_ids": [str(e) for e in experiment_ids],
        "filter": filter_string,
        "run_view_type": view,
        "max_results": max_results,
    }
    if order_by:
        body["order_by"] = list(order_by)
    if page_token:
        body["page_token"] = page_token
    host_creds = getattr(store, "get_host_creds", None)
    if host_creds is not None:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        response = http_request(host_creds(), SEARCH_ENDPOINT, "POST", json=body)
        payload = verify_rest_response(response, SEARCH_ENDPOINT).json()
        return payload.get("runs", []), payload.get("next_page_token") or None

    from mlflow.entities import ViewType
    from mlflow.utils.proto_json_utils import message_to_json

    page = store.search_runs(
        experiment_ids=body["experiment_ids"],
        filter_string=filter_string,
        run_view_type=ViewType.from_string(view.lower()),
        max_results=max_results,
        order_by=order_by,
        page_token=page_token,
    )
    return [json.loads(message_to_json(run.to_proto())) for run in page], page.token or None


def _experiment_info(exp: Any) -> ExperimentInfo:
    return ExperimentInfo(
        experiment_id=str(exp.experiment_id),
        name=exp.name,
        lifecycle_stage=exp.lifecycle_stage,
        artifact_location=exp.artifact_location,
    )
