"""Replay under crashes, concurrency and bad input, against a real server."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.failed_runs.collector import DEFERRED, FailedRunCollector
from mlflow_spark_tools.failed_runs.document import canonical_json
from mlflow_spark_tools.failed_runs.replayer import Replayer
from mlflow_spark_tools.failed_runs.signing import SigningKey
from mlflow_spark_tools.failed_runs.store import FailedRunStore

from .run_content import assert_model_loads, assert_run_complete, log_sample_run, runs_by_index

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


def _replay_cli(store_path, tracking_uri, *extra):
    env = dict(os.environ, RUST_LOG="error")
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
        env.pop(name, None)
    return [sys.executable, "-m", "mlflow_spark_tools.cli", "replay", "--replay-dir", str(store_path),
            "--tracking-uri", tracking_uri, "--profile", "unlimited", "--no-ledger", *extra], env


def test_bad_payloads_are_quarantined_with_reasons(closed_proxy, tracking_server, client, experiment,
                                                   tmp_path, signing_key):
    store_path = tmp_path / "store"
    store = FailedRunStore(store_path)
    # every payload is signed with the key from the environment; the edits below sign the
    # document again (as a writer holding the key would), except the ones about signatures
    key = SigningKey(signing_key)
    ids = _defer(closed_proxy, store_path, experiment, range(11), with_model=True)
    pending = store.root / "pending"

    def doc(i):
        return json.loads((pending / f"{ids[i]}.json").read_text())

    def put(i, document, sign=True):
        if sign:
            document["signature"] = key.sign(canonical_json(document))
        (pending / f"{ids[i]}.json").write_text(json.dumps(document))

    reasons = {}
    # corrupt: not JSON
    (pending / f"{ids[0]}.json").write_text('{"format": "mlflow-spark-tools/failed-run", "run": {')
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
    (store.data_dir(ids[4]) / doc(4)["models"][0]["blob"]).write_bytes(b"\x80\x04K\x01.")
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
    # foreign files
    (pending / "notes.txt").write_text("hello")
    (pending / "1700000000000-host-1-0123456789abcdef01234567.json").write_text('{"format": "other"}')
    good = [ids[3], ids[9]]
    reasons = {ids[i]: reason for i, reason in reasons.items()}

    command, env = _replay_cli(store_path, tracking_server.url, "--until-empty")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 3, result.stderr  # partial: some payloads failed
    summary = json.loads(result.stdout)
    assert summary["replayed"] == 2 and summary["failed"] == len(reasons) + 2
    failed = store.root / "failed"
    for payload_id, reason in reasons.items():
        text = json.loads((failed / f"{payload_id}.reason.json").read_text())["reason"]
        assert reason in text, (payload_id, text)
        assert (failed / f"{payload_id}.json").exists()  # kept, never deleted
    foreign = [json.loads(p.read_text())["reason"] for p in failed.glob("foreign-*.reason.json")]
    foreign += [json.loads(p.read_text())["reason"] for p in failed.glob("1700000000000-*.reason.json")]
    assert len(foreign) == 2 and all("foreign" in r for r in foreign)
    for payload_id in good:
        assert store.result(payload_id) is not None
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == [3, 9]
    assert_run_complete(client, runs[3][0], 3)
    assert_model_loads(runs[3][0].info.run_id, 3, tracking_server.url)


def test_unsigned_models_replay_only_when_trusted(closed_proxy, tracking_server, client, experiment,
                                                  tmp_path, monkeypatch, caplog):
    import mlflow_spark_tools.failed_runs.collector as collector_module

    monkeypatch.delenv("MLFLOW_SPARK_TOOLS_SIGNING_KEY", raising=False)
    monkeypatch.setattr(collector_module, "_UNSIGNED_WARNED", False)
    store_path = tmp_path / "store"
    _defer(closed_proxy, store_path, experiment, [0, 1], with_model=True)
    # the collector said so at once, once per process
    warnings = [r for r in caplog.records if "without a signing key" in r.getMessage()]
    assert len(warnings) == 1 and "MLFLOW_SPARK_TOOLS_SIGNING_KEY" in warnings[0].getMessage()
    os.rename(store_path / "pending" / f"{FailedRunStore(store_path).ids('pending')[1]}.json",
              tmp_path / "set-aside.json")
    replayer = Replayer(str(store_path), tracking_server.url, UNLIMITED, max_workers=2,
                        signing_key=SigningKey("another key, not the one"))
    assert replayer.run().failed == 1
    store = FailedRunStore(store_path)
    (failed_id,) = store.ids("failed")
    reason = json.loads((store.root / "failed" / f"{failed_id}.reason.json").read_text())["reason"]
    assert reason.startswith("document is not signed")
    # an operator who trusts the directory moves it back and replays with --trust-unsigned
    os.rename(store.root / "failed" / f"{failed_id}.json", store.root / "pending" / f"{failed_id}.json")
    trusting = Replayer(str(store_path), tracking_server.url, UNLIMITED, trust_unsigned=True)
    assert trusting.run().replayed == 1
    assert_model_loads(runs_by_index(client, experiment)[0][0].info.run_id, 0, tracking_server.url)


def test_replayer_killed_again_and_again_leaves_every_run_exactly_once(
        closed_proxy, make_proxy, tracking_server, client, experiment, tmp_path, signing_key):
    n = 40
    store_path = tmp_path / "store"
    _defer(closed_proxy, store_path, experiment, range(n))
    slow = make_proxy(latency_ms=150)  # slow enough to be killed in every phase of a payload
    rng = random.Random(7)
    kills = 0
    for _ in range(8):
        command, env = _replay_cli(store_path, slow.url, "--until-empty", "--lease-seconds", "1",
                                   "--max-workers", "2")
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 4.0))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 3
    command, env = _replay_cli(store_path, slow.url, "--until-empty", "--lease-seconds", "1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    store = FailedRunStore(store_path)
    assert store.ids("pending") == [] and store.claims() == [] and store.ids("failed") == []
    assert len(store.ids("done")) == n
    # the kills hit payloads mid-way: some were finished by a later replayer from a checkpoint
    assert any(store.result(p)["attempts"] > 1 for p in store.ids("done"))
    runs = runs_by_index(client, experiment)
    assert sorted(runs) == list(range(n))
    for i in range(n):
        assert len(runs[i]) == 1, f"run {i} was created {len(runs[i])} times"
        assert_run_complete(client, runs[i][0], i, with_model=False)


def test_two_replayers_on_one_directory_replay_each_payload_once(
        closed_proxy, make_proxy, tracking_server, client, experiment, tmp_path, signing_key):
    n = 30
    store_path = tmp_path / "store"
    _defer(closed_proxy, store_path, experiment, range(n))
    proxy = make_proxy(latency_ms=10)
    processes = []
    for _ in range(2):
        command, env = _replay_cli(store_path, proxy.url, "--until-empty", "--max-workers", "4")
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


def test_32_processes_write_payloads_at_once(closed_proxy, tracking_server, client, experiment, tmp_path,
                                             signing_key):
    store_path = str(tmp_path / "store")
    context = multiprocessing.get_context("fork")
    with context.Pool(32) as pool:
        written = pool.map(_writer, [(closed_proxy.url, store_path, experiment, 3 * k) for k in range(32)])
    payloads = [p for batch in written for p in batch]
    assert len(payloads) == 96 and None not in payloads and len(set(payloads)) == 96
    store = FailedRunStore(store_path)
    assert sorted(store.ids("pending")) == sorted(payloads)
    assert not any(store.root.joinpath("tmp").iterdir())  # every document was renamed into place
    summary = Replayer(store_path, tracking_server.url, UNLIMITED, max_workers=8).run()
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
