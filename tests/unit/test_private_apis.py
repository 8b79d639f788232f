"""The private MLflow and databricks-sdk names this package wraps still exist and behave."""

from __future__ import annotations

from mlflow_spark_tools.core import private_apis


def test_tracking_store_of_a_server_has_host_credentials_and_a_local_one_has_none(tmp_path):
    rest = private_apis.tracking_store("http://127.0.0.1:5999")
    assert rest.get_host_creds().host == "http://127.0.0.1:5999"
    local = private_apis.tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not hasattr(local, "get_host_creds")


def test_request_headers_come_from_the_registered_providers():
    headers = private_apis.request_headers()
    assert isinstance(headers, dict) and all(isinstance(k, str) for k in headers)
    assert "User-Agent" in headers


def test_traffic_id_and_workspace_are_unset_outside_databricks(monkeypatch):
    monkeypatch.delenv("_MLFLOW_DATABRICKS_TRAFFIC_ID", raising=False)
    assert private_apis.databricks_traffic_id() is None
    assert private_apis.request_workspace() is None


def test_workspace_paths_are_escaped_segment_by_segment():
    assert private_apis.escape_workspace_path("/Users/me@example.com/my exp") == "/Users/me%40example.com/my%20exp"


def test_proxied_artifact_uris_resolve_against_the_run_server_not_the_process_one(monkeypatch):
    # MLflow 2 would resolve them against MLFLOW_TRACKING_URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    repository = private_apis.artifact_repository("mlflow-artifacts:/1/abc/artifacts", "http://127.0.0.1:5999")
    assert repository.artifact_uri == "http://127.0.0.1:5999/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts"
    local = private_apis.artifact_repository("file:///tmp/artifacts/1", "http://127.0.0.1:5999")
    assert local.artifact_uri == "file:///tmp/artifacts/1"
