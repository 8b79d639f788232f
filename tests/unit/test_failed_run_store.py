import json
import os
import time
import uuid

import pytest

from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import FORMAT, VERSION, is_payload_id, new_payload_id


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


def test_a_store_folder_replaced_by_a_link_is_refused(tmp_path):
    from mlflow_spark_tools.errors import InvalidStoreError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "store"
    root.mkdir()
    (root / "failed").symlink_to(elsewhere)
    with pytest.raises(InvalidStoreError, match="failed/ is a symbolic link"):
        FailedRunStore(root).ensure()
    assert list(elsewhere.iterdir()) == []


def test_folders_are_held_open_so_a_later_swap_redirects_nothing(tmp_path):
    store = FailedRunStore(tmp_path / "store").ensure()
    pid = new_payload_id()
    store.publish(pid, _doc(pid))
    claim = store.claim(pid, "a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(tmp_path / "store" / "failed", tmp_path / "store" / "failed-moved")
    (tmp_path / "store" / "failed").symlink_to(elsewhere)
    assert store.quarantine(claim.path, pid, "bad")
    assert list(elsewhere.iterdir()) == []
    assert sorted(os.listdir(tmp_path / "store" / "failed-moved")) == [f"{pid}.json", f"{pid}.reason.json"]


def test_claims_and_ids_take_only_well_formed_names(tmp_path):
    store = FailedRunStore(tmp_path).ensure()
    pid = new_payload_id()
    for name in ("..@x.json", f"{pid}@.json", "notes@x.json"):
        (tmp_path / "claimed" / name).write_text("{}")
    (tmp_path / "claimed" / f"{pid}@owner-1.json").write_text("{}")
    assert [c.payload_id for c, _ in store.claims()] == [pid] and store.ids("claimed") == [pid]
    foreign = sorted(p.name for p in store.foreign_files("claimed"))
    assert foreign == sorted(["..@x.json", f"{pid}@.json", "notes@x.json"])
    with pytest.raises(ValueError):
        store.data_dir("..")


def test_documents_are_not_followed_through_links_nor_read_over_the_limit(tmp_path):
    store = FailedRunStore(tmp_path / "store").ensure()
    pid = new_payload_id()
    outside = tmp_path / "doc.json"
    outside.write_text(json.dumps(_doc(pid)))
    link = tmp_path / "store" / "pending" / f"{pid}.json"
    link.symlink_to(outside)
    with pytest.raises(ValueError, match="symbolic link"):
        store.read_document(link)
    link.unlink()
    link.write_text(json.dumps(_doc(pid)) + " " * 5000)
    with pytest.raises(ValueError, match="over the limits"):
        store.read_document(link, max_bytes=1000)
    link.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        store.read_document(link)


def test_progress_is_never_written_through_a_linked_payload_folder(tmp_path):
    from mlflow_spark_tools.failed_runs.document import PayloadError

    store = FailedRunStore(tmp_path / "store").ensure()
    pid = new_payload_id()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "store" / "data" / pid).symlink_to(elsewhere)
    with pytest.raises(PayloadError, match="symbolic link"):
        store.write_progress(pid, {"ops_done": 1})
    with pytest.raises(PayloadError, match="symbolic link"):
        store.read_progress(pid)
    assert list(elsewhere.iterdir()) == []


def test_reason_files_are_numbered_never_overwritten(tmp_path):
    store = FailedRunStore(tmp_path).ensure()
    pid = new_payload_id()
    for reason in ("first", "second", "third"):
        store.publish(pid, _doc(pid))
        assert store.quarantine(tmp_path / "pending" / f"{pid}.json", pid, reason)
    read = [json.loads((tmp_path / "failed" / name).read_text())["reason"]
            for name in (f"{pid}.reason.json", f"{pid}.reason.2.json", f"{pid}.reason.3.json")]
    assert read == ["first", "second", "third"]
    assert store.quarantine(tmp_path / "pending" / f"{pid}.json", pid, "gone") is False


def test_prune_removes_only_replayed_payloads_past_the_retention_and_follows_no_link(tmp_path):
    store = FailedRunStore(tmp_path / "store").ensure()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the store's")

    def replayed(age_days, planted_link=False):
        # created a little before its replay (an id starts with its creation time in ms)
        created = int((time.time() - age_days * 86400 - 60) * 1000)
        pid = f"{created}-testhost-1-{uuid.uuid4().hex[:24]}"
        store.publish(pid, _doc(pid))
        artifacts = tmp_path / "store" / "data" / pid / "artifacts" / "0"
        artifacts.mkdir(parents=True)
        (artifacts / "model.bin").write_bytes(b"x" * 1000)
        if planted_link:  # a link to a folder outside the store, planted among the artifacts
            (artifacts / "escape").symlink_to(outside)
        claim = store.claim(pid, "a")
        assert store.finish(claim, {"run_id": "r"})
        when = time.time() - age_days * 86400
        os.utime(tmp_path / "store" / "done" / f"{pid}.json", (when, when))
        return pid

    old, linked, recent = replayed(10), replayed(9, planted_link=True), replayed(1)
    pending = new_payload_id()
    store.publish(pending, _doc(pending))
    quarantined = new_payload_id()
    store.publish(quarantined, _doc(quarantined))
    store.quarantine(tmp_path / "store" / "pending" / f"{quarantined}.json", quarantined, "bad")
    for pid in (pending, quarantined):
        old_file = time.time() - 30 * 86400
        (tmp_path / "store" / "data" / pid).mkdir()
        for state in ("pending", "failed"):
            path = tmp_path / "store" / state / f"{pid}.json"
            if path.exists():
                os.utime(path, (old_file, old_file))

    dry = store.prune_replayed(7 * 86400, dry_run=True)
    assert (dry.payloads, dry.kept_recent) == (2, 1) and dry.bytes > 2000
    assert sorted(store.ids("done")) == sorted([old, linked, recent])  # a dry run removes nothing

    pruned = store.prune_replayed(7 * 86400)
    assert pruned.as_dict() == dry.as_dict()
    assert store.ids("done") == [recent] and store.result(recent) == {"run_id": "r"}
    data = {p.name for p in (tmp_path / "store" / "data").iterdir()}
    assert data == {recent, pending, quarantined}
    assert store.ids("pending") == [pending] and store.ids("failed") == [quarantined]
    assert (outside / "keep.txt").read_text() == "not the store's"  # the link was removed, not followed


def test_prune_keeps_data_of_a_payload_also_pending_claimed_or_quarantined_and_goes_on_past_errors(
        tmp_path, monkeypatch):
    root = tmp_path / "store"
    store = FailedRunStore(root).ensure()
    old = time.time() - 30 * 86400
    ids = [f"{int(old * 1000)}-testhost-1-{uuid.uuid4().hex[:24]}" for _ in range(5)]
    for pid in ids:
        (root / "data" / pid).mkdir()
        (root / "data" / pid / "model.bin").write_bytes(b"m")
        (root / "done" / f"{pid}.json").write_text(json.dumps(_doc(pid)))
        os.utime(root / "done" / f"{pid}.json", (old, old))
    # a copy of three of them elsewhere: pending, claimed, quarantined
    (root / "pending" / f"{ids[0]}.json").write_text(json.dumps(_doc(ids[0])))
    (root / "claimed" / f"{ids[1]}@owner-1.json").write_text(json.dumps(_doc(ids[1])))
    (root / "failed" / f"{ids[2]}.json").write_text(json.dumps(_doc(ids[2])))
    # one whose data the file system refuses to remove (an immutable file, a fuse mount's error)
    from mlflow_spark_tools.failed_runs import store as store_module

    remove = store_module._remove_entry

    def refusing(name, dir_fd):
        if name == ids[3]:
            raise PermissionError(1, "Operation not permitted", "f")
        remove(name, dir_fd)

    monkeypatch.setattr(store_module, "_remove_entry", refusing)
    pruned = store.prune_replayed(7 * 86400)
    for pid in ids[:3]:
        assert (root / "data" / pid / "model.bin").exists()
    assert pruned.errors == [f"data/{ids[3]}: Operation not permitted"] and pruned.payloads == 1
    assert (root / "done" / f"{ids[3]}.json").exists()
    assert not (root / "data" / ids[4]).exists() and not (root / "done" / f"{ids[4]}.json").exists()
    with pytest.raises(ValueError):
        store.prune_replayed(float("nan"))


def test_retention_days_must_be_a_finite_number():
    from mlflow_spark_tools.config import ReplayConfig
    from mlflow_spark_tools.errors import InvalidConfigError

    for bad in (float("nan"), float("inf"), -1, "abc", True):
        with pytest.raises(InvalidConfigError):
            ReplayConfig(retention_days=bad)
    assert ReplayConfig(retention_days=None).retention_days is None
