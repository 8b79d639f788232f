"""Reading MLflow 3 logged models and the model registry, for the model tables.

Logged models. ``POST /api/2.0/mlflow/logged-models/search`` with the experiment's id, pages of
:data:`LOGGED_MODELS_PAGE` (Databricks' maximum; MLflow servers default to 100 and take more)
and page tokens; the JSON answers are used as they come. A tracking URI that is not served over
REST (``sqlite:``) is searched through the store's own ``search_logged_models``. A server
without the API (an MLflow 2 server answers 404) or an installed MLflow 2 client means there are
no logged models to read: :meth:`LoggedModelSearch.search` answers None, and a search that found
the API missing is not sent again by the same object.

Registry. Through ``MlflowClient``'s registry calls, so that the registry's URI scheme decides
the store as it does for MLflow users: the workspace registry (an MLflow server's, or
``databricks``) or Unity Catalog (``databricks-uc``). The URI is ``tables.registry_uri``, else
MLflow's usual resolution (:func:`registry_uri_for`). Unity Catalog refuses a filter and an
order on ``search_registered_models``, takes only ``name = '...'`` (or ``run_id``) as the filter
of ``search_model_versions``, and its search answers carry no aliases and no tags: there the
registered models are listed unfiltered, each model's versions searched by name, and each model
and version read once more with ``get_registered_model`` / ``get_model_version``.

Every request goes through the retrying client: paced by the ``other`` class of the rate-limit
profile when it goes to the tracking server's host (a registry on another host is retried, not
paced) and retried by its operation's policy.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from mlflow_spark_tools.core.json_values import json_millis
from mlflow_spark_tools.core.private_apis import tracking_store
from mlflow_spark_tools.core.redaction import redact_uri
from mlflow_spark_tools.errors import TrackingServerError
from mlflow_spark_tools.tracking.logged_models import client_has_logged_models
from mlflow_spark_tools.tracking.pages import follow_pages
from mlflow_spark_tools.tracking.rate_limit_errors import endpoint_missing, error_summary

log = logging.getLogger(__name__)

LOGGED_MODELS_SEARCH = "/api/2.0/mlflow/logged-models/search"
# Databricks takes at most 50 per page; MLflow servers default to 100 and take more.
LOGGED_MODELS_PAGE = 50
# MLflow's threshold for registered models (the workspace registry's maximum), and the
# default MLflow's own client sends to Unity Catalog.
REGISTERED_MODELS_PAGE = 1000
UC_REGISTERED_MODELS_PAGE = 100
# MLflow's default page of model versions (the workspace registry's maximum; Unity Catalog
# takes it and answers in pages of its own size).
MODEL_VERSIONS_PAGE = 10000
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"
UC_SCHEMES = ("databricks-uc", "uc")


class LoggedModelSearch:
    """The logged models of experiments on one tracking server.

    Args:
        client: a :class:`~mlflow_spark_tools.tracking.client.RetryingClient` of the server.
        page_size: models per request; None: :data:`LOGGED_MODELS_PAGE`.
    """

    def __init__(self, client: Any, page_size: int | None = None) -> None:
        self.client = client
        self.page_size = page_size if page_size is not None else LOGGED_MODELS_PAGE
        self._store = tracking_store(client.tracking_uri)
        self._available: bool | None = None if client_has_logged_models() else False

    def search(self, experiment_id: str) -> list[dict[str, Any]] | None:
        """Every logged model of the experiment in the REST API's JSON shape (``info`` and
        ``data``), all pages; None when the server or the installed MLflow has no logged
        models.

        Raises:
            TrackingServerError: the server failed to answer (after the retries).
        """
        if self._available is False:
            return None
        try:
            pages = follow_pages(lambda token: self.client.call("search_logged_models", self._page,
                                                                str(experiment_id), token))
            models = [model for page in pages for model in page]
        except Exception as exc:
            if endpoint_missing(exc):
                log.info("The tracking server %s has no logged-model API (%s): no models table",
                         redact_uri(self.client.tracking_uri), error_summary(exc, 200))
                self._available = False
                return None
            raise TrackingServerError(
                f"Tracking server {redact_uri(self.client.tracking_uri)} failed to search logged models: "
                f"{error_summary(exc, 500)}"
            ) from exc
        self._available = True
        return models

    def _page(self, experiment_id: str, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        body: dict[str, Any] = {"experiment_ids": [experiment_id], "max_results": self.page_size}
        if token:
            body["page_token"] = token
        host_creds = getattr(self._store, "get_host_creds", None)
        if host_creds is not None:
            from mlflow.utils.rest_utils import http_request, verify_rest_response

            response = http_request(host_creds(), LOGGED_MODELS_SEARCH, "POST", json=body)
            payload = verify_rest_response(response, LOGGED_MODELS_SEARCH).json()
            return payload.get("models", []), payload.get("next_page_token") or None
        from mlflow.utils.proto_json_utils import message_to_json

        page = self._store.search_logged_models(experiment_ids=[experiment_id], max_results=self.page_size,
                                                page_token=token)
        return [json.loads(message_to_json(model.to_proto())) for model in page], page.token or None


def registry_uri_for(configured: str | None, tracking_uri: str) -> str:
    """The registry the tables read: ``configured`` (``tables.registry_uri``), else
    ``MLFLOW_REGISTRY_URI``, else, for the process's own tracking server, MLflow's registry
    URI (what ``mlflow.set_registry_uri`` set; with MLflow 3 ``databricks-uc`` for the
    ``databricks`` tracking URI), else the tracking server itself."""
    if configured:
        return configured
    from_env = os.environ.get(REGISTRY_URI_ENV)
    if from_env:
        return from_env
    import mlflow

    if tracking_uri == mlflow.get_tracking_uri():
        return mlflow.get_registry_uri()
    return tracking_uri


def is_unity_catalog(registry_uri: str) -> bool:
    """Whether a registry URI names Unity Catalog (``databricks-uc``, ``databricks-uc://profile``,
    or the open-source Unity Catalog's ``uc:``)."""
    scheme = registry_uri.split(":", 1)[0].lower() if ":" in registry_uri else registry_uri.lower()
    return scheme in UC_SCHEMES


def _version(value: Any) -> int:
    return int(str(value))


class RegistryReader:
    """Registered models and their versions, as plain records.

    A registered model: ``name``, ``description``, ``creation_timestamp``,
    ``last_updated_timestamp`` (ms), ``aliases`` (alias, version) pairs and ``tags`` (key,
    value) pairs. A version: ``name``, ``version`` (int), ``aliases``, ``current_stage`` (None on
    Unity Catalog), ``status``, ``source_run_id``, ``model_id`` (the MLflow 3 logged model it
    came from: as the registry says, else from a ``models:/<model_id>`` source), ``source``,
    ``creation_timestamp``, ``last_updated_timestamp``, ``description`` and ``tags``. Empty
    strings the registry sends for absent values are None.

    Args:
        client: a :class:`~mlflow_spark_tools.tracking.client.RetryingClient` of the tracking
            server (its retries and pacing apply).
        registry_uri: the registry; None resolves it with :func:`registry_uri_for`.
        unity_catalog: read as Unity Catalog requires; None decides by the URI.
    """

    def __init__(self, client: Any, registry_uri: str | None = None, *, unity_catalog: bool | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = client
        self.registry_uri = registry_uri_for(registry_uri, client.tracking_uri)
        self.unity_catalog = is_unity_catalog(self.registry_uri) if unity_catalog is None else unity_catalog
        self.mlflow = MlflowClient(tracking_uri=client.tracking_uri, registry_uri=self.registry_uri)

    def _call(self, operation: str, what: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return self.client.call(operation, func, *args, **kwargs)
        except Exception as exc:
            raise TrackingServerError(
                f"Model registry {redact_uri(self.registry_uri)} failed to {what}: {error_summary(exc, 500)}"
            ) from exc

    def _pages(self, operation: str, what: str, func: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
        def fetch(token: str | None) -> tuple[Any, str | None]:
            page = self._call(operation, what, func, page_token=token, **kwargs)
            return page, page.token

        return (item for page in follow_pages(fetch) for item in page)

    def read(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every registered model and every version of them, each version with its aliases.

        A version's aliases are taken from its registered model too: the workspace registry's
        version search leaves them out, its registered models carry them (alias -> version).
        """
        models = self.registered_models()
        versions = self.model_versions([m["name"] for m in models])
        aliases: dict[tuple[str, int], set[str]] = {}
        for model in models:
            for alias, version in model["aliases"]:
                aliases.setdefault((model["name"], version), set()).add(alias)
        for version in versions:
            version["aliases"] = sorted(set(version["aliases"]) | aliases.get((version["name"], version["version"]),
                                                                                set()))
        return models, versions

    def registered_models(self) -> list[dict[str, Any]]:
        """Every registered model the registry lists (MLflow 3 leaves prompts out)."""
        page_size = UC_REGISTERED_MODELS_PAGE if self.unity_catalog else REGISTERED_MODELS_PAGE
        found = list(self._pages("search_registered_models", "search registered models",
                                 self.mlflow.search_registered_models, max_results=page_size))
        if self.unity_catalog:  # its search answers carry neither aliases nor tags
            found = [self._call("get_registered_model", f"get registered model {m.name!r}",
                                self.mlflow.get_registered_model, m.name) for m in found]
        return [_registered_model(m) for m in found]

    def model_versions(self, names: list[str]) -> list[dict[str, Any]]:
        """Every version of the registered models ``names``."""
        if not self.unity_catalog:
            wanted = set(names)
            versions = [v for v in self._pages("search_model_versions", "search model versions",
                                               self.mlflow.search_model_versions, max_results=MODEL_VERSIONS_PAGE)
                        if v.name in wanted]  # not the versions of prompts
            return [_model_version(v) for v in versions]
        records = []
        for name in names:
            for found in self._pages("search_model_versions", f"search the versions of {name!r}",
                                     self.mlflow.search_model_versions, filter_string=_name_filter(name),
                                     max_results=MODEL_VERSIONS_PAGE):
                version = self._call("get_model_version", f"get version {found.version} of {name!r}",
                                     self.mlflow.get_model_version, name, str(found.version))
                records.append(_model_version(version))
        return records


def _name_filter(name: str) -> str:
    """The one filter Unity Catalog takes: ``name = '<name>'``."""
    if "'" not in name:
        return f"name = '{name}'"
    if '"' not in name:
        return f'name = "{name}"'
    raise TrackingServerError(f"Registered model {name!r} cannot be searched by name: it holds both quote characters.")


def model_id_of_source(source: str | None) -> str | None:
    """The logged model a version was registered from, by its source ``models:/<model_id>``
    (MLflow servers store the source but not the model id); None for other sources
    (``runs:/...``, ``models:/<name>/<version>``, ``models:/<name>@<alias>``)."""
    if not source or not source.startswith("models:/"):
        return None
    rest = source[len("models:/"):].strip("/")
    return rest if rest and "/" not in rest and "@" not in rest else None


def _registered_model(model: Any) -> dict[str, Any]:
    aliases = getattr(model, "aliases", None) or {}
    return {
        "name": model.name,
        "description": model.description or None,
        "creation_timestamp": json_millis(model.creation_timestamp),
        "last_updated_timestamp": json_millis(model.last_updated_timestamp),
        "aliases": sorted((str(alias), _version(version)) for alias, version in dict(aliases).items()),
        "tags": sorted(dict(model.tags or {}).items()),
    }


def _model_version(version: Any) -> dict[str, Any]:
    return {
        "name": version.name,
        "version": _version(version.version),
        "aliases": sorted(getattr(version, "aliases", None) or []),
        "current_stage": version.current_stage or None,
        "status": version.status or None,
        "source_run_id": version.run_id or None,
        "model_id": getattr(version, "model_id", None) or model_id_of_source(version.source),
        "source": version.source or None,
        "creation_timestamp": json_millis(version.creation_timestamp),
        "last_updated_timestamp": json_millis(version.last_updated_timestamp),
        "description": version.description or None,
        "tags": sorted(dict(version.tags or {}).items()),
    }
