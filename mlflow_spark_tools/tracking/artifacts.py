"""Upload a run's artifacts with the caller's retry policy.

A tracking server that proxies artifacts (``mlflow-artifacts:/`` artifact URIs, the default of
``mlflow server``) takes them as plain ``PUT`` requests, which go through
:class:`~mlflow_spark_tools.tracking.rest_calls.TrackingRequests` like every other request: one
attempt per try, rate limits paced and counted, and a collector in a Spark task gives up within
seconds instead of retrying for minutes. Other artifact stores (a directory, cloud storage,
Databricks) are written by MLflow's own artifact repository for the run's artifact URI, one
file per operation of the same retry policy; the requests such a repository sends to the
tracking API itself (Databricks' signed-URL credentials) pass the same pacing layer
(:mod:`mlflow_spark_tools.tracking.pacing`), and MLflow's own retries are off for them.
"""

from __future__ import annotations

import os
import posixpath
import threading
import urllib.parse
from collections import OrderedDict
from typing import Any

from mlflow_spark_tools.core import private_apis
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests

ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"


def files_to_upload(local_path: str, artifact_path: str | None, *, contents_only: bool = False) -> list[tuple[str, str]]:
    """(local file, destination path in the run's artifacts) for a file or a directory.

    A directory lands as a folder of its own name under ``artifact_path`` (as
    ``mlflow.log_artifact`` does), or with ``contents_only`` its contents land directly
    there (as ``mlflow.log_artifacts`` and model directories do).
    """
    base = artifact_path.strip("/") if artifact_path else ""
    if not os.path.isdir(local_path):
        return [(local_path, posixpath.join(base, os.path.basename(local_path)))]
    root = os.path.abspath(local_path)
    if not contents_only:
        base = posixpath.join(base, os.path.basename(os.path.normpath(local_path)))
    out = []
    for directory, _, names in sorted(os.walk(root)):
        rel = os.path.relpath(directory, root)
        for name in sorted(names):
            parts = [p for p in (base, "" if rel == "." else rel.replace(os.sep, "/"), name) if p]
            out.append((os.path.join(directory, name), posixpath.join(*parts)))
    return out


def proxied_artifact_root(artifact_uri: str) -> str | None:
    """The path below the artifact proxy API for an ``mlflow-artifacts:/`` run artifact URI
    served by the tracking server itself; None for any other artifact store."""
    parsed = urllib.parse.urlsplit(artifact_uri)
    if parsed.scheme != "mlflow-artifacts" or parsed.netloc:
        return None
    return parsed.path.strip("/")


def upload_artifact(requests: TrackingRequests, run_id: str, artifact_uri: str | None, local_path: str,
                    artifact_path: str | None, *, contents_only: bool = False) -> int:
    """Upload a file or a directory to a run; returns the number of files sent.

    Every file is one operation of ``requests``' retry policy, and every request it causes,
    MLflow's artifact repository's own included, is paced and counted (:mod:`mlflow_spark_tools.tracking.pacing`).
    """
    files = files_to_upload(local_path, artifact_path, contents_only=contents_only)
    if artifact_uri is None:
        artifact_uri = requests.get_run(run_id)["info"]["artifact_uri"]
    root = proxied_artifact_root(artifact_uri)
    if root is not None and requests.tracking_uri.startswith(("http://", "https://")):
        for local_file, destination in files:
            path = urllib.parse.quote(f"{ARTIFACTS_API}/{root}/{destination}")
            requests.upload_file(path, local_file)
        return len(files)
    # Any other store through MLflow's repository for the run's artifact URI, which we know:
    # MlflowClient.log_artifact would ask the server for it again (runs/get) for every file.
    repository = artifact_repository(artifact_uri, requests.tracking_uri)
    for local_file, destination in files:
        directory = posixpath.dirname(destination)
        requests.run(f"upload {destination}", repository.log_artifact, local_file, directory or None)
    return len(files)


_REPOSITORIES: OrderedDict[tuple[str, str], Any] = OrderedDict()
_REPOSITORIES_LOCK = threading.Lock()
_MAX_REPOSITORIES = 256


def artifact_repository(artifact_uri: str, tracking_uri: str) -> Any:
    """MLflow's artifact repository for an artifact URI, as ``MlflowClient`` builds it (a
    ``databricks://profile`` tracking URI carries its profile into ``dbfs:/`` URIs), kept for
    the next files of the same run: a Databricks repository asks the tracking API for the
    run's artifact root once per instance."""
    key = (artifact_uri, tracking_uri)
    with _REPOSITORIES_LOCK:
        if key in _REPOSITORIES:
            _REPOSITORIES.move_to_end(key)
            return _REPOSITORIES[key]
    from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

    uri = add_databricks_profile_info_to_artifact_uri(artifact_uri, tracking_uri)
    repository = private_apis.artifact_repository(uri, tracking_uri)
    with _REPOSITORIES_LOCK:
        _REPOSITORIES[key] = repository
        while len(_REPOSITORIES) > _MAX_REPOSITORIES:
            _REPOSITORIES.popitem(last=False)
    return repository
