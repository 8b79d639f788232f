import hashlib
import os

import pytest

from mlflow_spark_tools.failed_runs.document import (
    PayloadError,
    ReplayLimits,
    check_artifact_path,
    check_document,
    check_name,
    check_progress,
)
from mlflow_spark_tools.failed_runs.files import Budget, PayloadFolder, manifest_difference
from mlflow_spark_tools.failed_runs.store_entries import FORMAT, VERSION, new_payload_id


def _document(pid, **changes):
    doc = {
        "format": FORMAT, "version": VERSION, "payload_id": pid, "reason": "rate_limited: 429",
        "run_id": None, "ops_done": 0,
        "run": {"experiment_id": "1", "run_name": "r", "start_time": 1, "end_time": 2, "status": "FINISHED",
                "params": {"a": "1"}, "tags": {"t": "x"}, "metrics": [["m", 0.5, 1, 0]]},
        "artifacts": [{"artifact_path": "reports", "name": "r.txt", "is_dir": False,
                       "file": "artifacts/0/r.txt", "manifest": [["", 3, "a" * 64]]}],
        "models": [],
    }
    doc.update(changes)
    return doc


@pytest.mark.parametrize("path", ["a", "a/b", "a/b/", "model", "x.y/z-1 2"])
def test_relative_artifact_paths_pass(path):
    assert check_artifact_path(path, "t") == path.rstrip("/")


@pytest.mark.parametrize("path", ["/etc", "../x", "a/../b", "a//b", "./a", "a\\b", "s3://b/x", "C:/x",
                                  "a\nb", "x" * 1001, 5])
def test_artifact_paths_that_climb_or_name_another_store_are_refused(path):
    with pytest.raises(PayloadError):
        check_artifact_path(path, "t")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\x00", None, "x" * 256])
def test_names_are_single_components(name):
    with pytest.raises(PayloadError):
        check_name(name, "t")


def test_a_collector_document_passes_and_its_plan_is_known():
    pid = new_payload_id()
    payload = check_document(_document(pid), pid, ReplayLimits())
    assert payload.run.params == {"a": "1"} and payload.artifacts[0].manifest == (("", 3, "a" * 64),)
    assert [kind for kind, _ in payload.ops] == ["create", "batch", "artifact", "terminate"]


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"payload_id": "other"}, "does not match its file name"),
        ({"ops_done": 4}, "ops_done must be an integer from 0 to 3"),
        ({"ops_done": -1}, "ops_done"),
        ({"ops_done": 1}, "no run_id"),
        ({"run_id": "../../x", "ops_done": 1}, "is not a run id"),
        ({"run_id": ["a"], "ops_done": 1}, "is not a run id"),
        ({"artifacts": [{"artifact_path": None, "name": "r.txt", "is_dir": False, "file": "/etc/passwd"}]},
         "is not the collector's artifacts/0/r.txt"),
        ({"artifacts": [{"artifact_path": None, "name": "r.txt", "is_dir": "yes", "file": None}]}, "is_dir"),
        ({"artifacts": "all"}, "must be a list"),
        ({"models": [{"artifact_path": "m", "blob": "models/1.pkl", "sha256": "a" * 64}]},
         "is not the collector's models/0.pkl"),
        ({"models": [{"artifact_path": "m", "blob": "models/0.pkl", "sha256": "short"}]}, "sha256"),
        ({"models": [{"artifact_path": "m", "flavor": "os.system('x')", "blob": None}]}, "flavor"),
        ({"models": [{"artifact_path": "../m", "blob": None}]}, "must be relative"),
        ({"models": [{"artifact_path": "m", "blob": None, "logged_model_id": "m-1/../../runs/x"}]},
         "is not a model id"),
        ({"models": [{"artifact_path": "m", "blob": None, "logged_model_id": 7}]}, "is not a model id"),
    ],
)
def test_edited_documents_are_refused_with_their_reason(changes, reason):
    pid = new_payload_id()
    with pytest.raises(PayloadError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_document(_document(pid, **changes), pid, ReplayLimits())


@pytest.mark.parametrize(
    "run_changes, reason",
    [
        ({"status": "PWNED"}, "run status 'PWNED'"),
        ({"status": "RUNNING"}, "run status 'RUNNING'"),
        ({"experiment_id": "1; DROP"}, "is not an experiment id"),
        ({"experiment_id": None}, "names no experiment"),
        ({"tags": {"mlflow_spark_tools.payload_id": "x"}}, "reserved"),
        ({"start_time": -5}, "start_time"),
        ({"run_name": ["x"]}, "run_name"),
        ({"params": ["a"]}, "must be objects"),
        ({"metrics": [["m", 1.0, 1]]}, "malformed run data"),
        ({"inputs": {"name": "x"}}, "inputs and links must be lists"),
        ({"inputs": [{"name": "d", "digest": "x" * 37, "source_type": "local", "source": "/d"}]},
         "digest is 37 characters"),
        ({"inputs": [{"name": "d", "digest": "1", "source_type": "local", "source": "/d",
                      "tags": {"mlflow.data.context": "x" * 501}}]}, "at most 500 characters"),
        ({"inputs": [{"name": "d", "digest": "1", "source_type": "local"}]}, "source must be a non-empty string"),
        ({"links": [["m", 0.5, 1, 0, None, None, None, None]]}, "neither a model nor a dataset"),
        ({"links": [["m", 0.5, 1, 0, "model"]]}, "must have 8 fields"),
        ({"links": [["m", 0.5, 1, 0, "model", None, None, None]]}, "which the run does not log"),
        ({"links": [["m", 0.5, 1, 0, None, "../../x", None, None]]}, "is not a model id"),
        ({"links": [["m", 0.5, 1, 0, None, None, "d", None]]}, "both the dataset's name and digest"),
    ],
)
def test_run_fields_are_range_checked(run_changes, reason):
    pid = new_payload_id()
    document = _document(pid)
    document["run"].update(run_changes)
    with pytest.raises(PayloadError, match=reason):
        check_document(document, pid, ReplayLimits())


def test_inputs_and_links_add_their_requests_to_the_plan():
    pid = new_payload_id()
    document = _document(pid)
    document["run"]["inputs"] = [{"name": "train", "digest": "abc", "source_type": "local", "source": "/d",
                                  "schema": None, "profile": "{}", "tags": {"mlflow.data.context": "training"}}]
    document["run"]["links"] = [["m", 0.5, 1, 0, None, None, "train", "abc"]]
    payload = check_document(document, pid, ReplayLimits())
    assert [kind for kind, _ in payload.ops] == ["create", "batch", "inputs", "links", "artifact", "terminate"]
    assert payload.run.inputs[0]["tags"] == {"mlflow.data.context": "training"}
    document["run"]["links"] = [["m", 0.5, 1, 0, None, None, "train", "abc"]] * 11
    with pytest.raises(PayloadError, match="11 linked metric points, the limit is 10"):
        check_document(document, pid, ReplayLimits(max_metric_points=10))


def test_counts_over_the_limits_are_refused_before_anything_is_built():
    pid = new_payload_id()
    document = _document(pid)
    document["run"]["metrics"] = [["m", 1.0, 1, 0]] * 11
    with pytest.raises(PayloadError, match="11 metric points, the limit is 10"):
        check_document(document, pid, ReplayLimits(max_metric_points=10))
    with pytest.raises(Exception, match="replay.limits.max_params"):
        ReplayLimits(max_params=0)


def test_progress_is_range_checked_against_the_plan():
    pid = new_payload_id()
    payload = check_document(_document(pid), pid, ReplayLimits())
    assert check_progress({"run_id": "abc", "ops_done": 4, "attempts": 2}, payload) == ("abc", 4, 2)
    for bad in ({"ops_done": 5}, {"run_id": "a/b"}, {"ops_done": 1}, {"attempts": -1}):
        with pytest.raises(PayloadError):
            check_progress(bad, payload)


def _folder(tmp_path, pid):
    data = tmp_path / "data"
    (data / pid).mkdir(parents=True, exist_ok=True)
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return PayloadFolder.open(fd, pid)
    finally:
        os.close(fd)


def test_staging_copies_a_tree_with_its_digests(tmp_path):
    pid = new_payload_id()
    tree = tmp_path / "data" / pid / "artifacts" / "0" / "bundle"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"abc")
    (tree / "sub" / "b.txt").write_bytes(b"")
    staging = tmp_path / "staging"
    staging.mkdir()
    with _folder(tmp_path, pid) as folder:
        rows = folder.stage("artifacts/0/bundle", True, staging / "bundle", Budget(10, 100))
    assert rows == [("a.txt", 3, hashlib.sha256(b"abc").hexdigest()),
                    ("sub/b.txt", 0, hashlib.sha256(b"").hexdigest())]
    assert (staging / "bundle" / "a.txt").read_bytes() == b"abc"
    assert manifest_difference(tuple(rows), rows) is None
    assert "is missing" in manifest_difference(tuple(rows) + (("c.txt", 1, "0" * 64),), rows)
    assert "not in the document's manifest" in manifest_difference(tuple(rows[:1]), rows)
    assert "changed after it was collected" in manifest_difference((rows[0], ("sub/b.txt", 1, "0" * 64)), rows)


def test_staging_stops_at_the_budget(tmp_path):
    pid = new_payload_id()
    tree = tmp_path / "data" / pid / "artifacts" / "0"
    tree.mkdir(parents=True)
    (tree / "big.bin").write_bytes(b"x" * 1000)
    staging = tmp_path / "staging"
    staging.mkdir()
    with _folder(tmp_path, pid) as folder:
        with pytest.raises(PayloadError, match="max_artifact_bytes"):
            folder.stage("artifacts/0/big.bin", False, staging / "big.bin", Budget(10, 999))
        with pytest.raises(PayloadError, match="max_files"):
            folder.stage("artifacts/0/big.bin", False, staging / "big2.bin", Budget(0, 10_000))
        with pytest.raises(PayloadError, match="not a plain relative path"):
            folder.stage("artifacts/../x", False, staging / "x", Budget(10, 10_000))


def test_ids_are_whole_strings_and_numbers_too_large_are_bad_data():
    from mlflow_spark_tools.failed_runs.store_entries import is_payload_id

    pid = new_payload_id()
    assert is_payload_id(pid) and not is_payload_id(pid + "\n") and not is_payload_id(" " + pid)
    document = _document(pid)
    document["run"]["metrics"] = [["m", 10**400, 1, 0]]
    with pytest.raises(PayloadError, match="malformed run data"):
        check_document(document, pid, ReplayLimits())
    with pytest.raises(PayloadError, match="run_secret"):
        check_document(_document(pid, run_secret="not hex"), pid, ReplayLimits())
    with pytest.raises(PayloadError, match="is not a run id"):
        check_document(_document(pid, run_id="abc\n", ops_done=1), pid, ReplayLimits())


def test_a_model_keeps_the_logged_model_its_collector_created():
    pid = new_payload_id()
    model = {"artifact_path": "model", "flavor": "sklearn", "blob": None, "logged_model_id": "m-0a1b2c"}
    payload = check_document(_document(pid, models=[model]), pid, ReplayLimits())
    assert payload.models[0].logged_model_id == "m-0a1b2c"
    del model["logged_model_id"]
    assert check_document(_document(pid, models=[model]), pid, ReplayLimits()).models[0].logged_model_id is None
