import json
import os
import time

import pytest

from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.failed_run_store import FORMAT, VERSION, FailedRunStore, is_payload_id, new_payload_id


def _doc(pid):
    return {"format": FORMAT, "version": VERSION, "payload_id": pid, "run": {}}


def test_payload_ids_are_unique_and_recognised():
    ids = {new_payload_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(is_payload_id(i) for i in ids)
    assert not is_payload_id("../../etc/passwd")


def test_publish_claim_finish_cycle(tmp_path):
    store = FailedRunStore(tmp_path).ensure()
    pid = new_payload_id()
    store.publish(pid, _doc(pid))
    assert store.ids("pending") == [pid]
    assert not os.listdir(tmp_path / "tmp")
    claim = store.claim(pid, "a")
    assert claim is not None and store.claim(pid, "b") is None
    assert store.ids("pending") == [] and store.ids("claimed") == [pid]
    assert store.read_document(claim.path)["payload_id"] == pid
    store.write_progress(pid, {"ops_done": 2})
    assert store.read_progress(pid) == {"ops_done": 2}
    assert store.finish(claim, {"run_id": "r"})
    assert store.ids("done") == [pid] and store.result(pid) == {"run_id": "r"}


def test_an_expired_lease_is_taken_over_once(tmp_path):
    store = FailedRunStore(tmp_path).ensure()
    pid = new_payload_id()
    store.publish(pid, _doc(pid))
    first = store.claim(pid, "a")
    old = time.time() - 1000
    os.utime(first.path, (old, old))
    (stale, heartbeat), = store.claims()
    assert heartbeat == pytest.approx(old)
    taken = store.take_over(stale, "b")
    assert taken is not None and store.take_over(stale, "c") is None
    assert not store.holds(first) and not store.heartbeat(first)
    assert store.holds(taken) and store.heartbeat(taken)


@pytest.mark.parametrize(
    "content, reason",
    [
        ("{not json", "corrupt or truncated"),
        ('{"format": "mlflow-spark-tools/failed-run", "version": 99}', "version 99"),
        ('{"hello": "world"}', "foreign"),
        ('[1, 2]', "foreign"),
    ],
)
def test_bad_documents_say_why(tmp_path, content, reason):
    store = FailedRunStore(tmp_path).ensure()
    path = tmp_path / "pending" / f"{new_payload_id()}.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=reason):
        store.read_document(path)


def test_quarantine_keeps_the_file_and_writes_a_reason(tmp_path):
    store = FailedRunStore(tmp_path).ensure()
    stray = tmp_path / "pending" / "notes.txt"
    stray.write_text("hi")
    assert store.foreign_files() == [stray]
    store.quarantine(stray, stray.name, "foreign file")
    failed = os.listdir(tmp_path / "failed")
    assert len(failed) == 2
    reason = json.loads((tmp_path / "failed" / next(f for f in failed if f.endswith(".reason.json"))).read_text())
    assert reason["reason"] == "foreign file" and reason["source"] == "notes.txt"


def test_store_takes_dbfs_and_volumes_paths():
    assert FailedRunStore("dbfs:/ml/failed").root.as_posix() == "/dbfs/ml/failed"
    assert FailedRunStore("dbfs:/Volumes/main/ml/runs").root.as_posix() == "/Volumes/main/ml/runs"
    for bad in ("s3://bucket/x", "/Volumes/main", "dbfs:/ml/../x"):
        with pytest.raises(UsageError):
            FailedRunStore(bad)
