"""The failed-run store's files, on a local disk and on the object-store FUSE mount."""

import errno
import json
import os
import time
import uuid

import pytest

from mlflow_spark_tools.errors import InvalidStoreError, UsageError
from mlflow_spark_tools.failed_runs.document import PayloadError
from mlflow_spark_tools.failed_runs.files import write_once
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import (
    DONE_FORMAT,
    FORMAT,
    VERSION,
    digest,
    is_payload_id,
    new_payload_id,
    parse_document_name,
)
from tests.support.object_store_fuse import settle


def _doc(pid):
    return {"format": FORMAT, "version": VERSION, "payload_id": pid, "run": {}}


def _done(pid, replayed_at_ms):
    return {"format": DONE_FORMAT, "payload_id": pid, "run_id": "r" * 32, "replayed_at": replayed_at_ms,
            "attempts": 1}


def test_payload_ids_are_unique_and_recognised():
    ids = {new_payload_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(is_payload_id(i) for i in ids)
    assert not is_payload_id("../../etc/passwd")


def test_document_names_say_payload_time_and_digest():
    pid = new_payload_id()
    plain = parse_document_name(f"{pid}.json")
    assert (plain.payload_id, plain.written_ms, plain.digest) == (pid, None, None)
    whole = parse_document_name(f"{pid}.1700000000000.{'a' * 32}.json")
    assert (whole.payload_id, whole.written_ms, whole.digest) == (pid, 1700000000000, "a" * 32)
    for foreign in (f"{pid}.17.{'a' * 32}.json", f"{pid}.1700000000000.{'A' * 32}.json", f"{pid}.txt",
                    "notes.json", f"../{pid}.json", f"{pid}@owner.json"):
        assert parse_document_name(foreign) is None, foreign


def test_publish_writes_one_whole_document_named_by_its_digest(store_path):
    store = FailedRunStore(store_path).ensure()
    pid = new_payload_id()
    path = store.publish(pid, _doc(pid))
    settle(store_path)
    (document,) = store.documents()
    assert (document.payload_id, document.state, document.name) == (pid, "pending", path.name)
    assert digest(path.read_bytes()) == document.digest
    assert abs(document.written_ms / 1000 - time.time()) < 60
    assert store.read_document(document)["payload_id"] == pid
    assert sorted(os.listdir(store_path)) == ["data", "done", "failed", "pending"]  # no tmp/, no claimed/
    assert store.ids("pending") == [pid] and store.ids("claimed") == []


def test_a_store_file_is_written_once(store_path):
    store = FailedRunStore(store_path).ensure()
    pid = new_payload_id()
    store.write_done(pid, _done(pid, 1))
    with pytest.raises(FileExistsError):
        store.write_done(pid, _done(pid, 2))
    assert store.result(pid)["replayed_at"] == 1
    folder = store.payload_folder(pid, create=True)
    with folder:
        folder.write_new_json("progress/begun.json", {"ops_done": 0})
        folder.write_new_json("progress/000001-owner.json", {"ops_done": 1})
        with pytest.raises(FileExistsError):
            folder.write_new_json("progress/begun.json", {"ops_done": 5})
        assert folder.exists("progress/begun.json") and not folder.exists("progress/000002-owner.json")
        settle(store_path)
        assert sorted(folder.names("progress")) == ["000001-owner.json", "begun.json"]
        assert folder.read_json("progress/begun.json") == {"ops_done": 0}


def test_the_object_store_mount_refuses_what_object_storage_lacks(object_store):
    """What the store must do without (the mount's semantics, checked here so a test that
    passes on it means something)."""
    folder = object_store / f"semantics {uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "a.json").write_text("{}")
    refusals = {
        "rename": lambda: os.rename(folder / "a.json", folder / "b.json"),
        "link": lambda: os.link(folder / "a.json", folder / "c.json"),
        "symlink": lambda: os.symlink(folder / "a.json", folder / "d.json"),
        "utime": lambda: os.utime(folder / "a.json"),
        "rewrite": lambda: (folder / "a.json").write_text("{}"),
        "append": lambda: open(folder / "a.json", "a").close(),
    }
    for what, operation in refusals.items():
        with pytest.raises(OSError) as refused:
            operation()
        assert refused.value.errno in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP), what
    assert time.time() - (folder / "a.json").stat().st_mtime > 86400  # the storage's clock is another one


def test_quarantine_moves_the_document_and_writes_a_reason(store_path):
    store = FailedRunStore(store_path).ensure()
    stray = store_path / "pending" / "notes.txt"
    stray.write_text("hi")
    settle(store_path)
    assert store.foreign_files() == [stray]
    assert store.quarantine(stray, stray.name, "foreign file")
    settle(store_path)
    failed = sorted(os.listdir(store_path / "failed"))
    assert len(failed) == 2 and not stray.exists()
    document = next(f for f in failed if not f.endswith(".reason.json"))
    assert (store_path / "failed" / document).read_text() == "hi"  # moved, or copied then removed
    reason = json.loads((store_path / "failed" / next(f for f in failed if f.endswith(".reason.json"))).read_text())
    assert reason["reason"] == "foreign file" and reason["source"] == "pending/notes.txt"
    assert store.quarantine(stray, stray.name, "gone") is False


def test_reason_files_are_numbered_never_overwritten(store_path):
    store = FailedRunStore(store_path).ensure()
    pid = new_payload_id()
    for reason in ("first", "second", "third"):
        path = store.publish(pid, _doc(pid) | {"reason": reason})
        assert store.quarantine(path, pid, reason)
    read = [json.loads((store_path / "failed" / name).read_text())["reason"]
            for name in (f"{pid}.reason.json", f"{pid}.reason.2.json", f"{pid}.reason.3.json")]
    assert read == ["first", "second", "third"]
    assert json.loads((store_path / "failed" / f"{pid}.json").read_text())["reason"] == "first"


def test_done_records_are_read_by_name_and_checked(store_path):
    store = FailedRunStore(store_path).ensure()
    pid = new_payload_id()
    assert store.read_done(pid) is None
    (store_path / "done" / f"{pid}.json").mkdir()
    with pytest.raises(PayloadError, match="not a file of this package"):
        store.read_done(pid)
    other = new_payload_id()
    (store_path / "done" / f"{other}.json").write_text("[1, 2]")
    with pytest.raises(PayloadError, match="not a JSON object"):
        store.read_done(other)
    with pytest.raises(ValueError):
        store.read_done("../x")


def test_a_store_that_cannot_be_written_is_one_clear_error(tmp_path):
    from tests.support.object_store_fuse import ObjectStoreMount, unavailable_reason

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(InvalidStoreError, match=f"at {not_a_folder}: creating and opening the store's folder failed"):
        FailedRunStore(not_a_folder).ensure()
    if unavailable_reason() is not None:
        pytest.skip(f"no object-store FUSE mount: {unavailable_reason()}")
    (tmp_path / "backing" / "store" / "pending").mkdir(parents=True)
    with ObjectStoreMount(tmp_path / "backing", tmp_path / "ro", read_only=True) as mount:
        with pytest.raises(InvalidStoreError) as refused:
            FailedRunStore(mount / "store").ensure()
        message = str(refused.value)
        assert "creating the folder" in message and "Read-only file system" in message
        assert str(mount / "store") in message and "\n" not in message


def test_check_usable_tries_every_operation_and_leaves_nothing(store_path):
    store = FailedRunStore(store_path).ensure()
    store.check_usable()
    assert os.listdir(store_path / "data") == []


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A write whose sync fails (a mount that could not upload, a full disk) removes what it
    wrote: no torn file is left under the name."""
    def failing_sync(fd):
        raise OSError(errno.EIO, "Input/output error")

    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        monkeypatch.setattr(os, "fsync", failing_sync)
        with pytest.raises(OSError, match="Input/output error"):
            write_once(folder, "x.json", b"{}" * 1000)
        monkeypatch.undo()
        assert os.listdir(tmp_path) == []
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EINVAL, "not synced")))
        write_once(folder, "y.json", b"{}")  # a mount that has no fsync: the file stands
        monkeypatch.undo()
        assert os.listdir(tmp_path) == ["y.json"]
    finally:
        os.close(folder)


def test_store_takes_dbfs_and_volumes_paths():
    assert FailedRunStore("dbfs:/ml/failed").root.as_posix() == "/dbfs/ml/failed"
    assert FailedRunStore("dbfs:/Volumes/main/ml/runs").root.as_posix() == "/Volumes/main/ml/runs"
    for bad in ("s3://bucket/x", "/Volumes/main", "dbfs:/ml/../x"):
        with pytest.raises(UsageError):
            FailedRunStore(bad)


def test_a_store_folder_replaced_by_a_link_is_refused(tmp_path):
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
    path = store.publish(pid, _doc(pid))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(tmp_path / "store" / "failed", tmp_path / "store" / "failed-moved")
    (tmp_path / "store" / "failed").symlink_to(elsewhere)
    assert store.quarantine(path, pid, "bad")
    assert list(elsewhere.iterdir()) == []
    assert sorted(os.listdir(tmp_path / "store" / "failed-moved")) == [f"{pid}.json", f"{pid}.reason.json"]


def test_an_earlier_releases_store_is_read(tmp_path):
    """pending/<id>.json and claimed/<id>@<owner>.json of a store written before: documents."""
    root = tmp_path / "store"
    for folder in ("pending", "claimed", "done", "failed", "data", "tmp"):
        (root / folder).mkdir(parents=True)
    pending, claimed = new_payload_id(), new_payload_id()
    (root / "pending" / f"{pending}.json").write_text(json.dumps(_doc(pending)))
    (root / "claimed" / f"{claimed}@host-1-abc.json").write_text(json.dumps(_doc(claimed)))
    for name in ("..@x.json", f"{claimed}@.json", "notes@x.json"):
        (root / "claimed" / name).write_text("{}")
    store = FailedRunStore(root).ensure()
    documents = {(d.payload_id, d.state, d.digest) for d in store.documents()}
    assert documents == {(pending, "pending", None), (claimed, "claimed", None)}
    assert store.ids("claimed") == [claimed] and store.ids("pending") == [pending]
    assert sorted(p.name for p in store.foreign_files("claimed")) == sorted(["..@x.json", f"{claimed}@.json",
                                                                             "notes@x.json"])
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


def test_checkpoints_are_never_written_through_a_linked_payload_folder(tmp_path):
    store = FailedRunStore(tmp_path / "store").ensure()
    pid = new_payload_id()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "store" / "data" / pid).symlink_to(elsewhere)
    with pytest.raises(PayloadError, match="symbolic link"):
        store.payload_folder(pid, create=True)
    assert list(elsewhere.iterdir()) == []


def _replayed(store, store_path, age_days, planted_link=None):
    """A payload replayed ``age_days`` ago (created a minute before), with a data file."""
    replayed = time.time() - age_days * 86400
    pid = f"{int((replayed - 60) * 1000)}-testhost-1-{uuid.uuid4().hex[:24]}"
    artifacts = store_path / "data" / pid / "artifacts" / "0"
    artifacts.mkdir(parents=True)
    (artifacts / "model.bin").write_bytes(b"x" * 1000)
    if planted_link is not None:  # a link to a folder outside the store, planted among the artifacts
        (artifacts / "escape").symlink_to(planted_link)
    store.write_done(pid, _done(pid, int(replayed * 1000)))
    return pid


def test_prune_goes_by_the_replay_time_in_the_record_not_by_file_times(store_path):
    """On the object-store mount every file looks 30 days old by its mtime; the store keeps a
    payload replayed yesterday all the same."""
    store = FailedRunStore(store_path).ensure()
    old, recent = _replayed(store, store_path, 10), _replayed(store, store_path, 1)
    pending = new_payload_id()
    store.publish(pending, _doc(pending))
    (store_path / "data" / pending).mkdir()
    settle(store_path)
    dry = store.prune_replayed(7 * 86400, dry_run=True)
    assert (dry.payloads, dry.kept_recent) == (1, 1) and dry.bytes > 1000
    assert sorted(store.ids("done")) == sorted([old, recent])  # a dry run removes nothing
    pruned = store.prune_replayed(7 * 86400)
    assert pruned.as_dict() == {k.replace("would_prune", "pruned"): v for k, v in dry.as_dict().items()}
    assert "would_prune" in dry.as_dict() and "pruned" not in dry.as_dict()
    settle(store_path)
    assert store.ids("done") == [recent] and store.result(recent)["run_id"] == "r" * 32
    assert sorted(os.listdir(store_path / "data")) == sorted([recent, pending])
    assert store.ids("pending") == [pending]


def test_prune_follows_no_link_and_keeps_payloads_also_waiting_or_quarantined(tmp_path, monkeypatch):
    root = tmp_path / "store"
    store = FailedRunStore(root).ensure()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the store's")
    ids = [_replayed(store, root, 30, planted_link=outside if i == 4 else None) for i in range(6)]
    # a copy of three of them elsewhere: pending, claimed by an earlier release, quarantined
    (root / "pending" / f"{ids[0]}.json").write_text(json.dumps(_doc(ids[0])))
    (root / "claimed").mkdir()
    (root / "claimed" / f"{ids[1]}@owner-1.json").write_text(json.dumps(_doc(ids[1])))
    (root / "failed" / f"{ids[2]}.json").write_text(json.dumps(_doc(ids[2])))
    store.close()
    store = FailedRunStore(root).ensure()
    # one whose data the file system refuses to remove (an immutable file, a fuse mount's error)
    from mlflow_spark_tools.failed_runs import store as store_module

    remove = store_module.remove_entry

    def refusing(name, dir_fd):
        if name == ids[3]:
            raise PermissionError(1, "Operation not permitted", "f")
        remove(name, dir_fd)

    monkeypatch.setattr(store_module, "remove_entry", refusing)
    pruned = store.prune_replayed(7 * 86400)
    for pid in ids[:3]:
        assert (root / "data" / pid / "artifacts" / "0" / "model.bin").exists()
    assert pruned.errors == [f"data/{ids[3]}: Operation not permitted"] and pruned.payloads == 2
    assert (root / "done" / f"{ids[3]}.json").exists()
    for pid in ids[4:]:
        assert not (root / "data" / pid).exists() and not (root / "done" / f"{pid}.json").exists()
    assert (outside / "keep.txt").read_text() == "not the store's"  # the link was removed, not followed
    with pytest.raises(ValueError):
        store.prune_replayed(float("nan"))


def test_prune_reads_an_earlier_releases_replay_time(tmp_path):
    root = tmp_path / "store"
    store = FailedRunStore(root).ensure()
    pid = f"{int((time.time() - 20 * 86400) * 1000)}-testhost-1-{uuid.uuid4().hex[:24]}"
    (root / "done" / f"{pid}.json").write_text(json.dumps(_doc(pid)))  # the document itself
    (root / "data" / pid).mkdir()
    (root / "data" / pid / "result.json").write_text(json.dumps({"run_id": "r", "replayed_at":
                                                                  int((time.time() - 86400) * 1000)}))
    assert store.prune_replayed(7 * 86400).kept_recent == 1
    assert store.prune_replayed(0.5 * 86400).payloads == 1


def test_retention_days_and_torn_grace_must_be_finite_numbers():
    from mlflow_spark_tools.config import ReplayConfig
    from mlflow_spark_tools.errors import InvalidConfigError

    for bad in (float("nan"), float("inf"), -1, "abc", True):
        with pytest.raises(InvalidConfigError):
            ReplayConfig(retention_days=bad)
        with pytest.raises(InvalidConfigError, match="torn_grace_seconds"):
            ReplayConfig(torn_grace_seconds=bad)
    assert ReplayConfig(retention_days=None).retention_days is None
