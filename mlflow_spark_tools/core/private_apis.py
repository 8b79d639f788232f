"""The private internals of MLflow and databricks-sdk this package relies on, in one place.

Each is wrapped here and nowhere else used directly, so that an upgrade that moves or renames
one breaks this module (and its tests say so) instead of callers across the package. Where an
older release lacks a name, the wrapper answers the way that release behaves.
"""

from __future__ import annotations

import functools
import inspect
import urllib.parse
from typing import Any


def tracking_store(tracking_uri: str) -> Any:
    """The tracking store MLflow builds for ``tracking_uri`` (a REST store for servers, a
    sqlite or file store for local URIs)."""
    from mlflow.tracking._tracking_service.utils import _get_store

    return _get_store(tracking_uri)


def request_headers() -> dict[str, str]:
    """The headers MLflow's registered request-header providers add to every request."""
    from mlflow.tracking.request_header.registry import resolve_request_headers

    return dict(resolve_request_headers())


def databricks_traffic_id() -> str | None:
    """The Databricks traffic id MLflow would send (MLflow 3.x); None before it existed."""
    try:
        from mlflow.environment_variables import _MLFLOW_DATABRICKS_TRAFFIC_ID
    except ImportError:
        return None
    value = _MLFLOW_DATABRICKS_TRAFFIC_ID.get()
    return None if value is None else str(value)


def request_workspace() -> Any:
    """The workspace MLflow's request context names, if any (MLflow 3.x); None before."""
    try:
        from mlflow.utils.workspace_context import get_request_workspace
    except ImportError:
        return None
    return get_request_workspace()


def _repository_takes_tracking_uri() -> bool:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return "tracking_uri" in inspect.signature(get_artifact_repository).parameters


def artifact_repository(artifact_uri: str, tracking_uri: str) -> Any:
    """MLflow's artifact repository for ``artifact_uri``, a run's artifact URI on ``tracking_uri``.

    MLflow 3 is told the tracking URI. MLflow 2 resolves ``mlflow-artifacts:/`` URIs (a server
    that proxies artifacts) against the process's tracking URI instead, whatever server the run
    is on; here they resolve against ``tracking_uri`` with MLflow 2 too.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if _repository_takes_tracking_uri():
        return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    if urllib.parse.urlsplit(artifact_uri).scheme == "mlflow-artifacts":
        # what MLflow 2's MlflowArtifactsRepository is, with the URI resolved against the run's server
        from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
        from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

        return HttpArtifactRepository(MlflowArtifactsRepository.resolve_uri(artifact_uri, tracking_uri))
    return get_artifact_repository(artifact_uri)


def artifacts_on_the_client_server(client: Any) -> None:
    """Make an ``MlflowClient``'s artifact operations (``log_artifact(s)``, ``list_artifacts``,
    ``download_artifacts``) go to the client's own tracking server under MLflow 2.

    MLflow 2 builds a run's artifact repository from the process's tracking URI and keeps it in
    a process-wide cache by run id, so a client of another server uploads to the wrong one (or
    fails on a ``file:`` tracking URI). MLflow 3 uses the client's: nothing changes there.
    """
    if _repository_takes_tracking_uri():
        return
    from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

    service = client._tracking_client
    tracking_uri = service.tracking_uri

    @functools.lru_cache(maxsize=256)
    def run_repository(run_id: str) -> Any:
        uri = add_databricks_profile_info_to_artifact_uri(service.get_run(run_id).info.artifact_uri, tracking_uri)
        return artifact_repository(uri, tracking_uri)

    service._get_artifact_repo = run_repository


def escape_workspace_path(path: str) -> str:
    """A workspace path escaped for a REST URL the way databricks-sdk escapes it."""
    from databricks.sdk.service._internal import _escape_multi_segment_path_parameter

    return str(_escape_multi_segment_path_parameter(path))
