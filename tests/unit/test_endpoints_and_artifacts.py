import os

import pytest

from mlflow_spark_tools.core.endpoints import api_class_of, endpoint_label
from mlflow_spark_tools.tracking.artifacts import files_to_upload, proxied_artifact_root
from mlflow_spark_tools.tracking.ratelimit import TokenBucket


@pytest.mark.parametrize("path, api_class", [
    ("/api/2.0/mlflow/runs/log-batch", "log_batch"),
    ("/ajax-api/2.0/mlflow/runs/log-batch", "log_batch"),
    ("/api/2.0/mlflow/runs/search", "search_runs"),
    # as Databricks documents: experiment list, update, delete and restore are the 7 qps class;
    # create, get and search are "all other APIs"
    ("/api/2.0/mlflow/experiments/search?max_results=5", "other"),
    ("/api/2.0/mlflow/experiments/create", "other"),
    ("/api/2.0/mlflow/experiments/get?experiment_id=1", "other"),
    ("/api/2.0/mlflow/experiments/set-experiment-tag", "other"),
    ("/api/2.0/mlflow/experiments/delete", "experiment_management"),
    ("/api/2.0/mlflow/experiments/update", "experiment_management"),
    ("/api/2.0/mlflow/experiments/restore", "experiment_management"),
    ("/api/2.0/mlflow/experiments/list", "experiment_management"),
    ("/api/2.0/mlflow/experiments/get-by-name?experiment_name=x", "other"),
    ("/api/2.0/mlflow/runs/create", "other"),
    ("/api/2.0/mlflow/metrics/get-history", "other"),
    ("/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model/MLmodel", "other"),
    ("/health", None),
    ("/static-files/index.html", None),
])
def test_api_classes(path, api_class):
    assert api_class_of(path) == api_class


def test_artifact_transfers_share_one_counter_label():
    assert endpoint_label("/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/x.txt") == "mlflow-artifacts/artifacts"
    assert endpoint_label("/api/2.0/mlflow/runs/create") == "runs/create"


@pytest.mark.parametrize("path, label", [
    ("/api/2.0/mlflow/logged-models", "logged-models"),
    ("/api/2.0/mlflow/logged-models/search", "logged-models/search"),
    ("/api/2.0/mlflow/logged-models/m-0a1b", "logged-models/{id}"),
    ("/api/2.0/mlflow/logged-models/m-0a1b/params", "logged-models/{id}/params"),
    ("/api/2.0/mlflow/logged-models/m-9/artifacts/credentials-for-upload",
     "logged-models/{id}/artifacts/credentials-for-upload"),
])
def test_the_requests_of_all_logged_models_share_their_labels(path, label):
    assert endpoint_label(path) == label and api_class_of(path) == "other"


def test_rejecting_bucket_allows_a_second_of_burst_then_says_when():
    now = [0.0]
    bucket = TokenBucket(4.0, 4.0, clock=lambda: now[0])
    assert [bucket.try_take() for _ in range(4)] == [0.0] * 4
    assert bucket.try_take() == pytest.approx(0.25)  # a rejected request takes no token
    assert bucket.try_take() == pytest.approx(0.25)
    now[0] += 0.25
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(0.25)


def test_files_to_upload_match_mlflow_layout(tmp_path):
    single = tmp_path / "plot.png"
    single.write_bytes(b"x")
    assert files_to_upload(str(single), None) == [(str(single), "plot.png")]
    assert files_to_upload(str(single), "plots/") == [(str(single), "plots/plot.png")]
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "MLmodel").write_text("m")
    (folder / "sub" / "w.bin").write_text("w")
    as_folder = files_to_upload(str(folder), "out")
    assert sorted(d for _, d in as_folder) == ["out/model/MLmodel", "out/model/sub/w.bin"]
    contents = files_to_upload(str(folder), "model", contents_only=True)
    assert sorted(d for _, d in contents) == ["model/MLmodel", "model/sub/w.bin"]
    assert all(os.path.isfile(f) for f, _ in contents)


def test_only_server_proxied_artifact_uris_are_uploaded_directly():
    assert proxied_artifact_root("mlflow-artifacts:/1/abc/artifacts") == "1/abc/artifacts"
    assert proxied_artifact_root("mlflow-artifacts://other-host/1/abc/artifacts") is None
    assert proxied_artifact_root("dbfs:/databricks/mlflow-tracking/1/abc/artifacts") is None
    assert proxied_artifact_root("s3://bucket/1/abc/artifacts") is None
