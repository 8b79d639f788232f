"""Payloads an attacker with write access to the store would write, against a real server.

Each case asserts its quarantine reason; every test also asserts what must never happen:
a file outside the payload read (the planted secret found anywhere in the server's artifact
store), a write outside the payload's own run (the victim run unchanged), a file written
outside the store (the attacker's directory unchanged), or the replayer stopping. What an
attacker can do on object storage too (edit documents, checkpoints and records, replace files)
is tried on the object-store FUSE mount as well; links, FIFOs and sparse files only exist on a
local disk.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest

from mlflow_spark_tools.config import RateLimitProfile, ReplayLimits
from mlflow_spark_tools.failed_runs.collector import DEFERRED, FailedRunCollector
from mlflow_spark_tools.failed_runs.document import PAYLOAD_TAG, canonical_json
from mlflow_spark_tools.failed_runs.replayer import LOST, Replayer
from mlflow_spark_tools.failed_runs.signing import KEY_ENV, SigningKey
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import DONE_FORMAT
from tests.support.object_store_fuse import mount_of, settle

from .run_content import assert_run_complete, log_sample_run, runs_by_index
from .store_files import document_path, move, read_document, replace_document, replace_file

UNLIMITED = RateLimitProfile.load("unlimited")


@pytest.fixture
def secret(tmp_path):
    """A directory outside the store holding a file the replay identity can read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    value = f"TOP-SECRET-{uuid.uuid4().hex}"
    (outside / "secret.txt").write_text(value)
    return outside, value


@pytest.fixture
def victim(client):
    """A finished run in another experiment, with a param, a metric and an artifact; returns
    its id and a function that snapshots everything an attacker would like to change."""
    experiment = client.create_experiment(f"victim-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment, run_name="victim")
    client.log_param(run.info.run_id, "lr", "0.1")
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"victim-{uuid.uuid4().hex}.txt"), "w") as f:
        f.write("victim artifact")
    client.log_artifact(run.info.run_id, f.name, "files")
    os.remove(f.name)
    client.set_terminated(run.info.run_id, "FINISHED")

    def snapshot():
        r = client.get_run(run.info.run_id)
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]
        listing = [(a.path, a.file_size) for a in client.list_artifacts(run.info.run_id)]
        listing += [(a.path, a.file_size) for a in client.list_artifacts(run.info.run_id, "files")]
        return r.info.status, r.info.end_time, r.data.params, r.data.tags, history, sorted(listing)

    return run.info.run_id, run.info.artifact_uri, snapshot


def _defer(closed_proxy, store_path, experiment, n, with_model=False, signing_key=None):
    collector = FailedRunCollector(store_path, tracking_uri=closed_proxy.url, fail_fast_seconds=0.3,
                                   signing_key=signing_key)
    ids = []
    for i in range(n):
        status, run_id, payload_id = log_sample_run(collector, experiment, i, with_model=with_model)
        assert status == DEFERRED and run_id is None
        ids.append(payload_id)
    return ids


class Payloads:
    """Read and rewrite the payloads of a store as an attacker would."""

    def __init__(self, store_path: Path, ids: list[str], key: SigningKey | None = None) -> None:
        self.store = FailedRunStore(store_path)
        self.ids = ids
        self.key = key
        settle(store_path)

    def path(self, i: int) -> Path:
        return document_path(self.store.root, self.ids[i])

    def doc(self, i: int) -> dict:
        return read_document(self.store.root, self.ids[i])

    def put(self, i: int, document: dict, sign: bool = False) -> None:
        document.pop("signature", None)
        if sign:
            document["signature"] = self.key.sign(canonical_json(document))
        replace_document(self.store.root, self.ids[i], document)

    def write(self, i: int, data: str) -> None:
        """Replace the document's bytes (named by their digest: whole, whatever they hold)."""
        replace_document(self.store.root, self.ids[i], data)

    def data(self, i: int) -> Path:
        return self.store.root / "data" / self.ids[i]

    def reason(self, i: int) -> str:
        return json.loads((self.store.root / "failed" / f"{self.ids[i]}.reason.json").read_text())["reason"]


def _replay_in_thread(replayer: Replayer, timeout: float = 240.0):
    """One pass; fails instead of hanging if a payload blocks the replayer (a FIFO, say)."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("summary", replayer.run()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the replayer hung on a payload"
    return out["summary"]


def _secret_leaked(tracking_server, value: str) -> list[str]:
    """Files of the server's artifact store that hold the secret."""
    hits = []
    for directory, _, names in os.walk(tracking_server.root / "artifacts"):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                if value.encode() in f.read():
                    hits.append(path)
    return hits


def test_unsigned_store_payloads_cannot_read_or_redirect(closed_proxy, tracking_server, client, experiment,
                                                         tmp_path, secret, victim, monkeypatch, make_replayer):
    """No signing key anywhere: the replay still refuses every file reference outside the
    payload and every run it did not create."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    outside, value = secret
    victim_id, victim_artifact_uri, victim_snapshot = victim
    before = victim_snapshot()
    store_path = tmp_path / "store"
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 25))
    other = _defer(closed_proxy, tmp_path / "other-store", experiment, 1, with_model=True,
                   signing_key=SigningKey("k" * 32))
    other_blob = tmp_path / "other-store" / "data" / other[0] / "models" / "0.pkl"
    expected: dict[int, str] = {}

    def artifact(i):
        return p.data(i) / "artifacts" / "0" / "report.txt"

    # 0: an absolute path to a file of the replay host
    d = p.doc(0)
    d["artifacts"][0]["file"] = str(outside / "secret.txt")
    p.put(0, d)
    expected[0] = "is not the collector's artifacts/0/report.txt"
    # 1: '..' out of the payload folder
    d = p.doc(1)
    d["artifacts"][0]["file"] = "../../../outside/secret.txt"
    p.put(1, d)
    expected[1] = "is not the collector's"
    # 2: the artifact copy replaced by a link to the secret
    artifact(2).unlink()
    artifact(2).symlink_to(outside / "secret.txt")
    expected[2] = "artifacts/0/report.txt is a symbolic link"
    # 3: a folder on the way replaced by a link to a folder laid out like the payload
    decoy = outside / "decoy3" / "0"
    decoy.mkdir(parents=True)
    shutil.copy(outside / "secret.txt", decoy / "report.txt")
    shutil.rmtree(p.data(3) / "artifacts")
    (p.data(3) / "artifacts").symlink_to(outside / "decoy3")
    expected[3] = "artifacts is a symbolic link"
    # 4: the payload folder itself a link (reads, and progress.json / result.json writes)
    (outside / "decoy4" / "artifacts" / "0").mkdir(parents=True)
    shutil.copy(outside / "secret.txt", outside / "decoy4" / "artifacts" / "0" / "report.txt")
    shutil.rmtree(p.data(4))
    p.data(4).symlink_to(outside / "decoy4")
    expected[4] = f"data/{p.ids[4]} is a symbolic link"
    # 5: a directory where the document says a file
    artifact(5).unlink()
    artifact(5).mkdir()
    shutil.copy(outside / "secret.txt", artifact(5) / "secret.txt")
    expected[5] = "is a directory where the document says a file"
    # 6: a directory artifact with a link deep inside it
    d = p.doc(6)
    d["artifacts"][0].update(name="bundle", is_dir=True, file="artifacts/0/bundle", manifest=None)
    p.put(6, d)
    (p.data(6) / "artifacts" / "0" / "bundle" / "sub").mkdir(parents=True)
    (p.data(6) / "artifacts" / "0" / "bundle" / "ok.txt").write_text("fine")
    (p.data(6) / "artifacts" / "0" / "bundle" / "sub" / "leak.txt").symlink_to(outside / "secret.txt")
    expected[6] = "bundle/sub/leak.txt is a symbolic link"
    # 7: a FIFO: opening it for reading would block the replayer forever
    artifact(7).unlink()
    os.mkfifo(artifact(7))
    expected[7] = "is not a regular file"
    # 8: a hard link to the secret (looks like a regular file)
    artifact(8).unlink()
    os.link(outside / "secret.txt", artifact(8))
    expected[8] = "has other hard links"
    # 9: another payload's signed model blob named by its absolute path
    d = p.doc(9)
    d["models"] = [{"artifact_path": "model", "flavor": "sklearn", "blob": str(other_blob),
                    "sha256": "0" * 64, "signature": None}]
    p.put(9, d)
    expected[9] = "is not the collector's models/0.pkl"
    # 10: the victim's run id, as if the collector had created it
    d = p.doc(10)
    d.update(run_id=victim_id, ops_done=1)
    p.put(10, d)
    expected[10] = f"run_id {victim_id} names a run this payload did not create"
    # 11: the victim's run id in the replay checkpoint (an earlier release's, and one of this one's)
    (p.data(11) / "progress.json").write_text(json.dumps({"run_id": victim_id, "ops_done": 1, "attempts": 1}))
    expected[11] = "names a run this payload did not create"
    (p.data(24) / "progress").mkdir(parents=True)
    (p.data(24) / "progress" / "000001-attacker.json").write_text(json.dumps({"run_id": victim_id, "ops_done": 1,
                                                                             "attempts": 1}))
    expected[24] = "names a run this payload did not create"
    # 12: the artifact path climbs into the victim's artifacts
    d = p.doc(12)
    exp_id = client.get_run(victim_id).info.experiment_id
    d["artifacts"][0]["artifact_path"] = f"../../{exp_id}/{victim_id}/artifacts/files"
    p.put(12, d)
    expected[12] = "must be relative, without '..'"
    # 13: the tag that marks a payload's run, set to another payload's id
    d = p.doc(13)
    d["run"]["tags"][PAYLOAD_TAG] = p.ids[14]
    p.put(13, d)
    expected[13] = f"the tag {PAYLOAD_TAG} is reserved"
    # 14: ops_done far beyond the run's requests
    d = p.doc(14)
    d.update(run_id=None, ops_done=99999)
    p.put(14, d)
    expected[14] = "ops_done must be an integer from 0 to"
    # 15: a status MLflow does not know
    d = p.doc(15)
    d["run"]["status"] = "PWNED"
    p.put(15, d)
    expected[15] = "run status 'PWNED' is not one of FINISHED, FAILED, KILLED"
    # 16: a run id that is a path
    d = p.doc(16)
    d.update(run_id="../../x", ops_done=1)
    p.put(16, d)
    expected[16] = "is not a run id"
    # 17: the pending document a link to a valid document outside the store
    d = p.doc(17)
    (outside / "doc17.json").write_text(json.dumps(d))
    path17 = p.path(17)
    path17.unlink()
    path17.symlink_to(outside / "doc17.json")
    expected[17] = "the document is a symbolic link"
    # 18: JSON nested too deeply for the parser
    p.write(18, "[" * 200_000 + "]" * 200_000)
    expected[18] = "nested too deeply"
    # 19: the victim's artifact URI in the document: ignored, the server's URI is used
    d = p.doc(19)
    d["artifact_uri"] = victim_artifact_uri
    p.put(19, d)
    # 20: the artifact name with a separator
    d = p.doc(20)
    d["artifacts"][0].update(name="../report.txt", file="artifacts/0/../report.txt")
    p.put(20, d)
    expected[20] = "is not a single file name"
    # 21: an artifact path that is a URI of another store
    d = p.doc(21)
    d["artifacts"][0]["artifact_path"] = "s3://bucket/x"
    p.put(21, d)
    expected[21] = "must be relative"
    # 22: a claim of an earlier release whose name is not a claim (it would be replayed as id '..')
    (p.store.root / "claimed").mkdir(exist_ok=True)
    (p.store.root / "claimed" / "..@x.json").write_text(json.dumps(p.doc(22)))
    # 23: untouched
    good = [19, 22, 23]

    listing_before = sorted(str(q.relative_to(outside)) for q in outside.rglob("*"))
    replayer = make_replayer(store_path, tracking_server.url, UNLIMITED, max_workers=4)
    summary = _replay_in_thread(replayer)
    for i, reason in expected.items():
        assert reason in p.reason(i), (i, p.reason(i))
    assert summary.failed == len(expected) + 1  # the foreign claim too
    assert summary.replayed == len(good)
    foreign = [json.loads(f.read_text()) for f in (p.store.root / "failed").glob("foreign-*.reason.json")]
    assert [r["source"] for r in foreign] == ["claimed/..@x.json"] and "foreign file" in foreign[0]["reason"]
    assert not (p.store.root / "progress.json").exists() and not (p.store.root / "result.json").exists()
    # nothing read outside the payloads, nothing written outside the store or the runs
    assert _secret_leaked(tracking_server, value) == []
    assert sorted(str(q.relative_to(outside)) for q in outside.rglob("*")) == listing_before
    assert victim_snapshot() == before
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == sorted(good)  # no run was even created for a refused payload
    for i in good:
        assert len(runs[i]) == 1
        assert_run_complete(client, runs[i][0], i, with_model=False)
    assert runs[19][0].info.artifact_uri != victim_artifact_uri


def test_with_a_key_only_the_collectors_own_documents_and_files_replay(
        closed_proxy, tracking_server, client, experiment, store_path, secret, victim, signing_key, make_replayer,
        engine):
    """With a signing key the attacker cannot sign: every edit of a document, of the files it
    names, of a replay checkpoint or of a done record is caught; a planted record neither maps
    a payload to another run nor stops its replay, nor costs any payload its ledger row."""
    from mlflow_spark_tools.failed_runs.ledger import write_ledger

    outside, value = secret
    victim_id, _, victim_snapshot = victim
    before = victim_snapshot()
    key = SigningKey(signing_key)
    on_object_store = mount_of(store_path) is not None
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 12, with_model=True), key)
    expected: dict[int, str] = {}
    # 0: signature removed, run id and artifact path pointed at the victim
    d = p.doc(0)
    d.update(run_id=victim_id, ops_done=1)
    d["artifacts"][0]["artifact_path"] = "files"
    p.put(0, d)
    expected[0] = "document is not signed"
    # 1: the artifact's bytes replaced by as many other bytes (name, type and document untouched)
    report = p.data(1) / "artifacts" / "0" / "report.txt"
    replace_file(report, value.encode().ljust(report.stat().st_size, b"#")[: report.stat().st_size])
    expected[1] = "artifacts/0/report.txt: the file changed after it was collected"
    # 7: a gigabyte (sparse where files can be) where the collector copied a few hundred bytes: refused unread
    big = p.data(7) / "artifacts" / "0" / "report.txt"
    if on_object_store:  # no sparse files on object storage: a mere megabyte more
        replace_file(big, b"#" * (1 << 20))
    else:
        with open(big, "r+b") as f:
            f.truncate(1 << 30)
    expected[7] = "artifacts/0/report.txt changed after it was collected"
    # 2: another payload's signed model blob copied over this one's, document edited to match
    replace_file(p.data(2) / "models" / "0.pkl", (p.data(3) / "models" / "0.pkl").read_bytes())
    d = p.doc(2)
    d["models"][0].update(p.doc(3)["models"][0])
    p.put(2, d)
    expected[2] = "document is not signed"
    # 4: the checkpoint names the victim's run (an earlier release's checkpoint, and this one's)
    (p.data(4) / "progress.json").write_text(json.dumps({"run_id": victim_id, "ops_done": 1, "attempts": 1}))
    expected[4] = "progress.json is not signed by this replay's key"
    (p.data(11) / "progress").mkdir()
    (p.data(11) / "progress" / "begun.json").write_text(json.dumps({"payload_id": p.ids[11], "run_id": victim_id,
                                                                     "ops_done": 1, "attempts": 1}))
    expected[11] = "progress/begun.json is not signed by this replay's key"
    # 5: a document signed with another key
    d = p.doc(5)
    d["signature"] = SigningKey("another key of 32 bytes or more..").sign(canonical_json(d))
    replace_document(store_path, p.ids[5], d)
    expected[5] = "signature does not verify"
    # 6: a file added to the payload's artifact folder is not uploaded: only what the manifest names
    (p.data(6) / "artifacts" / "0" / "extra.txt").write_text(value)
    # 8: a done record naming the victim's run, as if the payload had been replayed into it
    record = {"format": DONE_FORMAT, "payload_id": p.ids[8], "run_id": victim_id, "experiment_id": experiment,
              "replayed_at": 1, "attempts": 1}
    (store_path / "done" / f"{p.ids[8]}.json").write_text(json.dumps(record))
    # 9: an earlier release's result.json naming the victim's run (it made a signed payload "resumed")
    (p.data(9) / "result.json").write_text(json.dumps({"run_id": victim_id, "experiment_id": experiment}))
    # 10: a malformed done record (it failed the ledger write of every payload of the pass)
    (store_path / "done" / f"{p.ids[10]}.json").write_text(json.dumps({**record, "payload_id": p.ids[10],
                                                                       "run_id": {"not": "a string"}}))
    good = [3, 6, 8, 9, 10]
    settle(store_path)

    summary = _replay_in_thread(make_replayer(store_path, tracking_server.url, UNLIMITED, max_workers=4,
                                              signing_key=key))
    settle(store_path)
    for i, reason in expected.items():
        assert reason in p.reason(i), (i, p.reason(i))
    assert summary.failed == len(expected) + 2 and summary.replayed == len(good)  # + the two planted records
    planted = [json.loads(f.read_text())["reason"] for f in (store_path / "failed").glob("*.reason*.json")]
    assert sum("foreign file: done/" in r for r in planted) == 2
    assert _secret_leaked(tracking_server, value) == []
    assert victim_snapshot() == before
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == good
    for i in good:
        assert_run_complete(client, runs[i][0], i)
        assert p.store.result(p.ids[i])["run_id"] == runs[i][0].info.run_id
    ledger = {row["payload_id"]: row for row in summary.ledger}
    assert all(ledger[p.ids[i]]["run_id"] == runs[i][0].info.run_id for i in good)
    assert write_ledger(engine, "hostile_ledger", summary.ledger) == len(summary.ledger)
    rows = engine.spark.sql("SELECT payload_id, run_id FROM hostile_ledger.replay_log").collect()
    assert {r["payload_id"] for r in rows} >= {p.ids[i] for i in good + list(expected)}
    assert victim_id not in {r["run_id"] for r in rows}


def test_payloads_over_the_limits_are_refused_unread(closed_proxy, tracking_server, client, experiment,
                                                     store_path, monkeypatch, make_replayer):
    monkeypatch.delenv(KEY_ENV, raising=False)
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 9))
    limits = ReplayLimits(max_document_bytes=20_000, max_params=5, max_tags=5, max_metric_points=20,
                          max_artifacts=2, max_files=3, max_artifact_bytes=5_000, max_model_bytes=100)
    expected = {}
    # 0: a document over the size limit (not even JSON: the reason proves it was never parsed)
    p.write(0, "x" * 30_000)
    expected[0] = "the document holds 30000 bytes, the limit is 20000 (replay.limits.max_document_bytes)"
    d = p.doc(1)
    d["run"]["metrics"] *= 3
    p.put(1, d)
    expected[1] = "metric points, the limit is 20 (replay.limits.max_metric_points)"
    d = p.doc(2)
    d["run"]["params"].update({f"p{k}": "v" for k in range(5)})
    p.put(2, d)
    expected[2] = "8 params, the limit is 5"
    d = p.doc(3)
    d["run"]["tags"].update({f"t{k}": "v" for k in range(5)})
    p.put(3, d)
    expected[3] = "tags, the limit is 5"
    d = p.doc(4)
    d["artifacts"] *= 3
    p.put(4, d)
    expected[4] = "3 artifacts and models, the limit is 2"
    d = p.doc(5)
    d["artifacts"][0]["manifest"] = None  # a document without digests: the byte budget alone holds it
    p.put(5, d)
    replace_file(p.data(5) / "artifacts" / "0" / "report.txt", "y" * 6_000)
    expected[5] = "replay.limits.max_artifact_bytes"
    d = p.doc(6)
    d["artifacts"][0].update(name="many", is_dir=True, file="artifacts/0/many", manifest=None)
    p.put(6, d)
    (p.data(6) / "artifacts" / "0" / "many").mkdir()
    for k in range(5):
        (p.data(6) / "artifacts" / "0" / "many" / f"{k}.txt").write_text("z")
    expected[6] = "too many files"
    d = p.doc(7)
    d["models"] = [{"artifact_path": "model", "flavor": "sklearn", "blob": "models/0.pkl",
                    "sha256": "0" * 64, "signature": None}]
    p.put(7, d)
    (p.data(7) / "models").mkdir()
    (p.data(7) / "models" / "0.pkl").write_bytes(b"\x80" * 500)
    expected[7] = "models/0.pkl holds 500 bytes, the limit is 100"
    settle(store_path)
    summary = make_replayer(store_path, tracking_server.url, UNLIMITED, max_workers=4, limits=limits,
                       trust_unsigned=True).run()
    for i, reason in expected.items():
        assert reason in p.reason(i), (i, p.reason(i))
    assert summary.failed == len(expected) and summary.replayed == 1  # payload 8 is within the limits
    assert sorted(runs_by_index(client, experiment)) == [8]


def test_a_replayer_that_lost_its_lease_sends_nothing_more_and_leaves_the_payload(
        closed_proxy, tracking_server, client, experiment, tmp_path, monkeypatch, make_replayer):
    """Another replayer took the store over (this one stalled past its lease): this one stops
    before its next request, writes no reason, and counts the payload as lost."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    store_path = tmp_path / "store"
    _defer(closed_proxy, store_path, experiment, 1)
    replayer = make_replayer(store_path, tracking_server.url, UNLIMITED)
    assert replayer.lease.acquire() is None
    lease = replayer.lease
    engine = lease.engine
    engine.spark.sql(f"UPDATE {lease.table} SET generation = generation + 1, owner = 'another-replayer' "
                     f"WHERE store_key = '{lease.key}'").collect()
    assert not lease._renew()  # it notices at its next renewal
    (document,) = replayer.store.documents()
    assert replayer._outcome(document) == LOST
    assert list((store_path / "failed").iterdir()) == [] and replayer.store.documents() == [document]
    assert runs_by_index(client, experiment) == {}  # not even the create was sent


def test_a_second_replayer_replays_nothing_while_the_first_holds_the_store(
        closed_proxy, make_proxy, tracking_server, client, experiment, store_path, monkeypatch, make_replayer):
    monkeypatch.delenv(KEY_ENV, raising=False)
    n = 6
    _defer(closed_proxy, store_path, experiment, n)
    settle(store_path)
    slow = make_proxy(latency_ms=200)  # about 1 s per payload
    first = make_replayer(store_path, slow.url, UNLIMITED, max_workers=1, lease_seconds=2)
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("first", first.run()))
    thread.start()
    time.sleep(1.5)
    second = make_replayer(store_path, tracking_server.url, UNLIMITED, max_workers=2, lease_seconds=2)
    held = second.run()
    assert held.replayed == 0 and first.owner in held.held_by
    thread.join(120)
    assert done["first"].replayed == n and done["first"].failed == 0
    assert list((store_path / "failed").iterdir()) == []
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == list(range(n)) and all(len(runs[i]) == 1 for i in range(n))
    assert second.run().held_by is None  # released at the end of the first one's pass


def test_local_errors_are_named_as_local(closed_proxy, tracking_server, client, experiment, tmp_path,
                                         monkeypatch, make_replayer):
    """A bug or a failed local step is not reported as the tracking server's refusal; a local
    I/O error gives the payload back instead of quarantining it."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    store_path = tmp_path / "store"
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 2))
    import mlflow_spark_tools.failed_runs.payload_replay as replay_module

    calls = {"n": 0}

    def broken_upload(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise AttributeError("'NoneType' object has no attribute 'read'")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(replay_module, "upload_artifact", broken_upload)
    summary = make_replayer(store_path, tracking_server.url, UNLIMITED, max_workers=1).run()
    assert summary.failed == 1 and summary.released == 1
    (failed,) = p.store.ids("failed")
    reason = json.loads((p.store.root / "failed" / f"{failed}.reason.json").read_text())["reason"]
    assert reason.startswith("local error while replaying (not a refusal of the tracking server): AttributeError")
    assert "refused" not in reason.split(":")[0]
    assert len(p.store.ids("pending")) == 1  # the I/O error: back to pending, retried next pass


def test_a_reason_file_is_never_overwritten(closed_proxy, tracking_server, experiment, store_path, monkeypatch,
                                            make_replayer):
    monkeypatch.delenv(KEY_ENV, raising=False)
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 1))
    d = p.doc(0)
    d["run"]["status"] = "PWNED"
    p.put(0, d)
    settle(store_path)
    make_replayer(store_path, tracking_server.url, UNLIMITED).run()
    first = p.reason(0)
    # moved back by hand (copied, then removed) after a "fix" that is not one: quarantined
    # again, the first reason kept
    put_back = p.store.root / "pending" / f"{p.ids[0]}.json"
    move(p.store.root / "failed" / f"{p.ids[0]}.json", put_back)
    settle(store_path)
    d["run"]["status"] = "ALSO BAD"
    p.put(0, d)
    settle(store_path)
    make_replayer(store_path, tracking_server.url, UNLIMITED).run()
    assert p.reason(0) == first
    second = json.loads((p.store.root / "failed" / f"{p.ids[0]}.reason.2.json").read_text())["reason"]
    assert "ALSO BAD" in second
    # quarantining a document that is gone writes nothing
    assert p.store.quarantine(put_back, p.ids[0], "late") is False
    assert not (p.store.root / "failed" / f"{p.ids[0]}.reason.3.json").exists()


def _log_normally(url, experiment, store_path, i):
    collector = FailedRunCollector(store_path, tracking_uri=url, fail_fast_seconds=0.3)
    status, run_id, _ = log_sample_run(collector, experiment, i, with_model=False)
    assert status == "logged"
    return run_id


def test_a_readable_payload_tag_does_not_open_a_run(closed_proxy, tracking_server, client, experiment, tmp_path,
                                                    monkeypatch, make_replayer):
    """The payload id on a run is public; writing into the run takes the run secret too."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    store_path = tmp_path / "store"
    victim_id = _log_normally(tracking_server.url, experiment, store_path, 0)
    victim_pid = client.get_run(victim_id).data.tags[PAYLOAD_TAG].split(":")[0]
    history = client.get_metric_history(victim_id, "loss")
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 2))
    for i, secret_value in ((0, "keep the attacker's own"), (1, None)):
        d = p.doc(i)
        d.update(payload_id=victim_pid, run_id=victim_id, ops_done=1)
        if secret_value is None:
            d.pop("run_secret")
        d["run"]["params"]["backdoor"] = "1"
        p.path(i).unlink()
        data = p.data(i)
        p.ids[i] = victim_pid if i == 0 else victim_pid[:-1] + ("0" if victim_pid[-1] != "0" else "1")
        os.rename(data, p.data(i))
        d["payload_id"] = p.ids[i]
        p.put(i, d)
    summary = make_replayer(store_path, tracking_server.url, UNLIMITED, max_workers=2).run()
    assert summary.failed == 2 and summary.replayed == 0
    for i in range(2):
        assert "is not this payload's" in p.reason(i) or "has ended" in p.reason(i), p.reason(i)
    run = client.get_run(victim_id)
    assert "backdoor" not in run.data.params and run.info.status == "FINISHED"
    assert len(client.get_metric_history(victim_id, "loss")) == len(history)


def test_ended_runs_are_never_written_again(make_proxy, tracking_server, client, experiment, store_path,
                                           signing_key, make_replayer):
    """Replayed documents put back in pending do not log their runs again: the very same bytes
    (as a replay that stopped between its record and removing the document leaves them) are
    removed; the same document written anew is quarantined; one put back with every trace of
    its replay removed meets a run that has ended."""
    # runs are created, then their log_batch meets 429s: the documents carry the run ids
    proxy = make_proxy({"log_batch": 0.001})
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(f"{proxy.url}/api/2.0/mlflow/runs/log-batch", data=b"{}"),
                               timeout=10).close()
    except Exception:
        pass
    collector = FailedRunCollector(store_path, tracking_uri=proxy.url, fail_fast_seconds=0.3)
    results = [log_sample_run(collector, experiment, i, with_model=False) for i in range(3)]
    assert all(status == DEFERRED and run_id for status, run_id, _ in results)
    key = SigningKey(signing_key)
    p = Payloads(store_path, [pid for _, _, pid in results], key)
    kept = {i: (p.path(i).name, p.path(i).read_bytes()) for i in range(3)}  # copies the attacker keeps
    first = make_replayer(store_path, tracking_server.url, UNLIMITED, signing_key=key)
    assert first.run().replayed == 3
    first.close()
    pending = p.store.root / "pending"
    (pending / kept[0][0]).write_bytes(kept[0][1])                          # the very same document
    (pending / f"{p.ids[1]}.json").write_text(json.dumps(json.loads(kept[1][1]), indent=2))  # written anew
    (pending / kept[2][0]).write_bytes(kept[2][1])                          # put back, traces removed
    (p.store.root / "done" / f"{p.ids[2]}.json").unlink()
    settle(store_path)
    shutil.rmtree(p.data(2) / "progress")
    settle(store_path)
    summary = make_replayer(store_path, tracking_server.url, UNLIMITED, signing_key=key).run()
    assert (summary.failed, summary.resumed) == (2, 1)
    assert "it is in done/" in p.reason(1)
    assert "has ended (FINISHED)" in p.reason(2)
    assert p.store.documents() == [] and not (p.store.root / "failed" / f"{p.ids[0]}.json").exists()
    for _, run_id, _ in results:
        assert len(client.get_metric_history(run_id, "loss")) == 8  # not one point twice


@pytest.mark.parametrize("checkpoint", ["progress.json", "progress/000001-attacker.json"])
def test_a_checkpoint_cannot_move_a_payload_to_another_experiment(checkpoint, closed_proxy, tracking_server, client,
                                                                  experiment, tmp_path, monkeypatch, make_replayer):
    """Without a key the run secret is readable in the document: an MLflow user can tag a run of
    their own experiment with it, but the payload's experiment is checked too."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    store_path = tmp_path / "store"
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 1))
    from mlflow_spark_tools.failed_runs.document import payload_tag_value

    own = client.create_experiment(f"attacker-{uuid.uuid4().hex[:8]}")
    tag = payload_tag_value(p.ids[0], p.doc(0)["run_secret"])
    decoy = client.create_run(own, tags={PAYLOAD_TAG: tag}).info.run_id
    (p.data(0) / checkpoint).parent.mkdir(parents=True, exist_ok=True)
    (p.data(0) / checkpoint).write_text(json.dumps({"run_id": decoy, "ops_done": 1, "attempts": 1}))
    summary = make_replayer(store_path, tracking_server.url, UNLIMITED).run()
    assert summary.failed == 1
    assert f"names a run of experiment {own}, not of the payload's experiment {experiment}" in p.reason(0)
    assert client.get_run(decoy).data.params == {}


def test_claims_of_an_earlier_release_beside_the_document_replay_it_once(closed_proxy, tracking_server, client,
                                                                         experiment, tmp_path, signing_key,
                                                                         make_replayer):
    """Copies of a document planted as an earlier release's claims: the payload's run is logged
    once; the copies, the same bytes, are removed once it is replayed."""
    store_path = tmp_path / "store"
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 2), SigningKey(signing_key))
    (p.store.root / "claimed").mkdir()
    planted = [p.store.root / "claimed" / f"{p.ids[0]}@someone-else.json",
               p.store.root / "claimed" / f"{p.ids[0]}@someone-other.json"]
    for path in planted:
        shutil.copy(p.path(0), path)
    replayer = make_replayer(store_path, tracking_server.url, UNLIMITED, max_workers=4,
                             signing_key=SigningKey(signing_key))
    summary = replayer.run_until_empty(pause=0)
    assert summary.failed == 0 and replayer.store.documents() == []
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == [0, 1] and [len(runs[i]) for i in (0, 1)] == [1, 1]
    assert sorted(row["payload_id"] for row in summary.ledger) == sorted(p.ids)  # a row each, once


def test_one_bad_payload_cannot_end_the_pass(closed_proxy, tracking_server, client, experiment, store_path,
                                             monkeypatch, make_replayer):
    monkeypatch.delenv(KEY_ENV, raising=False)
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 4))
    d = p.doc(0)
    d["run"]["status"] = "PWNED"
    p.put(0, d)
    (p.store.root / "failed" / f"{p.ids[0]}.json").mkdir()  # where its quarantine would go
    (p.store.root / "failed" / f"{p.ids[0]}.reason.json").mkdir()
    # a flood of junk names ahead of the payloads
    for k in range(150):
        (p.store.root / "pending" / f"junk-{k:04d}.txt").write_text("x")
    settle(store_path)
    summary = make_replayer(store_path, tracking_server.url, UNLIMITED, max_workers=2).run()
    assert summary.replayed == 3 and summary.failed == 1 + 100
    settle(store_path)
    reason_files = list((p.store.root / "failed").glob(f"{p.ids[0]}.reason.*.json"))
    assert len(reason_files) == 1 and "PWNED" in reason_files[0].read_text()
    assert json.loads(reason_files[0].read_text())["document"].startswith(p.ids[0] + ".")
    settle(store_path)
    assert len(list((p.store.root / "pending").glob("junk-*"))) == 50  # the next pass takes the rest


@pytest.mark.parametrize("model_only", [False, True])
def test_unsigned_documents_cannot_make_the_replay_write_local_files(model_only, closed_proxy, tracking_server,
                                                                     client, experiment, tmp_path, monkeypatch, make_replayer):
    monkeypatch.delenv(KEY_ENV, raising=False)
    target = tmp_path / "written-by-replay"
    local = client.create_experiment(f"local-{uuid.uuid4().hex[:8]}", artifact_location=target.as_uri())
    store_path = tmp_path / "store"
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 1, with_model=model_only))
    d = p.doc(0)
    d["run"]["experiment_id"] = local
    if model_only:  # refused before the model is saved or a logged model created
        d["artifacts"] = []
    p.put(0, d)
    summary = make_replayer(store_path, tracking_server.url, UNLIMITED).run()
    reason = "model blob models/0.pkl is unsigned" if model_only else "go to a path on this host"
    assert summary.failed == 1 and reason in p.reason(0)
    assert not target.exists() or [f for f in target.rglob("*") if f.is_file()] == []
    if hasattr(client, "search_logged_models"):
        assert list(client.search_logged_models(experiment_ids=[local])) == []


def test_a_hard_linked_document_is_not_read(closed_proxy, tracking_server, experiment, tmp_path, monkeypatch, make_replayer):
    monkeypatch.delenv(KEY_ENV, raising=False)
    store_path = tmp_path / "store"
    p = Payloads(store_path, _defer(closed_proxy, store_path, experiment, 1))
    outside = tmp_path / "outside.json"
    os.link(p.path(0), outside)
    summary = make_replayer(store_path, tracking_server.url, UNLIMITED).run()
    assert summary.failed == 1 and "other hard links" in p.reason(0)


def test_bad_values_in_one_payload_never_cost_the_others_their_ledger_rows(closed_proxy, tracking_server, client,
                                                                            experiment, store_path, settings, engine,
                                                                            signing_key):
    """A planted document whose text is not valid UTF-8 once parsed (a lone surrogate, carried
    into its quarantine reason) and rows with values their columns cannot hold: every other
    payload still gets its ledger row."""
    from mlflow_spark_tools.failed_runs.ledger import write_ledger
    from mlflow_spark_tools.failed_runs.replay_job import ONCE, ReplayOptions, run_replay_job

    database = f"bad_values_{uuid.uuid4().hex[:8]}"
    ids = _defer(closed_proxy, store_path, experiment, 3)
    planted = f"{int(time.time() * 1000)}-evil-1-{'ab' * 12}"
    (store_path / "pending" / f"{planted}.json").write_text('{"format": "mlflow-spark-tools/failed-run", '
                                                             '"version": "\\udcff"}')
    settle(store_path)
    lines: list[str] = []
    code = run_replay_job(settings.with_overrides(tables__database=database),
                          ReplayOptions(replay_dir=str(store_path), mode=ONCE), engine=engine, echo=lines.append)
    summary = json.loads(lines[-1])
    assert code == 3 and summary["replayed"] == 3 and summary["failed"] == 1
    assert summary["ledger_rows"] == 4 and "ledger_error" not in summary, summary
    rows = engine.spark.sql(f"SELECT payload_id, status, error FROM {database}.replay_log").collect()
    assert {r["payload_id"] for r in rows} == {*ids, planted}
    assert "\\udcff" in next(r["error"] for r in rows if r["payload_id"] == planted)
    # values no column holds become null; the rows beside them are written
    assert write_ledger(engine, database, [
        {"payload_id": "x\udcff", "run_id": {"not": "a string"}, "attempts": 2**40, "status": "replayed",
         "replayed_at": True},
        {"payload_id": "fine", "run_id": "r" * 32, "attempts": 1, "status": "replayed"},
    ]) == 2
    (odd,) = engine.spark.sql(f"SELECT run_id, attempts, replayed_at FROM {database}.replay_log "
                              "WHERE payload_id = 'x\\\\udcff'").collect()
    assert (odd["run_id"], odd["attempts"], odd["replayed_at"]) == ("{'not': 'a string'}", None, None)


class _Listener:
    """An HTTP server on loopback that answers every request with 200 and keeps what came:
    (method, path, Authorization header)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen.append((self.command, self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_PUT = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_experiment_cannot_send_the_replay_credentials_to_its_artifact_host(
        closed_proxy, tmp_path, signing_key, monkeypatch, make_replayer):
    """On a server that allows host-addressed artifact locations, an experiment user sets one
    to a host of theirs: the replay would upload the run's artifacts there with its tracking
    credentials (MLflow attaches them to whatever host the location names). It quarantines the
    payload instead, naming the host, and uploads there only when the host is listed in
    replay.artifact_hosts."""
    from mlflow import MlflowClient

    from tests.support.local_server import LocalTrackingServer

    monkeypatch.setenv("MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES", "http")
    listener = _Listener()
    tracking_server = LocalTrackingServer(tmp_path / "server", workers=1)
    try:
        tracking_server.start()
        client = MlflowClient(tracking_server.url)
        experiment = client.create_experiment(f"exfil-{uuid.uuid4().hex[:8]}",
                                              artifact_location=f"http://{listener.address}/artifacts")
        store_path = tmp_path / "store"
        ids = _defer(closed_proxy, store_path, experiment, 2)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "replay-identity")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "replay-secret")
        store = FailedRunStore(store_path)
        pending = {d.payload_id: d for d in store.documents()}
        aside = tmp_path / "aside.json"
        os.rename(store.path_of(pending[ids[1]]), aside)
        summary = make_replayer(store_path, tracking_server.url, UNLIMITED).run()
        assert summary.failed == 1
        reason = json.loads((store.root / "failed" / f"{ids[0]}.reason.json").read_text())["reason"]
        assert f"the run's artifacts go to {listener.address}, which is not the tracking server" in reason
        assert listener.requests == []
        # the same upload with the host allowed: it goes there, credentials attached
        os.rename(aside, store.path_of(pending[ids[1]]))
        allowed = make_replayer(store_path, tracking_server.url, UNLIMITED, artifact_hosts=(listener.address,))
        assert allowed.run().replayed == 1
        assert any(method == "PUT" and auth and auth.startswith("Basic ") for method, _, auth in listener.requests)
    finally:
        tracking_server.stop()
        listener.close()
