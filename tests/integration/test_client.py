"""The retrying client against the real server, directly and behind the rate-limit proxy."""

from __future__ import annotations

import logging
import math
import threading
import time

import mlflow
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from mlflow_spark_tools.config import ClientConfig, RateLimitProfile, RetrySettings
from mlflow_spark_tools.errors import RunNotFoundError, UsageError
from mlflow_spark_tools.tracking.client import LOGGED_MODELS_TAG, RetryingClient
from mlflow_spark_tools.tracking.ratelimit import RateLimiter
from tests.support.local_server import free_port

UNLIMITED = RateLimitProfile.load("unlimited")


def fast_retries(attempts=6, **per_operation):
    """Short waits so that retry tests finish quickly; still real waits."""
    retries = {"default": RetrySettings(attempts=attempts, initial_wait=0.05, max_wait=0.5, jitter=0.05)}
    retries.update(per_operation)
    return ClientConfig(mlflow_http_retries=0, retries=retries)


class Sleeps:
    """Records the waits tenacity asks for and really waits them."""

    def __init__(self):
        self.waits = []

    def __call__(self, seconds):
        self.waits.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def one_http_attempt(monkeypatch):
    """MLflow's HTTP layer makes one attempt: what the package's commands set up."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def _mixed_runs(client, experiment):
    """Runs with different keys, a NaN metric, a run without metrics, an empty tag."""
    ids = []
    for i in range(7):
        run = client.create_run(experiment, run_name=f"run-{i % 3}", start_time=1_700_000_000_000 + i * 1000)
        metrics = [] if i == 4 else [Metric("loss", math.nan if i == 2 else 1.0 / (i + 1), 1, 0),
                                      Metric(f"only_{i % 2}", float(i), 1, 0)]
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param(f"p{i % 2}", str(i)), Param("lr", "0.1")],
                         tags=[RunTag("empty", ""), RunTag("team", f"t{i % 3}")])
        if i % 2:
            client.set_terminated(run.info.run_id, end_time=1_700_000_000_500 + i * 1000)
        ids.append(run.info.run_id)
    return ids


@pytest.mark.compat
def test_search_into_pandas_matches_mlflow_search_runs(tracking_server, client, experiment):
    _mixed_runs(client, experiment)
    mlflow.set_tracking_uri(tracking_server.url)
    ours_client = RetryingClient(tracking_server.url, profile=UNLIMITED)
    for kwargs in ({}, {"filter_string": "params.lr = '0.1' and metrics.loss < 0.5"},
                   {"order_by": ["metrics.loss DESC"]}, {"max_results": 4}):
        ours = ours_client.search_runs_pandas([experiment], page_size=2, **kwargs)
        theirs = mlflow.search_runs([experiment], **kwargs)
        assert sorted(ours.columns) == sorted(theirs.columns)
        assert list(ours.columns[:6]) == ["run_id", "experiment_id", "status", "artifact_uri",
                                          "start_time", "end_time"]
        pd.testing.assert_frame_equal(ours, theirs[list(ours.columns)], check_exact=True)
    assert len(ours_client.search_runs_pandas([experiment], page_size=3)) == 7


@pytest.mark.compat
def test_search_into_spark_keeps_nan_apart_from_null(tracking_server, client, experiment, engine):
    _mixed_runs(client, experiment)
    df = RetryingClient(tracking_server.url, profile=UNLIMITED).search_runs_spark(
        engine.spark, [experiment], order_by=["attributes.start_time ASC"], page_size=3)
    assert "metrics.loss" in df.columns and "params.lr" in df.columns and "tags.team" in df.columns
    assert dict(df.dtypes)["metrics.loss"] == "double" and dict(df.dtypes)["start_time"] == "timestamp"
    rows = df.select("`metrics.loss`", "`params.p1`").collect()
    loss = [r[0] for r in rows]
    assert len(rows) == 7 and math.isnan(loss[2]) and loss[4] is None and loss[0] == 1.0
    assert [r[1] for r in rows][:2] == [None, "1"]


def test_rate_limited_requests_are_retried_with_one_log_line_each(
        tracking_server, client, experiment, make_proxy, one_http_attempt, caplog):
    run_ids = [client.create_run(experiment).info.run_id for _ in range(12)]
    proxy = make_proxy({"other": 4}, safety_factor=1.0)
    sleeps = Sleeps()
    # the client's own limiter does not bind until the proxy's first 429: then it holds the
    # class for the Retry-After and lowers its rate (back-pressure), and the 429s are retried
    limiter = RateLimiter(UNLIMITED)
    ours = RetryingClient(proxy.url, config=fast_retries(attempts=30), limiter=limiter, sleep=sleeps)
    with caplog.at_level(logging.WARNING, logger="mlflow_spark_tools.tracking.retries"):
        got = [ours.get_run(run_id).info.run_id for run_id in run_ids]
    assert got == run_ids
    stats = proxy.counters.as_dict()
    rejected = stats["rate_limited"]["other"]
    assert rejected >= 1, stats
    retry_lines = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retry_lines) == rejected == len(sleeps.waits)
    assert all(line.startswith("get_run failed (rate_limited:") and " s" in line for line in retry_lines)
    # the client counted what the proxy saw, 429s included, per endpoint
    assert ours.counts.as_dict()["endpoints"]["runs/get"] == {"requests": 12 + rejected, "429s": rejected}


def test_permanent_errors_are_not_retried(tracking_server, experiment, make_proxy, one_http_attempt):
    proxy = make_proxy()
    sleeps = Sleeps()
    ours = RetryingClient(proxy.url, config=fast_retries(), profile=UNLIMITED, sleep=sleeps)
    with pytest.raises(MlflowException) as raised:
        ours.get_run("0" * 32)
    assert getattr(raised.value, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as raised:
        ours.log_batch("0" * 32, metrics=[Metric("m", 1.0, 1, 0)])
    assert sleeps.waits == []
    assert sum(proxy.counters.as_dict()["requests"].values()) == 2


def test_operations_not_safe_to_repeat_retry_only_when_nothing_was_sent(
        tracking_server, experiment, make_proxy, one_http_attempt):
    dead = f"http://127.0.0.1:{free_port()}"
    sleeps = Sleeps()
    ours = RetryingClient(dead, config=fast_retries(attempts=3), profile=UNLIMITED, sleep=sleeps)
    with pytest.raises(MlflowException):
        ours.create_run(experiment)
    assert len(sleeps.waits) == 2  # connection refused: the server never saw the request

    # A proxy whose upstream is gone answers 502: the server may have acted, so create_run is
    # not repeated while get_run is.
    from mlflow_spark_tools.tools.proxy import RateLimitProxy

    broken = RateLimitProxy(dead, UNLIMITED).start()
    try:
        sleeps = Sleeps()
        ours = RetryingClient(broken.url, config=fast_retries(attempts=3), profile=UNLIMITED, sleep=sleeps)
        with pytest.raises(MlflowException):
            ours.create_run(experiment)
        assert sleeps.waits == []
        with pytest.raises(MlflowException):
            ours.get_run("0" * 32)
        assert len(sleeps.waits) == 2
    finally:
        broken.stop()


@pytest.mark.compat
def test_every_request_is_paced_by_the_shared_buckets(tracking_server, experiment, make_proxy, tmp_path):
    proxy = make_proxy({"other": 12, "log_batch": 12}, safety_factor=1.0)
    profile = RateLimitProfile("tight", {"experiment_management": 10, "search_runs": 10, "log_batch": 10,
                                         "other": 10}, safety_factor=0.9)
    limiter = RateLimiter(profile)
    ours = RetryingClient(proxy.url, config=fast_retries(attempts=1), limiter=limiter)
    run_id = ours.create_run(experiment).info.run_id
    for n in range(12):
        (tmp_path / f"f{n}.txt").write_text(str(n))
    started = time.monotonic()

    def work():
        for _ in range(6):
            ours.get_run(run_id)
            ours.log_batch(run_id, metrics=[Metric("m", 1.0, 1, 0)])

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    ours.log_artifacts(run_id, str(tmp_path))  # one operation, one upload request per file
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    stats = proxy.counters.as_dict()
    assert sum(stats["rate_limited"].values()) == 0, stats
    # the hook took a token for every request the proxy saw, the uploads included
    assert limiter.requests["other"] == stats["requests"]["other"] >= 1 + 18 + 12
    assert limiter.requests["log_batch"] == stats["requests"]["log_batch"] == 18
    assert elapsed >= (limiter.requests["other"] - 2) / 9.0
    assert len(ours.list_artifacts(run_id)) == 12


def test_clients_of_one_profile_share_their_buckets(tracking_server):
    profile = RateLimitProfile.load("databricks")
    assert RetryingClient(tracking_server.url, profile=profile).limiter is \
        RetryingClient(tracking_server.url, profile=profile).limiter


def test_get_or_create_experiment_is_safe_under_concurrency(tracking_server):
    ours = RetryingClient(tracking_server.url, profile=UNLIMITED)
    name = f"concurrent-{time.time_ns()}"
    ids, errors = [], []

    def create():
        try:
            ids.append(ours.get_or_create_experiment(name))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(ids)) == 1
    ours.delete_experiment(ids[0])
    with pytest.raises(UsageError, match="deleted"):
        ours.get_or_create_experiment(name)


def test_run_id_by_name(tracking_server, client, experiment):
    ids = _mixed_runs(client, experiment)
    ours = RetryingClient(tracking_server.url, profile=UNLIMITED)
    for odd in ("it's unique", 'say "hi"', """it's "both" """, "50%_off"):
        odd_id = client.create_run(experiment, run_name=odd).info.run_id
        assert ours.run_id_by_name(experiment, odd) == odd_id
    with pytest.raises(UsageError, match="3 runs are named 'run-0'"):
        ours.run_id_by_name(experiment, "run-0")
    assert ours.run_id_by_name(experiment, "run-0", latest_if_several=True) == ids[6]
    assert ours.run_ids_by_name(experiment, "run-1") == [ids[4], ids[1]]
    with pytest.raises(RunNotFoundError):
        ours.run_id_by_name(experiment, "nobody")


def test_runs_with_models_reads_logged_models_and_the_mlflow2_tag(tracking_server, client, experiment):
    from sklearn.linear_model import LinearRegression

    mlflow.set_tracking_uri(tracking_server.url)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.sklearn.log_model(LinearRegression().fit([[0], [1]], [0, 1]), name="reg")
    old = client.create_run(experiment)
    client.set_tag(old.info.run_id, LOGGED_MODELS_TAG,
                   '[{"run_id": "x", "artifact_path": "sk-model", "flavors": {}}]')
    client.create_run(experiment)  # no model
    broken = client.create_run(experiment)  # its model's logging failed half-way
    failed = client.create_logged_model(experiment, name="broken", source_run_id=broken.info.run_id)
    client.finalize_logged_model(failed.model_id, "FAILED")
    refs = RetryingClient(tracking_server.url, profile=UNLIMITED).runs_with_models([experiment])
    found = {(r.run_id, r.name, r.source) for r in refs}
    assert found == {(run.info.run_id, "reg", "logged_model"),
                     (old.info.run_id, "sk-model", "log-model.history")}
    assert next(r for r in refs if r.name == "reg").model_id
