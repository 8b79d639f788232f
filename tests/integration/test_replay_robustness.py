"""Replay under crashes, concurrency and bad input, against a real server, with the store on a
local disk and on the object-store FUSE mount."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.failed_runs.collector import DEFERRED, FailedRunCollector
from mlflow_spark_tools.failed_runs.document import canonical_json
from mlflow_spark_tools.failed_runs.signing import SigningKey
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import digest, parse_document_name
from tests.support.object_store_fuse import settle

from .run_content import assert_model_loads, assert_run_complete, log_sample_run, runs_by_index
from .store_files import document_path, read_document, replace_document, replace_file

UNLIMITED = RateLimitProfile.load("unlimited")


def _defer(closed_proxy, store_path, experiment, indices, with_model=False, signing_key=None):
    collector = FailedRunCollector(store_path, tracking_uri=closed_proxy.url, fail_fast_seconds=0.3,
                                   signing_key=signing_key)
    out = {}
    for i in indices:
        status, run_id, payload_id = log_sample_run(collector, experiment, i, with_model=with_model)
        assert status == DEFERRED and run_id is None
        out[i] = payload_id
    return out


def _replay_cli(store_path, tracking_uri, warehouse, *extra):
    """The replay command in its own process; its lease lives in the tables under ``warehouse``
    (one catalog for every replay job of a test, as on one workspace)."""
    env = dict(os.environ, RUST_LOG="error")
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
        env.pop(name, None)
    return [sys.executable, "-m", "mlflow_spark_tools.cli", "--warehouse", str(warehouse), "replay",
            "--replay-dir", str(store_path), "--tracking-uri", tracking_uri, "--profile", "unlimited",
            "--no-ledger", *extra], env


def test_bad_payloads_are_quarantined_with_reasons(closed_proxy, tracking_server, client, experiment,
                                                   store_path, tmp_path, signing_key):
    store = FailedRunStore(store_path)
    # every payload is signed with the key from the environment; the edits below sign the
    # document again (as a writer holding the key would), except the ones about signatures
    key = SigningKey(signing_key)
    ids = _defer(closed_proxy, store_path, experiment, range(12), with_model=True)
    settle(store_path)

    def doc(i):
        return read_document(store_path, ids[i])

    def put(i, document, sign=True):
        if sign:
            document["signature"] = key.sign(canonical_json(document))
        replace_document(store_path, ids[i], document)

    reasons = {}
    # corrupt: not JSON (named by its digest: it is whole, and wrong)
    replace_document(store_path, ids[0], '{"format": "mlflow-spark-tools/failed-run", "run": {')
    reasons[0] = "not valid JSON"
    # truncated: the artifact copy is gone
    os.remove(store.data_dir(ids[1]) / doc(1)["artifacts"][0]["file"])
    reasons[1] = "truncated"
    # tampered: a param changed after signing
    d = doc(2)
    d["run"]["params"]["solver"] = "evil"
    put(2, d, sign=False)
    reasons[2] = "signature does not verify"
    # the model blob replaced by another pickle (checksum and signature no longer match)
    replace_file(store.data_dir(ids[4]) / doc(4)["models"][0]["blob"], b"\x80\x04K\x01.")
    reasons[4] = "corrupt or truncated"
    # the document signature removed
    d = doc(5)
    d.pop("signature")
    put(5, d, sign=False)
    reasons[5] = "document is not signed"
    # newer format version
    d = doc(6)
    d["version"] = 99
    put(6, d)
    reasons[6] = "version"
    # over MLflow's limits: a 6001-character param value
    d = doc(7)
    d["run"]["params"]["solver"] = "x" * 6001
    put(7, d)
    reasons[7] = "6000"
    # unknown experiment
    d = doc(8)
    d["run"]["experiment_id"] = "987654321"
    put(8, d)
    reasons[8] = "unknown experiment"
    # unsigned model blob in a signed document
    d = doc(10)
    d["models"][0]["signature"] = None
    put(10, d)
    reasons[10] = "model blob models/0.pkl is unsigned"
    # torn: its writer was killed half way through, an hour ago (bytes that do not hash to its name)
    whole = document_path(store_path, ids[11])
    torn = whole.parent / whole.name.replace(whole.name.split(".")[-3], str(int((time.time() - 3600) * 1000)))
    data = whole.read_bytes()
    whole.unlink()
    torn.write_bytes(data[: len(data) // 2])
    reasons[11] = "torn: the document is incomplete"
    # foreign files
    (store.root / "pending" / "notes.txt").write_text("hello")
    (store.root / "pending" / "1700000000000-host-1-0123456789abcdef01234567.json").write_text('{"format": "other"}')
    good = [ids[3], ids[9]]
    reasons = {ids[i]: reason for i, reason in reasons.items()}
    settle(store_path)

    command, env = _replay_cli(store_path, tracking_server.url, tmp_path / "warehouse", "--until-empty")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 3, result.stderr  # partial: some payloads failed
    summary = json.loads(result.stdout)
    assert summary["replayed"] == 2 and summary["failed"] == len(reasons) + 2
    failed = store.root / "failed"
    for payload_id, reason in reasons.items():
        text = json.loads((failed / f"{payload_id}.reason.json").read_text())["reason"]
        assert reason in text, (payload_id, text)
        assert (failed / f"{payload_id}.json").exists()  # kept, never deleted
    assert (failed / f"{ids[11]}.json").read_bytes() == data[: len(data) // 2]
    foreign = [json.loads(p.read_text())["reason"] for p in failed.glob("foreign-*.reason.json")]
    foreign += [json.loads(p.read_text())["reason"] for p in failed.glob("1700000000000-*.reason.json")]
    assert len(foreign) == 2 and all("foreign" in r for r in foreign)
    for payload_id in good:
        assert store.result(payload_id) is not None
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == [3, 9]
    assert_run_complete(client, runs[3][0], 3)
    assert_model_loads(runs[3][0].info.run_id, 3, tracking_server.url)


def test_a_document_still_being_written_is_left_alone(closed_proxy, tracking_server, experiment, store_path,
                                                      make_replayer, monkeypatch):
    """Bytes that do not hash to the name within the grace period: a writer still at work. The
    replay neither reads it as a document nor quarantines it; once whole, it is replayed."""
    monkeypatch.delenv("MLFLOW_SPARK_TOOLS_SIGNING_KEY", raising=False)
    (pid,) = _defer(closed_proxy, store_path, experiment, [0]).values()
    settle(store_path)
    whole = document_path(store_path, pid)
    data = whole.read_bytes()
    whole.unlink()
    whole.write_bytes(data[:100])
    settle(store_path)
    replayer = make_replayer(store_path, tracking_server.url)
    summary = replayer.run()
    assert (summary.incomplete, summary.failed, summary.replayed, summary.pending) == (1, 0, 0, 1)
    assert list((store_path / "failed").iterdir()) == []
    replace_file(whole, data)
    settle(store_path)
    assert replayer.run().replayed == 1


def test_unsigned_models_replay_only_when_trusted(closed_proxy, tracking_server, client, experiment,
                                                  tmp_path, monkeypatch, caplog, make_replayer):
    import mlflow_spark_tools.failed_runs.collector as collector_module

    monkeypatch.delenv("MLFLOW_SPARK_TOOLS_SIGNING_KEY", raising=False)
    monkeypatch.setattr(collector_module, "_UNSIGNED_WARNED", False)
    store_path = tmp_path / "store"
    _defer(closed_proxy, store_path, experiment, [0, 1], with_model=True)
    # the collector said so at once, once per process
    warnings = [r for r in caplog.records if "without a signing key" in r.getMessage()]
    assert len(warnings) == 1 and "MLFLOW_SPARK_TOOLS_SIGNING_KEY" in warnings[0].getMessage()
    os.rename(document_path(store_path, FailedRunStore(store_path).ids("pending")[1]), tmp_path / "set-aside.json")
    replayer = make_replayer(store_path, tracking_server.url, UNLIMITED, max_workers=2,
                             signing_key=SigningKey("another key, not the one"))
    assert replayer.run().failed == 1
    store = FailedRunStore(store_path)
    (failed_id,) = store.ids("failed")
    reason = json.loads((store.root / "failed" / f"{failed_id}.reason.json").read_text())["reason"]
    assert reason.startswith("document is not signed")
    # an operator who trusts the directory moves it back and replays with --trust-unsigned
    os.rename(store.root / "failed" / f"{failed_id}.json", store.root / "pending" / f"{failed_id}.json")
    replayer.close()
    trusting = make_replayer(store_path, tracking_server.url, UNLIMITED, trust_unsigned=True)
    assert trusting.run().replayed == 1
    assert_model_loads(runs_by_index(client, experiment)[0][0].info.run_id, 0, tracking_server.url)


def test_replayer_killed_again_and_again_leaves_every_run_exactly_once(
        closed_proxy, make_proxy, tracking_server, client, experiment, store_path, tmp_path, signing_key):
    """kill -9 at random moments: on the object-store mount the newest checkpoints of a killed
    replayer are not even listed yet when the next one resumes."""
    n = 40
    _defer(closed_proxy, store_path, experiment, range(n))
    settle(store_path)
    slow = make_proxy(latency_ms=150)  # slow enough to be killed in every phase of a payload
    rng = random.Random(7)
    kills = 0
    for _ in range(8):
        command, env = _replay_cli(store_path, slow.url, tmp_path / "warehouse", "--until-empty",
                                   "--lease-seconds", "1", "--max-workers", "2")
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 6.0))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 3
    command, env = _replay_cli(store_path, slow.url, tmp_path / "warehouse", "--until-empty", "--lease-seconds", "1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    settle(store_path)
    store = FailedRunStore(store_path)
    reasons = [(store.root / "failed" / f"{p}.reason.json").read_text() for p in store.ids("failed")]
    assert store.documents() == [] and reasons == []
    assert len(store.ids("done")) == n
    # the kills hit payloads mid-way: some were finished by a later replayer from a checkpoint
    assert any(store.result(p)["attempts"] > 1 for p in store.ids("done"))
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == list(range(n))
    for i in range(n):
        assert len(runs[i]) == 1, f"run {i} was created {len(runs[i])} times"
        assert_run_complete(client, runs[i][0], i, with_model=False)


def test_files_a_killed_replayer_created_but_never_wrote_count_as_not_written(
        closed_proxy, tracking_server, client, experiment, store_path, signing_key, make_replayer):
    """kill -9 between creating a file and its one write leaves it empty: an empty checkpoint
    counts as not written, an empty done record is removed and written again; nothing is
    quarantined and every run exists once."""
    ids = _defer(closed_proxy, store_path, experiment, range(2))
    settle(store_path)
    store = FailedRunStore(store_path)
    documents = {d.payload_id: (store.path_of(d), store.path_of(d).read_bytes()) for d in store.documents()}
    first = make_replayer(store_path, tracking_server.url, UNLIMITED)
    assert first.run().replayed == 2
    first.close()
    settle(store_path)
    for pid in ids.values():  # killed before the documents were removed
        (store.root / "done" / f"{pid}.json").unlink()
        path, data = documents[pid]
        path.write_bytes(data)
    (store.root / "done" / f"{ids[0]}.json").write_bytes(b"")  # its record created, never written
    (store.data_dir(ids[1]) / "progress" / "999999-killed.json").write_bytes(b"")  # a checkpoint so
    settle(store_path)
    summary = make_replayer(store_path, tracking_server.url, UNLIMITED).run()
    reasons = [(store.root / "failed" / f"{p}.reason.json").read_text() for p in store.ids("failed")]
    assert (summary.failed, summary.resumed, reasons) == (0, 2, [])
    settle(store_path)
    assert store.documents() == [] and store.read_done(ids[0])["payload_id"] == ids[0]
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == [0, 1] and [len(runs[i]) for i in (0, 1)] == [1, 1]
    for i in (0, 1):
        assert_run_complete(client, runs[i][0], i, with_model=False)


def test_payloads_replayed_by_a_replay_that_wrote_no_ledger_rows_get_them_once_later(
        closed_proxy, tracking_server, experiment, store_path, tmp_path, signing_key, make_replayer):
    """A replay killed after payloads were replayed, before their ledger rows were written (the
    rows are written at the end of a pass): the next replay job writes a row for every payload
    in done/ that has none, once."""
    from deltalake import DeltaTable

    ids = sorted(_defer(closed_proxy, store_path, experiment, range(3)).values())
    settle(store_path)
    # replays with the job's key, and writes no ledger
    replayer = make_replayer(store_path, tracking_server.url, UNLIMITED, signing_key=SigningKey(signing_key))
    assert replayer.run().replayed == 3
    replayer.close()
    settle(store_path)
    command, env = _replay_cli(store_path, tracking_server.url, tmp_path / "warehouse")
    command = [c for c in command if c != "--no-ledger"]
    command[command.index("replay"):command.index("replay")] = ["--database", "replay_leases"]  # the store's lease
    for attempt in range(2):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout)["ledger_rows"] == (3 if attempt == 0 else 0), result.stdout
        rows = DeltaTable(str(tmp_path / "warehouse" / "replay_leases" / "replay_log")).to_pyarrow_table().to_pylist()
        assert sorted(r["payload_id"] for r in rows) == ids, attempt  # each once, the second time too
    record = FailedRunStore(store_path).result(ids[0])
    row = next(r for r in rows if r["payload_id"] == ids[0])
    assert (row["run_id"], row["status"], row["experiment_id"]) == (record["run_id"], "replayed", experiment)


def test_two_replayers_on_one_store_replay_each_payload_once(
        closed_proxy, make_proxy, tracking_server, client, experiment, store_path, tmp_path, signing_key):
    """Two replay jobs at once (a second schedule, a manual run beside the job): one holds the
    store, the other says who does and replays nothing."""
    n = 30
    _defer(closed_proxy, store_path, experiment, range(n))
    settle(store_path)
    proxy = make_proxy(latency_ms=10)
    processes = []
    for _ in range(2):
        command, env = _replay_cli(store_path, proxy.url, tmp_path / "warehouse", "--until-empty",
                                   "--max-workers", "4")
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          text=True))
    summaries = [json.loads(p.communicate(timeout=600)[0]) for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert sum(s["replayed"] for s in summaries) == n
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == list(range(n)) and all(len(runs[i]) == 1 for i in range(n))


def _writer(args):
    url, store_path, experiment, first = args
    collector = FailedRunCollector(store_path, tracking_uri=url, fail_fast_seconds=0.3)
    return [log_sample_run(collector, experiment, i, with_model=False)[2] for i in range(first, first + 3)]


def test_32_processes_write_payloads_at_once(closed_proxy, tracking_server, client, experiment, store_path,
                                             signing_key, make_replayer):
    # Forked from a clean server process, not from this one: a child forked while this process's
    # Spark Connect channel (gRPC) held a lock waits on it for ever, and MLflow's request headers
    # ask the active Spark session whether it runs on Databricks.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with context.Pool(32) as pool:
        written = pool.map(_writer, [(closed_proxy.url, str(store_path), experiment, 3 * k) for k in range(32)])
    payloads = [p for batch in written for p in batch]
    assert len(payloads) == 96 and None not in payloads and len(set(payloads)) == 96
    settle(store_path)
    store = FailedRunStore(store_path)
    assert sorted(store.ids("pending")) == sorted(payloads)
    # nothing in pending/ but whole documents: each was written once, under the digest of its bytes
    for name in os.listdir(store_path / "pending"):
        assert digest((store_path / "pending" / name).read_bytes()) == parse_document_name(name).digest
    summary = make_replayer(store_path, tracking_server.url, UNLIMITED, max_workers=8).run()
    assert summary.replayed == 96 and summary.failed == 0
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == list(range(96)) and all(len(runs[i]) == 1 for i in range(96))


def test_after_a_deferral_the_process_defers_on_the_first_429(closed_proxy, experiment, tmp_path):
    def creates():
        return closed_proxy.counters.as_dict()["endpoints"]["runs/create"]["requests"]

    collector = FailedRunCollector(tmp_path / "store", tracking_uri=closed_proxy.url, fail_fast_seconds=1.0)
    before = creates()
    first = log_sample_run(collector, experiment, 0, with_model=False)
    retried = creates() - before
    second = log_sample_run(collector, experiment, 1, with_model=False)
    assert first[0] == second[0] == DEFERRED
    assert retried >= 2  # the first 429 was retried within fail_fast_seconds
    assert creates() - before - retried == 1  # in the storm: one attempt, then deferred
    assert collector.in_storm()
    calm = FailedRunCollector(tmp_path / "store", tracking_uri=closed_proxy.url, fail_fast_seconds=1.0,
                              storm_cooldown_seconds=0)
    before = creates()
    assert log_sample_run(calm, experiment, 2, with_model=False)[0] == DEFERRED
    assert creates() - before >= 2 and not calm.in_storm()


def test_a_replay_with_another_database_refuses_the_store(closed_proxy, tracking_server, client, experiment,
                                                          store_path, tmp_path, signing_key):
    """Two replay jobs of one store at once, with different --database values (a notebook's
    default beside the deployed job's): the store names where its lease lives, so the one
    whose lease is elsewhere refuses (exit 2) instead of replaying beside the other."""
    n = 15
    _defer(closed_proxy, store_path, experiment, range(n))
    settle(store_path)
    processes = []
    for database in ("jobs_db", "notebook_db"):
        command, env = _replay_cli(store_path, tracking_server.url, tmp_path / "warehouse", "--until-empty",
                                   "--max-workers", "4")
        command[command.index("replay") + 1:command.index("replay") + 1] = ["--database", database]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in processes]
    codes = sorted(p.returncode for p in processes)
    assert codes in ([0, 2], [0, 0]), outputs  # both 0 only when one finished before the other began
    refused = [err for (out, err), p in zip(outputs, processes) if p.returncode == 2]
    for err in refused:
        lines = [line for line in err.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1 and "lease.json" in lines[0] and "--database" in lines[0], err[-2000:]
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == list(range(n)) and all(len(runs[i]) == 1 for i in range(n))
    # later, the other database is refused at once, whatever the timing was
    command, env = _replay_cli(store_path, tracking_server.url, tmp_path / "warehouse")
    command[command.index("replay") + 1:command.index("replay") + 1] = ["--database", "third_db"]
    _defer(closed_proxy, store_path, experiment, [n])
    settle(store_path)
    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 2 and "lease.json" in third.stderr, third.stderr[-2000:]


def test_a_missing_store_is_neither_made_nor_replayed(tracking_server, tmp_path):
    command, env = _replay_cli(tmp_path / "typo" / "store", tracking_server.url, tmp_path / "warehouse")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["store"].startswith("does not exist")
    assert "nothing to replay" in result.stderr and not (tmp_path / "typo").exists()
    prune = subprocess.run([*command[:command.index("replay")], "prune-store", "--replay-dir", str(tmp_path),
                            "--older-than-days", "0", "--dry-run"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert prune.returncode == 0, prune.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # a dry run made no folders
    # a file where the store should be is a mistake to say, not a store to wait for
    afile = tmp_path / "payloads.json"
    afile.write_text("{}")
    command, env = _replay_cli(afile, tracking_server.url, tmp_path / "warehouse")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is a file, not a failed-run store" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and afile.read_text() == "{}"


def test_a_document_that_grows_while_read_is_left_for_a_later_pass(closed_proxy, tracking_server, experiment,
                                                                    tmp_path, make_replayer, monkeypatch):
    from mlflow_spark_tools.failed_runs.payload_replay import Incomplete

    monkeypatch.delenv("MLFLOW_SPARK_TOOLS_SIGNING_KEY", raising=False)
    store_path = tmp_path / "store"
    (pid,) = _defer(closed_proxy, store_path, experiment, [0]).values()
    path = document_path(store_path, pid)
    data = path.read_bytes()
    path.write_bytes(data[:200])  # the writer is half way
    replayer = make_replayer(store_path, tracking_server.url)
    (document,) = replayer.store.documents()
    handle = replayer.store.open_document(document)
    with open(path, "ab") as f:  # and goes on writing while the replay reads
        f.write(data[200:])
    with pytest.raises(Incomplete):
        replayer.payloads.document_bytes(document, handle)
    handle.close()
    assert replayer.run().replayed == 1


def test_a_signing_key_too_short_is_said_on_the_driver(monkeypatch, tmp_path):
    from mlflow_spark_tools.errors import InvalidConfigError

    monkeypatch.setenv("MLFLOW_SPARK_TOOLS_SIGNING_KEY", "short")
    with pytest.raises(InvalidConfigError, match="at least 16 bytes"):
        FailedRunCollector(tmp_path / "store", tracking_uri="http://127.0.0.1:9")
