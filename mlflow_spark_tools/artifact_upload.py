"""Upload a run's artifacts with the caller's retry policy.

A tracking server that proxies artifacts (``mlflow-artifacts:/`` artifact URIs, the default of
``mlflow server``) takes them as plain ``PUT`` requests, which go through
:class:`~mlflow_spark_tools.tracking_requests.TrackingRequests` like every other request: one
attempt per try, rate limits paced and counted, and a collector in a Spark task gives up within
seconds instead of retrying for minutes. Other artifact stores (cloud storage, Databricks)
are written by MLflow's own artifact repository, with MLflow's retries.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse

from mlflow_spark_tools.tracking_requests import TrackingRequests

ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"


def files_to_upload(local_path: str, artifact_path: str | None, contents_only: bool = False) -> list[tuple[str, str]]:
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
                    artifact_path: str | None, contents_only: bool = False) -> int:
    """Upload a file or a directory to a run; returns the number of files sent."""
    files = files_to_upload(local_path, artifact_path, contents_only)
    root = proxied_artifact_root(artifact_uri) if artifact_uri else None
    if root is not None and requests.tracking_uri.startswith(("http://", "https://")):
        for local_file, destination in files:
            path = urllib.parse.quote(f"{ARTIFACTS_API}/{root}/{destination}")
            requests.upload_file(path, local_file)
        return len(files)
    from mlflow import MlflowClient

    client = MlflowClient(requests.tracking_uri)
    for local_file, destination in files:
        directory = posixpath.dirname(destination)
        client.log_artifact(run_id, local_file, directory or None)
    return len(files)
