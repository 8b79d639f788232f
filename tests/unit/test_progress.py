import io
import logging

from mlflow_spark_tools.core.progress import PROGRESS_LOGGER, Progress
from tests.support.fake_time import FakeTime


def test_log_lines_every_interval_and_at_the_end_of_a_long_step(caplog):
    t = FakeTime()
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    with Progress("Replay: payloads handled", "payloads", total=300, bar=False, every=30, clock=t.clock) as p:
        for _ in range(100):
            t.now += 1
            p.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "Replay: payloads handled: 30/300 payloads in 30 s (1.0 payloads/s)",
        "Replay: payloads handled: 60/300 payloads in 60 s (1.0 payloads/s)",
        "Replay: payloads handled: 90/300 payloads in 90 s (1.0 payloads/s)",
        "Replay: payloads handled: 100/300 payloads in 100 s (1.0 payloads/s) (done)",
    ]


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


def test_more_items_than_expected_raise_the_total(caplog):
    """Payloads that arrive while a replay runs: never "77/47 payloads"."""
    t = FakeTime()
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    with Progress("Replay: payloads handled", "payloads", total=47, bar=False, every=30, clock=t.clock) as p:
        for _ in range(77):
            t.now += 1
            p.update()
    assert caplog.records[-1].getMessage() == "Replay: payloads handled: 77/77 payloads in 77 s (1.0 payloads/s) (done)"
    assert p.total == 77
