"""Which Databricks rate-limit class each MLflow REST endpoint belongs to.

Databricks limits the tracking API per class of endpoint: low-throughput experiment management,
run search, log batch, and everything else. A request is classified by its path, here and only
here (:func:`api_class_of`): the package's clients are paced by it, one HTTP request at a time
(:mod:`mlflow_spark_tools.tracking.pacing`), and the rate-limit proxy enforces a profile's limits
by it the way the workspace does.
"""

from __future__ import annotations

EXPERIMENT_MANAGEMENT = "experiment_management"
SEARCH_RUNS = "search_runs"
LOG_BATCH = "log_batch"
OTHER = "other"
API_CLASSES = (EXPERIMENT_MANAGEMENT, SEARCH_RUNS, LOG_BATCH, OTHER)

# REST prefixes of the tracking API: the public one, the UI's, and the artifact proxy.
API_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/", "/api/2.0/mlflow-artifacts/",
                "/ajax-api/2.0/mlflow-artifacts/", "/api/3.0/mlflow/", "/ajax-api/3.0/mlflow/")

# Databricks' MLflow API reference, "Rate limits": "Low throughput experiment management (list,
# update, delete, restore): 7 qps; Search runs: 7 qps; Log batch: 47 qps; All other APIs: 127
# qps". Creating, getting and searching experiments, and their tags, are not in that list: they
# are "all other APIs".
_EXPERIMENT_MANAGEMENT_ENDPOINTS = frozenset({
    "experiments/list",
    "experiments/update",
    "experiments/delete",
    "experiments/restore",
})


def endpoint_of(path: str) -> str | None:
    """The endpoint part of a request path (``runs/log-batch``), or None outside the API."""
    path = path.split("?", 1)[0]
    for prefix in API_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):].strip("/")
    return None


def endpoint_label(path: str) -> str | None:
    """The endpoint for counters: artifact transfers share one label (their paths name runs),
    as do the requests of one logged model (``logged-models/{id}/params``)."""
    endpoint = endpoint_of(path)
    if endpoint is not None and "mlflow-artifacts/" in path.split("?", 1)[0]:
        return "mlflow-artifacts/" + endpoint.split("/", 1)[0]
    if endpoint is not None and endpoint.startswith(("logged-models/", "traces/")):
        # the paths of one logged model (or trace) name it: one label for all of them
        kind, _, rest = endpoint.partition("/")
        item, _, tail = rest.partition("/")
        if item not in ("search", "batch-get"):
            return f"{kind}/{{id}}" + (f"/{tail}" if tail else "")
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
