"""Metric history selection, per-run summaries and the names of summary columns."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from mlflow_spark_tools.config import load_settings
from mlflow_spark_tools.errors import InvalidConfigError, UsageError
from mlflow_spark_tools.runs.columns import METRIC, SUMMARY_KINDS, ColumnNamer, ColumnSpec
from mlflow_spark_tools.tables.metric_history import (
    HistorySelection,
    combine_summaries,
    summarize,
    with_summaries,
)
from mlflow_spark_tools.tables.rest_source import points_table


def test_selection_parsing():
    assert HistorySelection.parse(None) is None
    assert HistorySelection.parse("none") is None and HistorySelection.parse(" ") is None
    assert HistorySelection.parse("all").keys is None
    assert HistorySelection.parse("ALL").label == "all"
    chosen = HistorySelection.parse(" loss, val.loss ,loss")
    assert chosen.keys == frozenset({"loss", "val.loss"}) and chosen.label == "loss,val.loss"
    assert HistorySelection.parse(["b", "a"]).label == "a,b"
    assert chosen.wants("loss") and not chosen.wants("acc")
    for mixed in ("all,loss", "none,loss", "loss,OFF"):
        with pytest.raises(UsageError, match="not a mix"):
            HistorySelection.parse(mixed)


def test_history_settings_are_checked():
    settings = load_settings(environ={})
    assert settings.tables.metric_history is None and settings.tables.max_history_points == 1_000_000
    with pytest.raises(InvalidConfigError, match="max_history_points"):
        settings.with_overrides(tables__max_history_points=0)
    with pytest.raises(InvalidConfigError, match="metric_history"):
        settings.with_overrides(tables__metric_history=3)
    assert settings.with_overrides(tables__metric_history=["loss"]).tables.metric_history == ["loss"]


def _points(run_id, values):
    return [{"run_id": run_id, "key": "loss", "step": step, "timestamp": 1000 + step, "value": value}
            for step, value in values]


def test_summaries_ignore_nan_keep_infinities_and_take_the_first_step_of_a_tie():
    points = (_points("r1", [(0, 3.0), (1, float("nan")), (2, 1.0), (3, 1.0), (4, 5.0), (5, 5.0)])
              + _points("r2", [(0, float("nan"))])
              + _points("r3", [(7, float("-inf")), (3, float("inf")), (9, 0.0)]))
    found = {r["run_id"]: r for r in summarize(points_table(points, "loss")).to_pylist()}
    assert found["r1"] == {"run_id": "r1", "key": "loss", "min": 1.0, "min_step": 2, "max": 5.0, "max_step": 4}
    assert "r2" not in found  # only NaN: no summary
    assert (found["r3"]["min"], found["r3"]["min_step"]) == (-math.inf, 7)
    assert (found["r3"]["max"], found["r3"]["max_step"]) == (math.inf, 3)


def test_summary_columns_follow_the_metric_column_names():
    namer = ColumnNamer([ColumnSpec("_m_val_loss", METRIC, "val.loss", "double")])
    namer.assign([(METRIC, "Val_Loss")])
    namer.assign([(kind, key) for key in ("val.loss", "Val_Loss", "new key") for kind in SUMMARY_KINDS])
    assert namer.name(METRIC, "Val_Loss") == "_m_val_loss_2"
    assert namer.name("metric_min", "val.loss") == "_mmin_val_loss"
    assert namer.name("metric_max_step", "Val_Loss") == "_mmaxstep_val_loss_2"
    # a summary of a metric not named yet names the metric first
    assert namer.name(METRIC, "new key") == "_m_new_key"
    assert namer.name("metric_min_step", "new key") == "_mminstep_new_key"


def test_summaries_join_the_run_rows_in_their_order():
    data = pa.table({"run_id": ["r3", "r1", "r2"]})
    summaries = summarize(points_table(_points("r1", [(0, 2.0), (1, 1.0)]) + _points("r3", [(0, 4.0)]), "loss"))
    names = {"metric_min": "_mmin_loss", "metric_min_step": "_mminstep_loss", "metric_max": "_mmax_loss",
             "metric_max_step": "_mmaxstep_loss"}
    joined, added = with_summaries(data, summaries, lambda kind, key: names[kind])
    assert joined["_mmin_loss"].to_pylist() == [4.0, 1.0, None]
    assert joined["_mminstep_loss"].to_pylist() == [0, 1, None]
    assert [a[0] for a in added] == ["_mmin_loss", "_mminstep_loss", "_mmax_loss", "_mmaxstep_loss"]


def test_new_points_are_those_the_table_lacks_nan_and_signed_zero_included():
    from mlflow_spark_tools.tables.metric_history import _identity, _new_points

    known = points_table(_points("r1", [(0, float("nan")), (1, 0.0), (2, 1.5)]), "loss")
    fetched = points_table(_points("r1", [(0, float("nan")), (1, -0.0), (2, 1.5), (3, 2.0)])
                           + _points("r2", [(0, 1.5)]), "loss")
    new = _new_points(fetched, _identity(known))
    assert [(r["run_id"], r["step"]) for r in new.to_pylist()] == [("r1", 1), ("r1", 3), ("r2", 0)]
    assert new.schema == fetched.schema


def test_summaries_of_a_history_read_in_parts_are_those_of_the_whole():
    """A run's history may be split across record batches or pages: combining the parts'
    summaries gives the summary of all the points, ties at the lowest step, NaN ignored."""
    import random

    rng = random.Random(7)
    rows = []
    for run in ("r1", "r2"):
        for key in ("loss", "acc"):
            for step in range(40):
                value = rng.choice([0.5, 1.0, 2.0, float("nan"), float("inf"), -1.0, rng.random()])
                rows.append({"run_id": run, "key": key, "step": step, "value": value})
    points = pa.Table.from_pylist(rows, schema=pa.schema([("run_id", pa.string()), ("key", pa.string()),
                                                          ("step", pa.int64()), ("value", pa.float64())]))
    whole = summarize(points).sort_by([("run_id", "ascending"), ("key", "ascending")]).to_pylist()
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, points.num_rows), 6))
        parts = [points.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, points.num_rows])]
        combined = combine_summaries([summarize(p) for p in parts])
        assert combined.sort_by([("run_id", "ascending"), ("key", "ascending")]).to_pylist() == whole
    assert combine_summaries([summarize(points.slice(0, 0))]).num_rows == 0
