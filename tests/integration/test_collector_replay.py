"""The collector and the replay job against a real server behind the rate-limit proxy."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

from mlflow_spark_tools.cli.main import cli
from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.failed_runs.collector import DEFERRED, LOGGED, FailedRunCollector
from mlflow_spark_tools.failed_runs.document import PAYLOAD_TAG
from mlflow_spark_tools.failed_runs.signing import load_signing_key
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from tests.support.object_store_fuse import settle

from .run_content import assert_model_loads, assert_run_complete, log_sample_run, runs_by_index


def _stats(proxy):
    return proxy.counters.as_dict()


@pytest.mark.compat
def test_a_run_without_artifacts_takes_three_requests(make_proxy, client, experiment, tmp_path):
    proxy = make_proxy()
    collector = FailedRunCollector(tmp_path / "store", tracking_uri=proxy.url)
    with collector.start_run(experiment_id=experiment, run_name="three", tags={"a": "1"}) as run:
        run.log_params({f"p{i}": i for i in range(30)})
        for step in range(50):
            run.log_metrics({"loss": 1 / (step + 1), "acc": step / 50}, step=step)
        run.set_tags({"b": "2"})
    assert run.status == LOGGED and run.payload_id is None
    stats = _stats(proxy)
    assert sum(stats["requests"].values()) == 3
    assert stats["endpoints"]["runs/create"]["requests"] == 1
    assert stats["endpoints"]["runs/log-batch"]["requests"] == 1
    assert stats["endpoints"]["runs/update"]["requests"] == 1
    logged = client.get_run(run.run_id)
    assert logged.data.params == {f"p{i}": str(i) for i in range(30)}
    assert logged.data.tags["a"] == "1" and logged.data.tags["b"] == "2"
    assert len(client.get_metric_history(run.run_id, "loss")) == 50
    assert logged.info.status == "FINISHED"
    assert FailedRunStore(tmp_path / "store").ids("pending") == []


@pytest.mark.compat
def test_failed_block_is_logged_as_failed_and_the_error_raised(make_proxy, client, experiment, tmp_path):
    collector = FailedRunCollector(tmp_path / "store", tracking_uri=make_proxy().url)
    try:
        with collector.start_run(experiment_id=experiment, run_name="boom") as run:
            run.log_param("x", 1)
            raise RuntimeError("training failed")
    except RuntimeError as exc:
        assert str(exc) == "training failed"
    else:
        raise AssertionError("the error must propagate")
    assert client.get_run(run.run_id).info.status == "FAILED"


@pytest.mark.compat
def test_rate_limited_runs_are_deferred_then_replayed_exactly_once(make_proxy, client, experiment, store_path,
                                                                   signing_key, tracking_server, make_replayer):
    proxy = make_proxy({"other": 30, "log_batch": 2})
    collector = FailedRunCollector(store_path, tracking_uri=proxy.url, fail_fast_seconds=1)
    n = 16
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: log_sample_run(collector, experiment, i), range(n)))
    collect_seconds = time.monotonic() - started
    statuses = [status for status, _, _ in results]
    assert DEFERRED in statuses, "the tight limits must defer some runs"
    for status, run_id, payload_id in results:
        assert status in (LOGGED, DEFERRED)
        assert (payload_id is not None) == (status == DEFERRED)
        assert status == DEFERRED or run_id is not None
    store = FailedRunStore(store_path)
    settle(store_path)
    assert sorted(store.ids("pending")) == sorted(p for _, _, p in results if p)
    # every deferred payload is whole: document, artifact copy, signed model blob
    for _, _, payload_id in results:
        if payload_id:
            document = store.read_document(store.document_of(payload_id))
            assert document["signature"]
            for model in document["models"]:
                assert model["blob"] is None or model["signature"]

    profile = RateLimitProfile(name="tight", limits=proxy.profile.limits, safety_factor=0.9)
    proxy.reset()
    replayer = make_replayer(store_path, proxy.url, profile, max_workers=8, signing_key=load_signing_key())
    summary = replayer.run_until_empty(pause=0.5)
    assert summary.replayed == statuses.count(DEFERRED)
    assert summary.failed == 0 and summary.pending == 0
    assert sum(summary.throttled.values()) == 0, summary.as_dict()  # paced under the limits
    assert sum(_stats(proxy)["rate_limited"].values()) == 0

    runs = runs_by_index(client, experiment)
    assert sorted(runs) == list(range(n))
    for i, (_, run_id, payload_id) in enumerate(results):
        assert len(runs[i]) == 1, f"run {i} exists {len(runs[i])} times"
        run = runs[i][0]
        assert_run_complete(client, run, i)
        if run_id is not None:
            assert run.info.run_id == run_id  # the id the task returned stays valid
        if payload_id is not None:
            assert store.result(payload_id)["run_id"] == run.info.run_id
            assert {r["payload_id"]: r["run_id"] for r in summary.ledger}[payload_id] == run.info.run_id
            assert_model_loads(run.info.run_id, i, tracking_server.url)
    assert collect_seconds < 600  # sanity: the tasks did not hang


@pytest.mark.compat
@pytest.mark.jvm
def test_replay_command_prints_a_summary_and_writes_the_ledger(make_proxy, client, experiment, tmp_path,
                                                               store_path, settings, engine, signing_key):
    proxy = make_proxy({"other": 1000, "log_batch": 1})
    collector = FailedRunCollector(store_path, tracking_uri=proxy.url, fail_fast_seconds=0.5)
    results = [log_sample_run(collector, experiment, i, with_model=False) for i in range(4)]
    payloads = [p for _, _, p in results if p]
    assert payloads
    settle(store_path)
    result = CliRunner().invoke(
        cli, ["replay", "--replay-dir", str(store_path), "--until-empty", "--tracking-uri", proxy.url,
              "--profile", "unlimited", "--database", "replay_db"],
        obj={"settings": settings, "engine": engine},
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["replayed"] == len(payloads) and summary["failed"] == 0
    assert summary["still_pending"] == 0 and summary["ledger_rows"] == len(payloads)
    assert set(summary["requests"]) == {"experiment_management", "search_runs", "log_batch", "other"}
    rows = engine.spark.sql("SELECT payload_id, run_id, experiment_id, status, attempts, error "
                            "FROM replay_db.replay_log").collect()
    ledger = {r["payload_id"]: r for r in rows if r["payload_id"] in payloads}
    assert set(ledger) == set(payloads)
    for row in ledger.values():
        assert row["status"] == "replayed" and row["error"] is None and row["experiment_id"] == experiment
        assert client.get_run(row["run_id"]).data.params["solver"] == "lbfgs"
    # the store's state after the pass, for the dashboard's backlog and the attention alert
    (state,) = engine.spark.sql(
        "SELECT pending, claimed, quarantined, replayed, failed, recorded_at FROM replay_db.replay_store_log "
        f"WHERE replay_dir = '{store_path}'").collect()
    assert (state["pending"], state["claimed"], state["quarantined"], state["replayed"], state["failed"]) == (
        0, 0, 0, len(payloads), 0)
    assert state["recorded_at"] is not None
    runs = runs_by_index(client, experiment)
    assert all(len(runs[i]) == 1 for i in range(4))
    # every run carries the payload tag: a deferred run its payload's id, a logged one the id
    # its collector reserved for it
    for i, (_, _, payload_id) in enumerate(results):
        tag = runs[i][0].data.tags.get(PAYLOAD_TAG)
        assert tag is not None
        tag_payload, token = tag.split(":")
        assert len(token) == 32 and (tag_payload == payload_id if payload_id else tag_payload not in payloads)
    # retention: the run kept today's replayed payloads (7 days by default); prune-store removes
    # them once past the retention asked for, and nothing else
    settle(store_path)
    assert summary["pruned"] == 0 and len(FailedRunStore(store_path).ids("done")) == len(payloads)
    store_files = sorted(p.name for p in (store_path / "data").iterdir())
    dry = CliRunner().invoke(cli, ["prune-store", "--replay-dir", str(store_path), "--older-than-days", "0",
                                   "--dry-run"], obj={"settings": settings, "engine": engine})
    assert dry.exit_code == 0 and json.loads(dry.output)["would_prune"] == len(payloads), dry.output
    assert "pruned" not in json.loads(dry.output)
    assert sorted(p.name for p in (store_path / "data").iterdir()) == store_files
    pruned = CliRunner().invoke(cli, ["prune-store", "--replay-dir", str(store_path), "--older-than-days", "0"],
                                obj={"settings": settings, "engine": engine})
    report = json.loads(pruned.output)
    assert report["pruned"] == len(payloads) and report["pruned_bytes"] > 0
    assert report["untouched"] == {"pending": 0, "claimed": 0, "failed": 0}
    settle(store_path)
    assert not list((store_path / "done").iterdir()) and not list((store_path / "data").iterdir())
    # no store is made where there is none, a dry run least of all; days must be finite
    for args, words in (([str(tmp_path / "nope"), "--dry-run"], "does not exist"),
                        ([str(store_path / "done" / ".."), "--older-than-days", "nan"], "finite")):
        refused = CliRunner().invoke(cli, ["prune-store", "--replay-dir", *args],
                                     obj={"settings": settings, "engine": engine})
        assert refused.exit_code == 2 and words in refused.output, refused.output
    assert not (tmp_path / "nope").exists()


@pytest.mark.compat
def test_replay_usage_errors_exit_2(settings, engine, tmp_path):
    def run(*args):
        return CliRunner().invoke(cli, ["replay", *args], obj={"settings": settings, "engine": engine})

    both = run("--replay-dir", str(tmp_path), "--until-empty", "--loop")
    assert both.exit_code == 2 and "not both" in both.output
    profile = run("--replay-dir", str(tmp_path), "--profile", "nope")
    assert profile.exit_code == 2 and "Unknown rate-limit profile" in profile.output
    workers = run("--replay-dir", str(tmp_path), "--max-workers", "0")
    assert workers.exit_code == 2


@pytest.mark.compat
@pytest.mark.jvm
def test_replay_job_entry_point_writes_a_ledger_a_new_process_can_read(make_proxy, client, experiment,
                                                                        tmp_path, signing_key):
    import os
    import subprocess
    import sys
    from pathlib import Path

    proxy = make_proxy({"log_batch": 0.001})
    store_path = tmp_path / "store"
    collector = FailedRunCollector(store_path, tracking_uri=proxy.url, fail_fast_seconds=0.3)
    results = [log_sample_run(collector, experiment, i, with_model=False) for i in range(3)]
    payloads = sorted(p for _, _, p in results if p)
    assert len(payloads) >= 2
    # the replay goes to the server itself (MLFLOW_TRACKING_URI), around the closed proxy
    env = dict(os.environ, RUST_LOG="error", MLFLOW_TRACKING_URI=client.tracking_uri)
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
        env.pop(name, None)
    job = Path(__file__).resolve().parents[2] / "jobs" / "replay_failed_runs.py"
    warehouse = tmp_path / "warehouse"
    replay = subprocess.run(
        [sys.executable, str(job), "--replay-dir", str(store_path), "--until-empty",
         "--profile", "unlimited", "--warehouse", str(warehouse)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert json.loads(replay.stdout)["ledger_rows"] == len(payloads)
    read = subprocess.run(
        [sys.executable, "-m", "mlflow_spark_tools.cli", "--warehouse", str(warehouse), "sql", "--format", "json",
         "SELECT payload_id, run_id, status FROM mlflow_exp.replay_log ORDER BY payload_id"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert read.returncode == 0, read.stderr[-2000:]
    rows = json.loads(read.stdout)
    assert [r["payload_id"] for r in rows] == payloads
    assert all(r["status"] == "replayed" and client.get_run(r["run_id"]) for r in rows)


@pytest.mark.compat
def test_loop_mode_prints_one_summary_per_pass(make_proxy, client, experiment, tmp_path, settings, engine,
                                               signing_key):
    from mlflow_spark_tools.failed_runs.replay_job import LOOP, ReplayOptions, run_replay_job

    proxy = make_proxy({"log_batch": 0.001})
    store_path = tmp_path / "store"
    collector = FailedRunCollector(store_path, tracking_uri=proxy.url, fail_fast_seconds=0.2)
    results = [log_sample_run(collector, experiment, i, with_model=False) for i in range(3)]
    deferred = [p for _, _, p in results if p]
    lines: list[str] = []
    options = ReplayOptions(replay_dir=str(store_path), mode=LOOP, interval=0.1)
    code = run_replay_job(settings.with_overrides(tables__database="loop_db"), options, engine=engine,
                          echo=lines.append, passes=2)
    assert code == 0
    first, second = (json.loads(line) for line in lines)
    assert (first["pass"], first["replayed"], first["ledger_rows"]) == (1, len(deferred), len(deferred))
    assert (second["pass"], second["replayed"], second["ledger_rows"]) == (2, 0, 0)
    assert engine.spark.sql("SELECT count(*) AS n FROM loop_db.replay_log").collect()[0]["n"] == len(deferred)


def _unsavable(model, path, **kwargs):
    raise ValueError("this model cannot be saved here")


@pytest.mark.compat
def test_a_run_whose_model_cannot_be_saved_ends_failed_and_the_error_reaches_the_task(
        tracking_server, client, experiment, tmp_path):
    collector = FailedRunCollector(tmp_path / "store", tracking_uri=tracking_server.url)
    with pytest.raises(ValueError, match="cannot be saved here"):
        with collector.start_run(experiment_id=experiment, run_name="unsavable") as run:
            run.log_params({"a": 1})
            run.log_model(object(), "model", log_model_func=_unsavable)
    server_run = client.get_run(run.run_id)
    assert server_run.info.status == "FAILED" and server_run.data.params == {"a": "1"}
    if hasattr(client, "search_logged_models"):  # nothing created for the model
        assert list(client.search_logged_models(experiment_ids=[experiment])) == []
    assert not (tmp_path / "store" / "pending").exists() or not list((tmp_path / "store" / "pending").iterdir())


@pytest.mark.compat
def test_a_store_that_cannot_be_written_is_refused_before_any_run_and_never_drops_one(closed_proxy, experiment,
                                                                                       tmp_path, settings, engine):
    """A read-only mount: the collector refuses it on the driver, the replay job at start
    (exit 2, one line naming the path and the operation); a collector told not to check
    raises in the task that the run was not saved."""
    from mlflow_spark_tools.errors import InvalidStoreError, RunNotSavedError
    from tests.support.object_store_fuse import ObjectStoreMount, unavailable_reason

    if unavailable_reason() is not None:
        pytest.skip(f"no object-store FUSE mount: {unavailable_reason()}")
    (tmp_path / "backing" / "store").mkdir(parents=True)
    with ObjectStoreMount(tmp_path / "backing", tmp_path / "read only", read_only=True) as mount:
        store_path = mount / "store"
        with pytest.raises(InvalidStoreError) as refused:
            FailedRunCollector(store_path, tracking_uri=closed_proxy.url)
        assert str(store_path) in str(refused.value) and "Read-only file system" in str(refused.value)
        unchecked = FailedRunCollector(store_path, tracking_uri=closed_proxy.url, fail_fast_seconds=0.2,
                                       check_store=False)
        with pytest.raises(RunNotSavedError, match="was not logged .* could not be saved .* The run is not saved"):
            with unchecked.start_run(experiment_id=experiment, run_name="lost?") as run:
                run.log_param("a", 1)
        replay = CliRunner().invoke(cli, ["replay", "--replay-dir", str(store_path), "--tracking-uri",
                                          closed_proxy.url], obj={"settings": settings, "engine": engine})
        assert replay.exit_code == 2
        lines = [line for line in replay.output.splitlines() if line.strip()]
        assert len(lines) == 1 and str(store_path) in lines[0] and "Read-only file system" in lines[0], lines
        assert "Traceback" not in replay.output
