"""A tracking client that retries per operation and paces itself to the rate limits.

:class:`RetryingClient` wraps ``MlflowClient``: every MlflowClient method is available on it
(``client.get_run(...)``, ``client.log_batch(...)`` ...) and runs under the retry policy of its
operation from ``conf/`` (``client.retries``), built on tenacity. What is worth retrying is
decided by the classifier the collector and the replayer use
(:mod:`mlflow_spark_tools.tracking.rate_limit_errors`): rate limits, 5xx answers, connection resets and
timeouts are retried, other 4xx (``RESOURCE_DOES_NOT_EXIST``, ``INVALID_PARAMETER_VALUE``) are
raised at once. Operations that are not safe to repeat (creating a run, appending metric points)
are retried only when the server certainly did not act on the request. Each retry logs one line
with the operation and the wait.

Pacing: every HTTP request MLflow sends to the tracking server during an operation takes a
token of its endpoint's rate-limit class from a :class:`~mlflow_spark_tools.tracking.ratelimit.RateLimiter`
first, by default the process's shared limiter of the configured profile, so that a process stays
under the configured qps however many clients and threads it runs; each attempt is counted per
class and endpoint (``client.counts``), and a 429 lowers the class's rate and reaches the
operation's policy at once. The hook is the package's one HTTP layer
(:mod:`mlflow_spark_tools.tracking.pacing`), inert outside this client's operations. Requests
MLflow sends from its own worker threads (the file transfers of ``download_artifacts``) are
not paced.

Inside one attempt MLflow's own HTTP layer may retry too (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``,
7 by default, minutes in total). This package's commands set it to ``client.mlflow_http_retries``
(0) unless the variable is set already, leaving retries to the policies; library code can call
:func:`apply_mlflow_http_retries`. On the Databricks SDK path each attempt runs with MLflow's
429 retries disabled (``disable_429_retry``), so rate limits reach the policy at once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlflow_spark_tools.config import ClientConfig, RateLimitProfile, Settings, load_settings
from mlflow_spark_tools.core.private_apis import artifacts_on_the_client_server, tracking_store
from mlflow_spark_tools.errors import ExperimentNotFoundError, RunNotFoundError, UsageError
from mlflow_spark_tools.runs.run_batches import run_name_of, run_tags
from mlflow_spark_tools.tracking.pacing import PacingScope, host_port, paced
from mlflow_spark_tools.tracking.pages import ACTIVE_ONLY, ALL, follow_pages, search_runs_json
from mlflow_spark_tools.tracking.rate_limit_errors import (
    certainly_not_processed,
    error_summary,
    is_retryable,
    names_nothing,
    not_found,
)
from mlflow_spark_tools.tracking.ratelimit import RateLimiter, shared_limiter
from mlflow_spark_tools.tracking.retries import call_with_retries, patient

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

HTTP_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
LOGGED_MODELS_TAG = "mlflow.log-model.history"

# Repeating these after an uncertain failure could create a second run or append metric points
# twice: they are retried only when the server certainly did not act on the request.
NOT_SAFE_TO_REPEAT = frozenset({"create_run", "log_metric", "log_batch"})


_DATABASE_SCHEMES = frozenset({"file", "sqlite", "postgresql", "mysql", "mssql"})


def _host_of(tracking_uri: str) -> tuple[str, int]:
    """(host, port) the tracking requests of ``tracking_uri`` go to; ("", 0) for local stores."""
    if tracking_uri.startswith(("http://", "https://")):
        return host_port(tracking_uri)
    scheme = urllib.parse.urlsplit(tracking_uri).scheme.split("+")[0].lower()
    if len(scheme) <= 1 or scheme in _DATABASE_SCHEMES:
        # a path or a database: no host to pace, and building its store would create it
        # (MLflow 3's default when no tracking URI is set is sqlite:///mlflow.db)
        return ("", 0)
    try:
        store = tracking_store(tracking_uri)
        if hasattr(store, "get_host_creds"):
            return host_port(store.get_host_creds().host)
    except Exception:  # a store that cannot be built fails on first use, with its own error
        pass
    return ("", 0)


def apply_mlflow_http_retries(retries: int | None, environ: MutableMapping[str, str] | None = None) -> None:
    """Set MLflow's HTTP-layer retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) for this process,
    unless the variable is set already or ``retries`` is None."""
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    if retries is not None and HTTP_RETRIES_ENV not in env:
        env[HTTP_RETRIES_ENV] = str(retries)


def _mlflow_429_retries_off() -> contextlib.AbstractContextManager:
    try:
        from mlflow.utils.rest_utils import disable_429_retry
    except ImportError:  # MLflow before 3.x: its SDK path does not retry 429s on its own
        return contextlib.nullcontext()
    return disable_429_retry()


@dataclass(frozen=True)
class LoggedModelRef:
    """A model a run logged: its name (artifact path), and its MLflow 3 model id if it has one."""

    run_id: str
    name: str
    model_id: str | None
    source: str  # "logged_model" (MLflow 3) or "log-model.history" (the MLflow 2 run tag)


class RetryingClient:
    """``MlflowClient`` with a retry policy per operation and client-side rate limiting.

    Args:
        tracking_uri: the server; None means MLflow's usual resolution (``MLFLOW_TRACKING_URI``).
        config: retries per operation; None loads ``client`` from the package configuration.
        limiter: the token buckets every request takes from; None means the process's shared
            limiter of ``profile``.
        profile: rate-limit profile for the shared limiter; None loads the configured one.
        sleep: the function that waits between tries (injectable for tests).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        config: ClientConfig | None = None,
        limiter: RateLimiter | None = None,
        profile: RateLimitProfile | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import mlflow

        settings: Settings | None = None
        if config is None or (limiter is None and profile is None):
            settings = load_settings()
        self.config = config if config is not None else settings.client  # type: ignore[union-attr]
        if limiter is None:
            limiter = shared_limiter(profile if profile is not None else settings.profile())  # type: ignore[union-attr]
        self.limiter = limiter
        self.tracking_uri = tracking_uri if tracking_uri is not None else mlflow.get_tracking_uri()
        self._sleep = sleep
        self.scope = PacingScope(frozenset({_host_of(self.tracking_uri)}), limiter=limiter)
        self.counts = self.scope.counts

    @functools.cached_property
    def mlflow(self) -> MlflowClient:
        """MLflow's client of the server, made at its first use: MLflow 3 makes the store of a
        local default (``sqlite:///mlflow.db`` when no tracking URI is set) as soon as a client
        is made, creating that database, and a question the experiment tables answer must not
        leave one behind."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        artifacts_on_the_client_server(client)
        return client

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> RetryingClient:
        """A client for the settings' tracking server, retries and rate-limit profile."""
        return cls(settings.tracking_uri, settings.client, profile=settings.profile(), **kwargs)

    # ---- running an operation ----------------------------------------------------------

    def call(self, operation: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` as ``operation``: paced, retried by its policy.

        Raises the last error when the policy gives up or the error is not worth retrying.
        """
        safe_to_repeat = operation not in NOT_SAFE_TO_REPEAT
        return call_with_retries(
            patient(self.config.policy(operation)), operation, lambda: self._attempt(func, args, kwargs),
            repeatable=is_retryable if safe_to_repeat else certainly_not_processed,
            sleep=self._sleep, log_level=logging.WARNING,
        )

    def _attempt(self, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        with paced(self.scope), _mlflow_429_retries_off():
            return func(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "mlflow":
            raise AttributeError(name)
        attr = getattr(self.mlflow, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def operation(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, attr, *args, **kwargs)

        return operation

    # ---- helpers -----------------------------------------------------------------------

    def get_or_create_experiment(self, name: str, artifact_location: str | None = None,
                                 tags: dict[str, str] | None = None) -> str:
        """The id of the experiment called ``name``, created if there is none.

        Raises:
            UsageError: if the experiment exists but is deleted (restore it or delete it
                permanently first).
        """
        if not name or not name.strip():
            raise UsageError("The experiment name is empty.")
        existing = self.get_experiment_by_name(name)
        if existing is None:
            try:
                return str(self.create_experiment(name, artifact_location=artifact_location, tags=tags))
            except Exception as exc:
                if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                existing = self.get_experiment_by_name(name)  # created meanwhile by someone else
                if existing is None:
                    raise
        if existing.lifecycle_stage != "active":
            raise UsageError(
                f"Experiment {name!r} (id {existing.experiment_id}) is deleted: restore it or "
                "delete it permanently before using the name again."
            )
        return str(existing.experiment_id)

    def experiment_id_by_name(self, name: str) -> str:
        """The id of an existing experiment; raises ExperimentNotFoundError if there is none."""
        return str(experiment_or_fail(self, None, name).experiment_id)

    def run_ids_by_name(self, experiment_id: str, run_name: str) -> list[str]:
        """Ids of the active runs called ``run_name``, the latest started first."""
        # MLflow's filter strings take 'x' or "x" and have no escape for a quote inside: a name
        # with both kinds of quote is matched with LIKE (quotes as wildcards), then exactly here.
        if "'" not in run_name:
            condition = f"attributes.run_name = '{run_name}'"
        elif '"' not in run_name:
            condition = f'attributes.run_name = "{run_name}"'
        else:
            condition = "attributes.run_name LIKE '" + re.sub("['\"]", "_", run_name) + "'"
        ids: list[str] = []
        for runs in self.search_runs_pages([experiment_id], condition,
                                           order_by=["attributes.start_time DESC"]):
            ids.extend(r["info"]["run_id"] for r in runs if _run_name(r) == run_name)
        return ids

    def run_id_by_name(self, experiment_id: str, run_name: str, *, latest_if_several: bool = False) -> str:
        """The id of the active run called ``run_name`` in an experiment.

        Raises:
            RunNotFoundError: if no run has that name.
            UsageError: if several do, unless ``latest_if_several`` picks the latest started.
        """
        ids = self.run_ids_by_name(experiment_id, run_name)
        if not ids:
            raise RunNotFoundError(f"No active run is named {run_name!r} in experiment {experiment_id}.")
        if len(ids) > 1 and not latest_if_several:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise UsageError(f"{len(ids)} runs are named {run_name!r} in experiment {experiment_id} "
                             f"({shown}): use a run id, or take the latest started.")
        return ids[0]

    def runs_with_models(self, experiment_ids: list[str]) -> list[LoggedModelRef]:
        """The models runs of these experiments logged, the runs' order by model name.

        MLflow 3 records logged models as entities of their own (found with
        ``search_logged_models``); MLflow 2 recorded them in the run tag
        ``mlflow.log-model.history``. Both are read; a logged model whose logging FAILED is left out.
        """
        refs: dict[tuple[str, str], LoggedModelRef] = {}
        if hasattr(self.mlflow, "search_logged_models"):
            def fetch(token: str | None) -> tuple[Any, str | None]:
                page = self.search_logged_models(experiment_ids=[str(e) for e in experiment_ids], page_token=token)
                return page, page.token

            try:
                for page in follow_pages(fetch):
                    for model in page:
                        # a FAILED logged model holds no model (its logging broke off)
                        if model.source_run_id and str(getattr(model, "status", "")).rsplit(".", 1)[-1] != "FAILED":
                            refs[(model.source_run_id, model.name)] = LoggedModelRef(
                                model.source_run_id, model.name, model.model_id, "logged_model")
            except Exception as exc:
                if getattr(exc, "error_code", None) not in ("ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED"):
                    raise
                log.info("The tracking server has no logged-model search: %s", error_summary(exc))
        for runs in self.search_runs_pages(experiment_ids, f"tags.`{LOGGED_MODELS_TAG}` LIKE '%'"):
            for run in runs:
                run_id = run["info"]["run_id"]
                tag = next((t.get("value", "") for t in run.get("data", {}).get("tags", ())
                            if t["key"] == LOGGED_MODELS_TAG), "")
                for entry in _logged_model_history(tag):
                    name = entry.get("artifact_path") or entry.get("name") or ""
                    refs.setdefault((run_id, name), LoggedModelRef(
                        run_id, name, entry.get("model_id"), "log-model.history"))
        return sorted(refs.values(), key=lambda r: (r.run_id, r.name))

    # ---- paginated search ------------------------------------------------------------

    def search_runs_pages(
        self,
        experiment_ids: list[str],
        filter_string: str = "",
        run_view_type: str = ACTIVE_ONLY,
        order_by: list[str] | None = None,
        page_size: int = 1000,
        max_results: int | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Every page of a run search in the REST API's JSON shape, following page tokens.

        Each page is one ``search_runs`` operation (paced, retried); ``max_results`` caps the
        runs returned in total (None: all).
        """
        if run_view_type not in (ACTIVE_ONLY, ALL, "DELETED_ONLY"):
            raise UsageError(f"run_view_type must be ACTIVE_ONLY, DELETED_ONLY or ALL, got {run_view_type!r}.")
        if page_size < 1:
            raise UsageError("page_size must be at least 1.")
        store = tracking_store(self.tracking_uri)
        left = max_results

        def fetch(token: str | None) -> tuple[list[dict[str, Any]], str | None]:
            size = page_size if left is None else min(page_size, left)
            return self.call("search_runs", search_runs_json, store, list(experiment_ids),
                             filter_string, run_view_type, size, order_by, token)

        if left is not None and left <= 0:
            return
        for runs in follow_pages(fetch):
            if left is not None:
                runs = runs[:left]
                left -= len(runs)
            yield runs
            if left is not None and left <= 0:
                return

    def search_runs_pandas(self, experiment_ids: list[str], filter_string: str = "",
                           run_view_type: str = ACTIVE_ONLY, order_by: list[str] | None = None,
                           page_size: int = 1000, max_results: int | None = None) -> pd.DataFrame:
        """All matching runs as a pandas DataFrame with ``mlflow.search_runs`` columns."""
        from mlflow_spark_tools.runs.run_search import runs_arrow, to_pandas

        return to_pandas(runs_arrow(self.search_runs_pages(
            experiment_ids, filter_string, run_view_type, order_by, page_size, max_results)))

    def search_runs_spark(self, spark: SparkSession, experiment_ids: list[str], filter_string: str = "",
                          run_view_type: str = ACTIVE_ONLY, order_by: list[str] | None = None,
                          page_size: int = 1000, max_results: int | None = None) -> DataFrame:
        """All matching runs as a Spark DataFrame with ``mlflow.search_runs`` column names
        (``metrics.rmse``: use backticks in SQL); a missing metric is NULL, a logged NaN NaN."""
        from mlflow_spark_tools.runs.run_search import runs_arrow, to_spark

        return to_spark(spark, runs_arrow(self.search_runs_pages(
            experiment_ids, filter_string, run_view_type, order_by, page_size, max_results)))


def _run_name(run: dict[str, Any]) -> str | None:
    return run_name_of(run.get("info", {}), run_tags(run))


def _logged_model_history(tag: str) -> list[dict[str, Any]]:
    try:
        entries = json.loads(tag) if tag else []
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def get_run_or_fail(client: RetryingClient, run_id: str) -> Any:
    """The run, or RunNotFoundError (a usage error) naming the id and the server."""
    try:
        return client.get_run(run_id)
    except Exception as exc:
        if names_nothing(exc):
            raise not_found(RunNotFoundError, f"Run {run_id!r}", client.tracking_uri) from None
        raise


def experiment_or_fail(client: RetryingClient, experiment_id: str | None, name: str | None) -> Any:
    """The experiment named by id or by name; ExperimentNotFoundError if there is none."""
    if (experiment_id is None) == (name is None):
        raise UsageError("Name the experiment with --experiment-id or --name (one of them).")
    if name is not None:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise not_found(ExperimentNotFoundError, f"Experiment {name!r}", client.tracking_uri)
        return experiment
    try:
        return client.get_experiment(experiment_id)
    except Exception as exc:
        if names_nothing(exc):
            raise not_found(ExperimentNotFoundError, f"Experiment id {experiment_id!r}", client.tracking_uri) from None
        raise
