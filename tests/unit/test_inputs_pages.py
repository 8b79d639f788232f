"""Dataset inputs from run search pages, logged models and registry records as Arrow tables, and
how the registry URI is chosen."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from mlflow_spark_tools.errors import TrackingServerError
from mlflow_spark_tools.runs.run_batches import (
    INPUTS_COLUMN,
    INPUTS_SCHEMA,
    concat_pages,
    dataset_inputs,
    dedupe_latest,
    runs_to_table,
)
from mlflow_spark_tools.runs.run_search import runs_arrow
from mlflow_spark_tools.spark.arrow import _entries_type
from mlflow_spark_tools.tables.models_table import MODELS_SCHEMA, models_arrow
from mlflow_spark_tools.tables.registry_tables import model_versions_arrow, registered_models_arrow
from mlflow_spark_tools.tracking import model_search


def _input(name, digest, context=None, tags=(), **dataset):
    all_tags = [{"key": k, "value": v} for k, v in tags]
    if context is not None:
        all_tags.insert(0, {"key": "mlflow.data.context", "value": context})
    return {"tags": all_tags, "dataset": {"name": name, "digest": digest, **dataset}}


def _run(run_id, inputs=None, stage="active"):
    run = {"info": {"run_id": run_id, "experiment_id": "1", "status": "FINISHED", "start_time": "1000",
                    "lifecycle_stage": stage},
           "data": {"metrics": [{"key": "m", "value": "NaN", "step": 0, "timestamp": 1}]}}
    if inputs is not None:
        run["inputs"] = {"dataset_inputs": inputs}
    return run


def test_dataset_inputs_come_from_the_pages_one_row_per_input():
    page = runs_to_table([
        _run("a", [_input("train", "d1", "training", [("split", "x")], source_type="s3",
                          source='{"uri": "s3://b/t.csv"}', schema='{"mlflow_colspec": []}', profile='{"num_rows": 3}'),
                   _input("val", "d2")]),
        _run("b"),  # an MLflow server before 2.4: no inputs at all
        _run("c", []),
        _run("d", [_input("train", "d1", "training")]),
    ])
    assert page.num_rows == 4 and page[INPUTS_COLUMN].to_pylist()[1] == []
    inputs = dataset_inputs(page)
    assert inputs.schema == INPUTS_SCHEMA
    rows = inputs.to_pylist()
    assert [(r["run_id"], r["name"], r["digest"], r["context"]) for r in rows] == [
        ("a", "train", "d1", "training"), ("a", "val", "d2", None), ("d", "train", "d1", "training")]
    assert rows[0]["source_type"] == "s3" and rows[0]["source"] == '{"uri": "s3://b/t.csv"}'
    assert (rows[0]["schema"], rows[0]["profile"]) == ('{"mlflow_colspec": []}', '{"num_rows": 3}')
    assert rows[0]["tags"] == [{"key": "mlflow.data.context", "value": "training"}, {"key": "split", "value": "x"}]
    assert rows[1]["tags"] == [] and rows[1]["source"] is None
    # the run table's own columns and the search layout leave the inputs out
    assert INPUTS_COLUMN not in runs_arrow([[_run("a", [_input("t", "d")])]]).column_names


def test_inputs_follow_the_latest_page_of_a_run_and_empty_fetches():
    first = runs_to_table([_run("a", [_input("old", "d0")]), _run("b", [_input("keep", "d9")])])
    later = runs_to_table([_run("a", [_input("new", "d1"), _input("new2", "d2")], stage="deleted")])
    latest = dedupe_latest(concat_pages([first, later]))
    assert sorted((r["run_id"], r["name"]) for r in dataset_inputs(latest).to_pylist()) == [
        ("a", "new"), ("a", "new2"), ("b", "keep")]
    assert dataset_inputs(concat_pages([])).num_rows == 0
    assert dataset_inputs(concat_pages([concat_pages([]), first])).num_rows == 2


def test_logged_models_become_rows_with_maps_as_entries_and_numbers_from_json():
    table = models_arrow([{
        "info": {"model_id": "m-1", "experiment_id": "1", "name": "ridge", "creation_timestamp_ms": 1700000000000,
                 "last_updated_timestamp_ms": "1700000000500", "artifact_uri": "mlflow-artifacts:/1/models/m-1",
                 "status": "LOGGED_MODEL_READY", "model_type": "", "source_run_id": "r1",
                 "tags": [{"key": "team", "value": "ml"}]},
        "data": {"params": [{"key": "alpha", "value": "0.5"}],
                 "metrics": [{"key": "rmse", "value": "NaN", "timestamp": 1700000000100, "step": 2,
                              "dataset_name": "train", "dataset_digest": "d1", "run_id": "r1"},
                             {"key": "mae", "value": "-Infinity", "timestamp": "1700000000200"}]},
    }, {"info": {"model_id": "m-2", "name": "draft", "status": "LOGGED_MODEL_PENDING"}}])
    assert table.schema == MODELS_SCHEMA
    ready, pending = table.to_pylist()
    assert (ready["status"], ready["model_type"], ready["source_run_id"]) == ("READY", None, "r1")
    assert ready["last_updated_time"].timestamp() == 1700000000.5
    assert ready["params"] == [{"key": "alpha", "value": "0.5"}] and ready["tags"] == [{"key": "team", "value": "ml"}]
    mae, rmse = ready["metrics"]  # by key, whatever order the server answers in
    assert math.isnan(rmse["value"]) and (rmse["step"], rmse["dataset_name"], rmse["run_id"]) == (2, "train", "r1")
    assert mae["value"] == -math.inf and (mae["step"], mae["dataset_name"], mae["run_id"]) == (0, None, None)
    assert (pending["status"], pending["metrics"], pending["params"], pending["creation_time"]) == (
        "PENDING", [], [], None)


def test_registry_records_become_rows():
    models = registered_models_arrow([{"name": "m", "description": None, "creation_timestamp": 1000,
                                       "last_updated_timestamp": 2000, "aliases": [("champion", 3)],
                                       "tags": [("team", "ml")]}])
    assert models.to_pylist()[0]["aliases"] == [{"key": "champion", "value": 3}]
    versions = model_versions_arrow([{"name": "m", "version": 3, "aliases": ["champion"], "current_stage": None,
                                      "status": "READY", "source_run_id": "r", "model_id": None, "source": "runs:/r/m",
                                      "creation_timestamp": 1000, "last_updated_timestamp": None,
                                      "description": None, "tags": []}])
    row = versions.to_pylist()[0]
    assert (row["version"], row["aliases"], row["current_stage"], row["last_updated_time"]) == (3, ["champion"],
                                                                                                None, None)
    assert versions.schema.field("version").type == pa.int64()


def test_map_columns_are_staged_as_lists_of_entries():
    assert _entries_type("map<string,string>") == "array<struct<key:string,value:string>>"
    assert _entries_type("map<string, bigint>") == "array<struct<key:string,value:bigint>>"


def test_the_registry_uri_setting_then_mlflow_registry_uri_then_the_tracking_server(monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    assert model_search.registry_uri_for("databricks-uc", "http://t") == "databricks-uc"
    assert model_search.registry_uri_for(None, "http://elsewhere:5000") == "http://elsewhere:5000"
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: "http://own:5000")
    monkeypatch.setattr(mlflow, "get_registry_uri", lambda: "databricks-uc")
    assert model_search.registry_uri_for(None, "http://own:5000") == "databricks-uc"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://registry:5000")
    assert model_search.registry_uri_for(None, "http://own:5000") == "http://registry:5000"
    assert model_search.registry_uri_for("databricks", "http://own:5000") == "databricks"


@pytest.mark.parametrize("uri, unity_catalog", [
    ("databricks-uc", True), ("databricks-uc://profile", True), ("uc:http://localhost:8080", True),
    ("databricks", False), ("databricks://profile", False), ("http://127.0.0.1:5000", False),
    ("sqlite:///mlflow.db", False),
])
def test_unity_catalog_is_told_by_the_uri_scheme(uri, unity_catalog):
    assert model_search.is_unity_catalog(uri) is unity_catalog


def test_the_unity_catalog_filter_quotes_a_name_it_can():
    assert model_search._name_filter("main.ml.churn") == "name = 'main.ml.churn'"
    assert model_search._name_filter("it's") == 'name = "it\'s"'
    with pytest.raises(TrackingServerError, match="both quote characters"):
        model_search._name_filter("""a'b"c""")


def test_a_version_registered_from_a_logged_model_names_it_in_its_source():
    assert model_search.model_id_of_source("models:/m-0123abcd") == "m-0123abcd"
    for source in ("runs:/abc/model", "models:/churn/3", "models:/churn@champion", "s3://b/m", None, ""):
        assert model_search.model_id_of_source(source) is None


def test_the_registry_uri_setting_is_checked_and_never_printed():
    from mlflow_spark_tools.config import load_settings
    from mlflow_spark_tools.errors import InvalidConfigError

    settings = load_settings(environ={})
    assert settings.tables.registry_uri is None
    given = settings.with_overrides(tables__registry_uri="https://user:s3cret@registry.example.com")
    assert given.tables.registry_uri == "https://user:s3cret@registry.example.com"
    assert "s3cret" not in repr(given)
    with pytest.raises(InvalidConfigError, match="tables.registry_uri"):
        settings.with_overrides(tables__registry_uri="  ")
