"""Talking to the tracking server: experiments and paginated run search.

Run search goes straight to the REST endpoint (``POST /api/2.0/mlflow/runs/search``) with
MLflow's own host credentials and request code, so authentication, TLS and Databricks
profiles work exactly as for ``MlflowClient``; the JSON pages are turned into Arrow columns
without building MLflow entity objects first. A tracking URI that is not served over REST
(a local ``sqlite:`` or file store) is searched through the store's own ``search_runs``.
Every request is paced by the rate limiter and retried by its operation's policy.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlflow_spark_tools.core.private_apis import tracking_store
from mlflow_spark_tools.core.redaction import redact_uri
from mlflow_spark_tools.errors import ExperimentNotFoundError, TrackingServerError
from mlflow_spark_tools.tracking.pages import ACTIVE_ONLY, follow_pages, search_runs_json
from mlflow_spark_tools.tracking.rate_limit_errors import (
    error_summary,
    is_not_found,
    names_nothing,
    not_found,
)
from mlflow_spark_tools.tracking.ratelimit import RateLimiter, shared_limiter

if TYPE_CHECKING:
    from mlflow_spark_tools.config import ClientConfig, Settings

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ExperimentInfo:
    experiment_id: str
    name: str
    lifecycle_stage: str
    artifact_location: str | None


class TrackingSource:
    """Experiments and run pages from one tracking server, for the table builds and queries.

    Every request goes through a :class:`~mlflow_spark_tools.tracking.client.RetryingClient`: paced by
    ``limiter`` and retried by the operation's policy. Errors that remain become
    :class:`ExperimentNotFoundError` (a usage error) or :class:`TrackingServerError`.

    Args:
        tracking_uri: the server; None means MLflow's usual resolution (``MLFLOW_TRACKING_URI``).
        limiter: the rate limiter every request takes a token from.
        config: retries per operation; None loads them from the package configuration.
    """

    def __init__(self, tracking_uri: str | None, limiter: RateLimiter,
                 config: ClientConfig | None = None) -> None:
        from mlflow_spark_tools.tracking.client import RetryingClient

        self.client = RetryingClient(tracking_uri, config=config, limiter=limiter)
        self.tracking_uri = self.client.tracking_uri

    @functools.cached_property
    def _store(self) -> Any:
        """MLflow's store of the server, made at the first search: a store of a local default
        (MLflow 3's ``sqlite:///mlflow.db`` when no tracking URI is set) creates its database,
        and a question the experiment tables answer must not leave one behind."""
        return tracking_store(self.tracking_uri)

    @classmethod
    def from_settings(cls, settings: Settings) -> TrackingSource:
        """The settings' tracking server, paced by the process's limiter for their profile."""
        return cls(settings.tracking_uri, shared_limiter(settings.profile()), settings.client)

    # ---- experiments -------------------------------------------------------------------

    def _call(self, operation: str, what: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.client.call(operation, func, *args, **kwargs)
        except Exception as exc:
            if names_nothing(exc):
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
            if names_nothing(exc):
                raise not_found(ExperimentNotFoundError, f"Experiment id {experiment_id!r}",
                                self.tracking_uri) from None
            raise
        return _experiment_info(exp)

    def experiment_by_name(self, name: str) -> ExperimentInfo:
        exp = self._call("get_experiment_by_name", "get an experiment",
                         self.client.mlflow.get_experiment_by_name, name)
        if exp is None:
            raise not_found(ExperimentNotFoundError, f"Experiment {name!r}", self.tracking_uri)
        return _experiment_info(exp)

    def all_experiments(self) -> list[ExperimentInfo]:
        """Every active experiment, all pages."""
        def fetch(token: str | None) -> tuple[Any, str | None]:
            page = self._call("search_experiments", "list experiments", self.client.mlflow.search_experiments,
                              max_results=1000, page_token=token)
            return page, page.token

        return [_experiment_info(e) for page in follow_pages(fetch) for e in page]

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
                raise not_found(ExperimentNotFoundError, f"Experiment id {experiment_id!r}",
                                self.tracking_uri) from None
            if names_nothing(exc):
                raise  # a filter or order the server refused: the caller's mistake
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
        return follow_pages(lambda token: self.search_page(experiment_id, filter_string, view, page_size,
                                                           order_by, token))


def _experiment_info(exp: Any) -> ExperimentInfo:
    return ExperimentInfo(
        experiment_id=str(exp.experiment_id),
        name=exp.name,
        lifecycle_stage=exp.lifecycle_stage,
        artifact_location=exp.artifact_location,
    )
