"""The rule that picks a full build over an incremental refresh (tables/refresh_cost.py)."""

from __future__ import annotations

from mlflow_spark_tools.tables.refresh_cost import REPROBE_AFTER, cheaper_full_build, measurements


def _row(**values):
    return {"run_count": 1000, "last_full_seconds": 2.0, "last_full_run_count": 1000,
            "last_incremental_seconds": 3.0, "fulls_by_cost": 0} | values


def test_a_full_build_that_took_less_is_chosen_with_its_figures():
    reason = cheaper_full_build(_row())
    assert reason == ("a full build is cheaper here: 2.0 s expected at 1,000 runs, "
                      "against 3.0 s for the last incremental refresh")


def test_incremental_when_it_took_less_or_as_much():
    assert cheaper_full_build(_row(last_incremental_seconds=1.0)) is None
    assert cheaper_full_build(_row(last_incremental_seconds=2.0)) is None


def test_the_full_build_scales_with_the_runs_added_since():
    assert cheaper_full_build(_row(run_count=2000)) is None  # 4.0 s expected against 3.0 s
    assert cheaper_full_build(_row(run_count=1400)) is not None  # 2.8 s
    assert cheaper_full_build(_row(run_count=10)) is not None  # fewer runs: not scaled down


def test_nothing_is_chosen_without_both_measurements():
    for missing in ("last_full_seconds", "last_full_run_count", "last_incremental_seconds"):
        assert cheaper_full_build(_row(**{missing: None})) is None
    assert cheaper_full_build(_row(last_full_run_count=0)) is None
    assert cheaper_full_build({"run_count": 5}) is None


def test_an_incremental_refresh_is_measured_again_after_some_full_builds():
    assert cheaper_full_build(_row(fulls_by_cost=REPROBE_AFTER - 1)) is not None
    assert cheaper_full_build(_row(fulls_by_cost=REPROBE_AFTER)) is None


def test_each_mode_records_its_own_time_and_carries_the_other():
    before = _row(fulls_by_cost=2)
    assert measurements(before, "full", 1.23456, 1500, by_cost=True) == {
        "last_full_seconds": 1.235, "last_full_run_count": 1500, "last_incremental_seconds": 3.0,
        "fulls_by_cost": 3}
    assert measurements(before, "full", 1.0, 1500, by_cost=False)["fulls_by_cost"] == 0
    assert measurements(before, "incremental", 0.5, 1500, by_cost=False) == {
        "last_full_seconds": 2.0, "last_full_run_count": 1000, "last_incremental_seconds": 0.5,
        "fulls_by_cost": 0}
    assert measurements(None, "incremental", 0.5, 3, by_cost=False)["last_full_seconds"] is None
