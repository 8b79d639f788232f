"""The run tools on the command line: dumps, system tags, model import, paths, bad input."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from mlflow.entities import Metric, Param, RunTag

from mlflow_spark_tools.cli.main import cli

BIN = Path(sys.executable).parent


def invoke(settings, *args):
    return CliRunner().invoke(cli, list(args), obj={"settings": settings, "engine": None})


def one_line_usage_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def dumped_run(client, experiment, tmp_path):
    run = client.create_run(experiment, run_name="dumped", start_time=1_596_573_697_304,
                            tags={"team": "ml"})
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=[Metric("rmse", 0.9, 1, 0), Metric("rmse", 0.7, 2, 1),
                                      Metric("bad", math.nan, 1, 0)],
                     params=[Param("max_depth", "4")], tags=[RunTag("note", "x: y")])
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "top.txt").write_bytes(b"12345")
    (tmp_path / "a" / "one.bin").write_bytes(b"x" * 100)
    (tmp_path / "a" / "b" / "deep.txt").write_bytes(b"y" * 7)
    client.log_artifacts(run_id, str(tmp_path))
    client.set_terminated(run_id, end_time=1_596_573_698_775)
    return run_id


def test_dump_run_as_json_yaml_and_text(settings, dumped_run, experiment):
    result = invoke(settings, "dump-run", "--run-id", dumped_run, "--artifacts")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    info = doc["info"]
    assert info["run_id"] == dumped_run and info["experiment_id"] == experiment
    assert info["experiment_name"].startswith("test-") and info["run_name"] == "dumped"
    assert info["_start_time"] == "2020-08-04 20:41:37.304 UTC"
    assert info["_duration"] == "1.471 seconds" and info["_duration_seconds"] == pytest.approx(1.471)
    assert doc["params"] == {"max_depth": "4"}
    assert doc["metrics"] == {"bad": "NaN", "rmse": 0.7}  # latest value; NaN as MLflow's REST writes it
    assert doc["tags"]["team"] == "ml" and doc["tags"]["note"] == "x: y"
    artifacts = doc["artifacts"]
    assert artifacts["total_bytes"] == 112 and artifacts["total_files"] == 3
    assert [e["path"] for e in artifacts["root"]] == ["a", "top.txt"]
    assert artifacts["root"][0]["children"][0]["children"] == [{"path": "a/b/deep.txt", "bytes": 7}]

    as_yaml = yaml.safe_load(invoke(settings, "dump-run", "--run-id", dumped_run, "--format", "yaml").stdout)
    assert as_yaml["params"] == doc["params"] and as_yaml["info"]["_duration"] == "1.471 seconds"
    assert "artifacts" not in as_yaml

    text = invoke(settings, "dump-run", "--run-id", dumped_run, "--format", "text", "--artifacts",
                  "--max-depth", "1").stdout
    lines = text.splitlines()
    assert lines[0] == "RunInfo:"
    assert "  start_time: 2020-08-04 20:41:37.304 UTC   1596573697304" in lines
    assert "  _duration:  1.471 seconds" in lines
    assert "Params:" in lines and "  max_depth: 4" in lines and "  rmse: 0.7" in lines
    assert "    Artifact 1/2 - level 1:" in lines and "      path: a/b" in lines
    assert "      (directory not listed: --max-depth)" in lines
    assert lines[-1] == "Total: bytes: 105 artifacts: 2"


def test_dump_experiment_by_id_and_name(settings, client, experiment, dumped_run):
    second = client.create_run(experiment, run_name="second").info.run_id
    deleted = client.create_run(experiment).info.run_id
    client.delete_run(deleted)
    client.set_experiment_tag(experiment, "owner", "team-a")
    result = invoke(settings, "dump-experiment", "--experiment-id", experiment, "--runs")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["experiment"]["tags"]["owner"] == "team-a"
    assert doc["runs_summary"] == {"total": 3, "active": 2, "deleted": 1,
                                   "by_status": {"FINISHED": 1, "RUNNING": 1}}
    assert [r["info"]["run_id"] for r in doc["runs"]] == [second, dumped_run]
    assert doc["runs"][1]["metrics"]["rmse"] == 0.7
    name = doc["experiment"]["name"]
    by_name = json.loads(invoke(settings, "dump-experiment", "--experiment-name", name, "--runs",
                                "--max-runs", "1").stdout)
    assert by_name["experiment"]["experiment_id"] == experiment and len(by_name["runs"]) == 1
    text = invoke(settings, "dump-experiment", "--name", name, "--format", "text").stdout  # the earlier spelling
    assert f"  name: {name}" in text and "  total: 3  active: 2  deleted: 1" in text


def test_system_tags_with_and_without_a_run(settings, client, experiment):
    table = invoke(settings, "system-tags")
    assert table.exit_code == 0
    row = next(line for line in table.stdout.splitlines() if "| mlflow.databricks.jobID " in line)
    assert [c.strip() for c in row.split("|")[2:7]] == ["-", "-", "-", "y", "-"]
    run_id = client.create_run(experiment, run_name="tagged", tags={"mlflow.source.type": "LOCAL",
                                                                  "mlflow.brand.new": "1"}).info.run_id
    report = json.loads(invoke(settings, "system-tags", "--run-id", run_id, "--format", "json").stdout)
    by_key = {r["key"]: r for r in report}
    assert by_key["mlflow.runName"]["present"] is True and by_key["mlflow.runName"]["value"] == "tagged"
    assert by_key["mlflow.source.type"]["value"] == "LOCAL"
    assert "mlflow.databricks.jobID" not in by_key and all(r["present"] for r in report)
    assert by_key["mlflow.brand.new"]["known"] is False and by_key["mlflow.brand.new"]["present"] is True
    whole = json.loads(invoke(settings, "system-tags", "--run-id", run_id, "--all", "--format", "json").stdout)
    assert {r["key"]: r for r in whole}["mlflow.databricks.jobID"]["present"] is False
    assert len(whole) > len(report)


@pytest.fixture
def sk_model():
    # a forest: its trees are types MLflow 3's default (skops) format refuses to save
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=3, bootstrap=False, random_state=0).fit(
        [[0.0], [1.0], [2.0], [3.0]], [1.0, 3.0, 5.0, 7.0])


def test_log_model_from_a_pickle_file_and_from_a_model_directory(settings, tracking_server, sk_model, tmp_path):
    model_file = tmp_path / "model.pkl"
    model_file.write_bytes(pickle.dumps(sk_model))
    name = f"imported-{os.getpid()}-{id(tmp_path)}"
    result = invoke(settings, "log-model", "--model-path", str(model_file), "--flavor", "sklearn",
                    "--experiment-name", name, "--run-name", "from-file", "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    mlflow.set_tracking_uri(tracking_server.url)
    loaded = mlflow.sklearn.load_model(out["model_uri"])
    assert np.allclose(loaded.predict([[3.0]]), [7.0])
    run = mlflow.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "from-file"
    assert run.data.tags["mlflow_spark_tools.imported_from"] == str(model_file)
    assert mlflow.get_experiment(out["experiment_id"]).name == name
    assert out["model_id"]

    saved = tmp_path / "saved"
    mlflow.sklearn.save_model(sk_model, str(saved), serialization_format="cloudpickle")
    again = invoke(settings, "log-model", "--model-path", str(saved), "--flavor", "sklearn",
                   "--experiment-name", name, "--artifact-path", "reg", "--format", "json")
    assert again.exit_code == 0, again.output
    second = json.loads(again.stdout)
    assert second["experiment_id"] == out["experiment_id"] and second["model_uri"].endswith("/reg")
    assert np.allclose(mlflow.pyfunc.load_model(second["model_uri"]).predict(np.array([[3.0]])), [7.0])


def test_a_pickle_others_can_write_needs_trust(settings, sk_model, tmp_path):
    model_file = tmp_path / "shared.pkl"
    model_file.write_bytes(pickle.dumps(sk_model))
    model_file.chmod(0o666)
    args = ["log-model", "--model-path", str(model_file), "--flavor", "sklearn",
            "--experiment-name", f"trust-{id(tmp_path)}"]
    one_line_usage_error(invoke(settings, *args), "--trust-pickle")
    assert invoke(settings, *args, "--trust-pickle").exit_code == 0


def test_bad_input_gets_one_line_and_exit_code_2(settings, client, experiment, tmp_path):
    one_line_usage_error(invoke(settings, "dump-run", "--run-id", "0" * 32), "0" * 32, "does not exist")
    one_line_usage_error(invoke(settings, "dump-run", "--run-id", "x", "--format", "xml"), "xml")
    one_line_usage_error(invoke(settings, "dump-experiment", "--experiment-id", "987654"), "987654")
    one_line_usage_error(invoke(settings, "dump-experiment", "--name", "no such experiment"),
                         "no such experiment")
    one_line_usage_error(invoke(settings, "dump-experiment"), "--experiment-id or --name")
    one_line_usage_error(invoke(settings, "system-tags", "--run-id", "f" * 32), "f" * 32)
    garbage, not_a_model = tmp_path / "garbage.pkl", tmp_path / "dict.pkl"
    garbage.write_bytes(b"\x00\x01 not a pickle")
    not_a_model.write_bytes(pickle.dumps({"a": 1}))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    for path, flavor, words in (
        (tmp_path / "missing.pkl", "sklearn", ["does not exist"]),
        (garbage, "sklearn", ["not a readable pickle"]),
        (not_a_model, "sklearn", ["not a scikit-learn model"]),
        (empty_dir, "sklearn", ["without an MLmodel"]),
        (garbage, "no_such_flavor", ["no_such_flavor"]),
        (garbage, "pyfunc", ["flavor"]),
        (garbage, "xgboost", ["save_model"]),
        (garbage, "keras", ["not installed"]),
        ("s3://bucket/model.pkl", "sklearn", ["not a file path"]),
    ):
        one_line_usage_error(invoke(settings, "log-model", "--model-path", str(path), "--flavor", flavor,
                                    "--experiment-name", "never-created"), *words)
    assert client.get_experiment_by_name("never-created") is None
    one_line_usage_error(invoke(settings, "paths", "dbfs:/a/../b"), "..")
    one_line_usage_error(invoke(settings, "paths", "/Volumes/main"), "/Volumes/<catalog>")


def test_traceback_shows_the_traceback_and_paths_prints_both_forms(settings):
    result = invoke(settings, "--traceback", "dump-run", "--run-id", "0" * 32)
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "RunNotFoundError: Run '" + "0" * 32 + "' does not exist" in result.stderr
    out = json.loads(invoke(settings, "paths", "dbfs:/ml/x", "/Volumes/c/s/v/f", "--format", "json").stdout)
    assert out == [
        {"path": "dbfs:/ml/x", "kind": "dbfs", "fuse_path": "/dbfs/ml/x", "uri": "dbfs:/ml/x"},
        {"path": "/Volumes/c/s/v/f", "kind": "volume", "fuse_path": "/Volumes/c/s/v/f",
         "uri": "dbfs:/Volumes/c/s/v/f"},
    ]


def test_console_script_prints_one_line(tracking_server):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_HTTP_REQUEST_MAX_RETRIES"}
    env.update(MLFLOW_TRACKING_URI=tracking_server.url, MLFLOW_SPARK_TOOLS_PROFILE="unlimited")
    done = subprocess.run([str(BIN / "mlflow-spark-tools"), "dump-run", "--run-id", "0" * 32],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"Error: Run {'0' * 32!r} does not exist on {tracking_server.url}."
