"""Which artifact locations would receive the replay's tracking credentials (document.py)."""

from __future__ import annotations

import pytest

from mlflow_spark_tools.config import InvalidConfigError, ReplayConfig
from mlflow_spark_tools.failed_runs.document import foreign_artifact_host

SERVER = "http://127.0.0.1:5000"


@pytest.mark.parametrize("uri", [
    None, "", "dbfs:/databricks/mlflow-tracking/1/abc/artifacts", "s3://bucket/mlflow/1", "/tmp/artifacts",
    "mlflow-artifacts:/1/abc/artifacts",                  # no host: the tracking server's own
    "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/1",
    "mlflow-artifacts://127.0.0.1:5000/1/abc/artifacts",
    "HTTP://user:pw@127.0.0.1:5000/x",                     # userinfo and case do not matter
])
def test_the_tracking_server_and_hostless_locations_are_not_foreign(uri):
    assert foreign_artifact_host(uri, SERVER) is None


@pytest.mark.parametrize(("uri", "host"), [
    ("http://evil.example/artifacts", "evil.example:80"),
    ("https://evil.example/artifacts", "evil.example:443"),
    ("mlflow-artifacts://evil.example:5000/1", "evil.example:5000"),
    ("http://127.0.0.1:5001/artifacts", "127.0.0.1:5001"),  # another port is another server
    ("mlflow-artifacts://evil.example/1", "evil.example"),
    ("http://127.0.0.1:notaport/x", "127.0.0.1:-1"),
])
def test_another_host_is_named(uri, host):
    assert foreign_artifact_host(uri, SERVER) == host


def test_listed_hosts_are_allowed():
    assert foreign_artifact_host("https://artifacts.corp/x", SERVER, ("artifacts.corp",)) is None
    assert foreign_artifact_host("https://artifacts.corp/x", SERVER, ("artifacts.corp:443",)) is None
    assert foreign_artifact_host("https://artifacts.corp/x", SERVER, ("artifacts.corp:8443",)) == "artifacts.corp:443"
    assert foreign_artifact_host("http://evil.example/x", "databricks", ()) == "evil.example:80"


def test_the_setting_takes_a_list_of_names():
    assert ReplayConfig(artifact_hosts=["a.corp", " b.corp:9000 "]).artifact_hosts == ("a.corp", "b.corp:9000")
    for bad in ("a.corp", [""], [3]):
        with pytest.raises(InvalidConfigError, match="replay.artifact_hosts"):
            ReplayConfig(artifact_hosts=bad)
