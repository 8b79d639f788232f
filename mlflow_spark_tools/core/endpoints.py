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


# The rate-limit class of each MlflowClient operation the retrying client knows by name. An
# operation that sends several requests (log_model, log_artifacts, download_artifacts) takes one
# token of its class per request it sends. Operations not named here count as OTHER.
OPERATION_CLASSES: dict[str, str] = {
    "create_experiment": OTHER,
    "search_experiments": OTHER,
    "delete_experiment": EXPERIMENT_MANAGEMENT,
    "restore_experiment": EXPERIMENT_MANAGEMENT,
    "rename_experiment": EXPERIMENT_MANAGEMENT,
    "set_experiment_tag": OTHER,
    "delete_experiment_tag": OTHER,
    "search_runs": SEARCH_RUNS,
    "log_batch": LOG_BATCH,
    "get_experiment": OTHER,
    "get_experiment_by_name": OTHER,
    "get_run": OTHER,
    "get_parent_run": OTHER,
    "create_run": OTHER,
    "update_run": OTHER,
    "set_terminated": OTHER,
    "delete_run": OTHER,
    "restore_run": OTHER,
    "log_param": OTHER,
    "log_metric": OTHER,
    "set_tag": OTHER,
    "delete_tag": OTHER,
    "get_metric_history": OTHER,
    "list_artifacts": OTHER,
    "download_artifacts": OTHER,
    "log_artifact": OTHER,
    "log_artifacts": OTHER,
    "log_text": OTHER,
    "log_dict": OTHER,
    "log_model": OTHER,
    "load_model": OTHER,
    "search_logged_models": OTHER,
    "get_logged_model": OTHER,
}


def operation_class(operation: str) -> str:
    """The rate-limit class an operation of the retrying client takes its tokens from."""
    return OPERATION_CLASSES.get(operation, OTHER)
