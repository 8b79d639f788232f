"""The private internals of MLflow and databricks-sdk this package relies on, in one place.

Each is wrapped here and nowhere else used directly, so that an upgrade that moves or renames
one breaks this module (and its tests say so) instead of callers across the package. Where an
older release lacks a name, the wrapper answers the way that release behaves.
"""

from __future__ import annotations

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


def escape_workspace_path(path: str) -> str:
    """A workspace path escaped for a REST URL the way databricks-sdk escapes it."""
    from databricks.sdk.service._internal import _escape_multi_segment_path_parameter

    return str(_escape_multi_segment_path_parameter(path))
