import io
import logging

import pytest

from mlflow_spark_tools.core.progress import PROGRESS_LOGGER, Progress
from tests.support.fake_time import FakeTime


@pytest.mark.parametrize("total, items, expected", [
    pytest.param(300, 100, [
        "Replay: payloads handled: 30/300 payloads in 30 s (1.0 payloads/s)",
        "Replay: payloads handled: 60/300 payloads in 60 s (1.0 payloads/s)",
        "Replay: payloads handled: 90/300 payloads in 90 s (1.0 payloads/s)",
        "Replay: payloads handled: 100/300 payloads in 100 s (1.0 payloads/s) (done)",
    ], id="a line every interval and at the end of a long step"),
    # payloads that arrive while a replay runs raise the total: never "77/47 payloads"
    pytest.param(47, 77, [
        "Replay: payloads handled: 30/47 payloads in 30 s (1.0 payloads/s)",
        "Replay: payloads handled: 60/60 payloads in 60 s (1.0 payloads/s)",
        "Replay: payloads handled: 77/77 payloads in 77 s (1.0 payloads/s) (done)",
    ], id="more items than expected raise the total"),
])
def test_log_lines_of_a_long_step(caplog, total, items, expected):
    t = FakeTime()
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    with Progress("Replay: payloads handled", "payloads", total=total, bar=False, every=30, clock=t.clock) as p:
        for _ in range(items):
            t.now += 1
            p.update()
    assert [r.getMessage() for r in caplog.records] == expected
    assert p.total == max(total, items)


def test_a_short_step_stays_quiet(caplog):
    t = FakeTime()
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    with Progress("Experiment 1/1 (5): runs fetched", "runs", bar=False, clock=t.clock) as p:
        p.update(1000)
        t.now += 2
    assert caplog.records == []


def test_a_bar_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    with Progress("Experiment 1/1 (5): runs fetched", "runs") as p:
        assert p._bar is not None
        p.update(1500)
        assert p._bar.n == 1500
    assert "Experiment 1/1 (5): runs fetched: 0 runs" in err.getvalue()
    assert err.getvalue().endswith("\r") and p._bar is None  # the bar is drawn, then cleared
