"""The retry layer's named policies, on a fake clock."""

from __future__ import annotations

import pytest

from mlflow_spark_tools.config import RetrySettings
from mlflow_spark_tools.tracking.pacing import RateLimitedResponse
from mlflow_spark_tools.tracking.retries import back_pressure, call_with_retries, fail_fast, patient
from tests.support.fake_time import FakeTime


def failing(exc, calls):
    def func():
        calls.append(1)
        raise exc
    return func


def test_a_server_that_refuses_connections_is_given_up_after_five_seconds():
    t, calls = FakeTime(), []
    policy = patient(RetrySettings(attempts=10, initial_wait=1.0, max_wait=30.0, jitter=0.0))
    with pytest.raises(ConnectionRefusedError):
        call_with_retries(policy, "get_run", failing(ConnectionRefusedError("refused"), calls),
                          sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [1.0, 2.0, 2.0] and len(calls) == 4 and t.now == 5.0


def test_other_transient_errors_get_every_attempt():
    t, calls = FakeTime(), []
    policy = patient(RetrySettings(attempts=5, initial_wait=1.0, max_wait=30.0, jitter=0.0))
    with pytest.raises(TimeoutError):
        call_with_retries(policy, "get_run", failing(TimeoutError("read timed out"), calls),
                          sleep=t.sleep, clock=t.clock)
    assert t.sleeps == [1.0, 2.0, 4.0, 8.0] and len(calls) == 5


def test_back_pressure_waits_out_429s_past_its_attempts_honouring_retry_after():
    t, calls = FakeTime(), []

    def func():
        calls.append(1)
        if len(calls) < 12:
            raise RateLimitedResponse("/runs/get", 3.0)
        return "ok"

    assert call_with_retries(back_pressure(), "get_run", func, sleep=t.sleep, clock=t.clock) == "ok"
    assert len(calls) == 12 and all(s >= 3.0 for s in t.sleeps)


def test_fail_fast_in_a_storm_raises_the_first_429():
    t, calls = FakeTime(), []
    with pytest.raises(RateLimitedResponse):
        call_with_retries(fail_fast(5.0, in_storm=True), "log_batch",
                          failing(RateLimitedResponse("/runs/log-batch", 1.0), calls), sleep=t.sleep, clock=t.clock)
    assert calls == [1] and t.sleeps == []



def test_requests_close_their_connections():
    # A collector makes a TrackingRequests per run and closes it when the run ends; an open
    # pool per run left a connection per run open (a 300-run Spark task exhausted a proxy's
    # 256 connections).
    from mlflow_spark_tools.tracking.rest_calls import TrackingRequests

    requests = TrackingRequests("http://127.0.0.1:9", fail_fast(1.0))
    adapter = requests._direct.session.get_adapter("http://127.0.0.1:9")
    adapter.poolmanager.connection_from_url("http://127.0.0.1:9")
    assert len(adapter.poolmanager.pools) == 1
    requests.close()
    assert len(adapter.poolmanager.pools) == 0
