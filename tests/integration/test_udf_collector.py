"""Runs logged from Spark UDFs through the proxy with tight limits, then replayed; the store on a
local disk, and on the object-store FUSE mount for classic Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlflow_spark_tools.config import RateLimitProfile
from mlflow_spark_tools.failed_runs.signing import load_signing_key
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from tests.support.object_store_fuse import settle

from .run_content import assert_model_loads, assert_run_complete, runs_by_index

JOB = Path(__file__).parents[1] / "support" / "udf_sweep_job.py"


def _sweep(engine_kind, proxy, experiment, tmp_path, store, runs):
    out = tmp_path / "results.json"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, RUST_LOG="error")
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    completed = subprocess.run(
        [sys.executable, str(JOB), "--engine", engine_kind, "--tracking-uri", proxy.url,
         "--experiment-id", experiment, "--store", str(store), "--runs", str(runs),
         # no retry of a 429: every run that meets one is deferred, however fast the machine
         # (with a retry budget a fast machine got every run through on the second try)
         "--fail-fast-seconds", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    written = json.loads(out.read_text())
    print(f"{runs} runs in {written['seconds']:.1f} s")
    return written["results"]


@pytest.mark.compat
@pytest.mark.parametrize("engine_kind, runs, on", [("classic", 100, "local disk"), ("embedded", 60, "local disk"),
                                                   ("classic", 100, "object store")])
def test_udf_sweep_under_rate_limits_loses_nothing(engine_kind, runs, on, make_proxy, client, experiment, request,
                                                   tmp_path, signing_key, tracking_server, make_replayer):
    # two Spark workers log about 3 runs a second here, each run two log_batch requests in
    # quick succession (its own, and its model's metrics): a bucket of 2.5 takes a whole run
    # and binds on a machine twice as slow too
    limits = {"other": 150, "log_batch": 2.5}
    proxy = make_proxy(limits)
    store_path = tmp_path / "store" if on == "local disk" else request.getfixturevalue("object_store") / \
        f"udf store {experiment}"
    results = _sweep(engine_kind, proxy, experiment, tmp_path, store_path, runs)
    assert sorted(r[0] for r in results) == list(range(runs))
    deferred = [r for r in results if r[1] == "deferred"]
    logged = [r for r in results if r[1] == "logged"]
    assert deferred and logged and len(deferred) + len(logged) == runs, (
        f"{len(deferred)} deferred, {len(logged)} logged, 429s {proxy.counters.as_dict()['rate_limited']}")
    assert proxy.counters.as_dict()["rate_limited"]["log_batch"] > 0

    settle(store_path)
    store = FailedRunStore(store_path)
    assert sorted(store.ids("pending")) == sorted(r[3] for r in deferred)
    proxy.reset()
    profile = RateLimitProfile(name="tight", limits=proxy.profile.limits, safety_factor=0.9)
    summary = make_replayer(store.root, proxy.url, profile, max_workers=8,
                            signing_key=load_signing_key()).run_until_empty(pause=0.5)
    assert summary.replayed == len(deferred) and summary.failed == 0 and summary.pending == 0
    assert sum(summary.throttled.values()) == 0

    by_index = runs_by_index(client, experiment)
    assert sorted(by_index) == list(range(runs))
    for i, _status, run_id, payload_id in results:
        assert len(by_index[i]) == 1, f"run {i} exists {len(by_index[i])} times"
        run = by_index[i][0]
        assert_run_complete(client, run, i)
        if run_id is not None:
            assert run.info.run_id == run_id
        if payload_id is not None:
            assert store.result(payload_id)["run_id"] == run.info.run_id
    for i, *_ in deferred[:3] + logged[:2]:
        assert_model_loads(by_index[i][0].info.run_id, i, tracking_server.url)
