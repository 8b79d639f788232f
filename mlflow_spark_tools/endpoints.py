"""Which Databricks rate-limit class each MLflow REST endpoint belongs to.

Databricks limits the tracking API per class of endpoint: low-throughput experiment management,
run search, log batch, and everything else. The proxy uses this mapping to enforce a profile's
limits the way the workspace does, and the clients of this package use it to pace themselves.
"""

from __future__ import annotations

EXPERIMENT_MANAGEMENT = "experiment_management"
SEARCH_RUNS = "search_runs"
LOG_BATCH = "log_batch"
OTHER = "other"

# REST prefixes of the tracking API: the public one, the UI's, and the artifact proxy.
API_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/", "/api/2.0/mlflow-artifacts/",
                "/ajax-api/2.0/mlflow-artifacts/", "/api/3.0/mlflow/", "/ajax-api/3.0/mlflow/")

_EXPERIMENT_MANAGEMENT_ENDPOINTS = frozenset({
    "experiments/create",
    "experiments/list",
    "experiments/search",
    "experiments/update",
    "experiments/delete",
    "experiments/restore",
    "experiments/set-experiment-tag",
    "experiments/delete-experiment-tag",
})


def endpoint_of(path: str) -> str | None:
    """The endpoint part of a request path (``runs/log-batch``), or None outside the API."""
    path = path.split("?", 1)[0]
    for prefix in API_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):].strip("/")
    return None


def endpoint_label(path: str) -> str | None:
    """The endpoint for counters: artifact transfers share one label (their paths name runs)."""
    endpoint = endpoint_of(path)
    if endpoint is not None and "mlflow-artifacts/" in path.split("?", 1)[0]:
        return "mlflow-artifacts/" + endpoint.split("/", 1)[0]
    return endpoint


def api_class_of(path: str) -> str | None:
    """The rate-limit class of a request path; None for paths outside the tracking API
    (health checks, the UI's static files), which no limit applies to."""
    endpoint = endpoint_of(path)
    if endpoint is None:
        return None
    if endpoint == "runs/log-batch":
        return LOG_BATCH
    if endpoint == "runs/search":
        return SEARCH_RUNS
    if endpoint in _EXPERIMENT_MANAGEMENT_ENDPOINTS:
        return EXPERIMENT_MANAGEMENT
    return OTHER
