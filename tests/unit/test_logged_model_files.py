import mlflow.entities
import pytest
import yaml

from mlflow_spark_tools.runs.models import stamp_logged_model
from mlflow_spark_tools.tracking.logged_models import valid_name


@pytest.mark.skipif(not hasattr(mlflow.entities, "LoggedModel"), reason="logged models are MLflow 3's")
def test_a_saved_model_names_the_logged_model_it_becomes(tmp_path):
    from mlflow.models import Model

    Model(flavors={"python_function": {"loader_module": "x"}}).save(str(tmp_path / "MLmodel"))
    stamp_logged_model(str(tmp_path), "m-0a1b", "run1", "mlflow-artifacts:/1/models/m-0a1b/artifacts")
    written = yaml.safe_load((tmp_path / "MLmodel").read_text())
    assert written["model_id"] == written["model_uuid"] == "m-0a1b" and written["run_id"] == "run1"
    assert written["artifact_path"] == "mlflow-artifacts:/1/models/m-0a1b/artifacts"
    assert "python_function" in written["flavors"]


def test_a_directory_without_mlmodel_is_left_as_it_is(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"w")
    stamp_logged_model(str(tmp_path), "m-1", "run1", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


@pytest.mark.parametrize("name, ok", [("model", True), ("my-model_2", True), ("models/ridge", False),
                                      ("model.v2", False), ("a:b", False), ("", False), ("50%", False)])
def test_names_mlflow_takes_for_a_logged_model(name, ok):
    assert valid_name(name) is ok


def test_only_a_missing_endpoint_means_a_server_without_logged_models():
    from mlflow.exceptions import MlflowException, RestException

    from mlflow_spark_tools.tracking.rate_limit_errors import endpoint_missing as _endpoint_missing

    assert _endpoint_missing(MlflowException("failed with error code 404 != 200", error_code="ENDPOINT_NOT_FOUND"))
    assert not _endpoint_missing(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST",
                                                "message": "No Experiment with id=7 exists"}))
    assert not _endpoint_missing(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad name"}))
    assert not _endpoint_missing(ConnectionError("refused"))
