"""A refresh that could be incremental is a full build where that costs less (refresh_cost),
with what the refreshes took kept in the index table; on both engines."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mlflow_spark_tools.spark.arrow import to_arrow, to_dataframe
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.tables.index_table import INDEX_COLUMNS
from mlflow_spark_tools.tables.refresh_cost import REPROBE_AFTER

from .helpers import build, log_run, read_table

pytestmark = pytest.mark.jvm

DB = "mlflow_exp"
MEASURED = ("last_full_seconds", "last_full_run_count", "last_incremental_seconds", "fulls_by_cost")


def _index(engine, experiment):
    row = engine.spark.sql(
        f"SELECT run_count, last_refresh_mode, {', '.join(MEASURED)} FROM {DB}.experiments "
        f"WHERE experiment_id = '{experiment}'").collect()[0]
    return row.asDict()


def _record(engine, experiment, **values):
    """Make the index row say the last refreshes took ``values`` (seconds, run counts)."""
    db = Database(engine, DB)
    data = pa.table({"experiment_id": [experiment],
                     **{k: pa.array([v], pa.int64() if isinstance(v, int) else pa.float64())
                        for k, v in values.items()}})
    schema = ", ".join(["experiment_id string"] + [f"{k} {'bigint' if isinstance(v, int) else 'double'}"
                                                   for k, v in values.items()])
    to_dataframe(engine.spark, data, schema).createOrReplaceTempView("__cost_row")
    db.merge("__cost_row", "experiments", ["experiment_id", *values], key="experiment_id")
    engine.spark.catalog.dropTempView("__cost_row")


@pytest.mark.compat
def test_the_cheaper_refresh_is_chosen_by_what_the_last_ones_took(settings, engine, client, experiment):
    by_cost = settings.with_overrides(tables__refresh_by_cost=True)
    for i in range(4):
        log_run(client, experiment, params={"i": i}, metrics={"loss": 1.0 / (i + 1)})
    first = build(by_cost, experiment, engine)
    assert (first.mode, first.reason) == ("full", "no table yet")
    index = _index(engine, experiment)
    assert index["last_full_seconds"] > 0 and index["last_full_run_count"] == 4
    assert index["last_incremental_seconds"] is None and index["fulls_by_cost"] == 0

    # No incremental refresh measured yet: one is made and measured.
    log_run(client, experiment, params={"i": 4}, metrics={"loss": 0.1})
    second = build(by_cost, experiment, engine)
    assert (second.mode, second.reason, second.rows_inserted) == ("incremental", None, 1)
    index = _index(engine, experiment)
    assert index["last_incremental_seconds"] > 0 and index["last_full_run_count"] == 4

    # The last full build took far less than the last incremental refresh: a full build,
    # with the same rows as one asked for.
    _record(engine, experiment, last_full_seconds=0.001, last_incremental_seconds=100.0)
    log_run(client, experiment, params={"i": 5}, metrics={"loss": 0.05})
    third = build(by_cost, experiment, engine)
    assert third.mode == "full" and third.reason.startswith("a full build is cheaper here")
    assert "against 100.0 s for the last incremental refresh" in third.reason
    assert (third.rows_inserted, third.rows_updated, third.row_count) == (1, 5, 6)
    index = _index(engine, experiment)
    assert index["fulls_by_cost"] == 1 and index["last_full_run_count"] == 6
    assert index["last_incremental_seconds"] == 100.0  # carried over
    chosen = read_table(engine, DB, experiment)
    asked = build(settings, experiment, engine, full_refresh=True)
    assert asked.reason == "a full refresh was asked for" and read_table(engine, DB, experiment) == chosen
    assert _index(engine, experiment)["fulls_by_cost"] == 0

    # The other way round: incremental.
    _record(engine, experiment, last_full_seconds=100.0, last_incremental_seconds=0.001)
    assert build(by_cost, experiment, engine).mode == "incremental"
    assert _index(engine, experiment)["fulls_by_cost"] == 0

    # A full build measured at a tenth of today's runs is expected to take ten times as long.
    _record(engine, experiment, last_full_seconds=1.0, last_full_run_count=1, last_incremental_seconds=5.5)
    assert build(by_cost, experiment, engine).mode == "incremental"  # 6 runs: 6 s expected
    _record(engine, experiment, last_full_seconds=1.0, last_full_run_count=1, last_incremental_seconds=6.5)
    assert build(by_cost, experiment, engine).mode == "full"

    # After REPROBE_AFTER full builds chosen so in a row, one incremental refresh is measured again.
    _record(engine, experiment, last_full_seconds=0.001, last_incremental_seconds=100.0,
            fulls_by_cost=REPROBE_AFTER)
    reprobe = build(by_cost, experiment, engine)
    assert reprobe.mode == "incremental"
    assert _index(engine, experiment)["last_incremental_seconds"] < 100.0

    # Switched off, the refresh is incremental whatever was measured.
    _record(engine, experiment, last_full_seconds=0.001, last_incremental_seconds=100.0)
    assert build(settings, experiment, engine).mode == "incremental"


def test_an_index_table_of_an_earlier_release_gets_the_measurements(settings, engine, client, experiment):
    """An index table without the measurement columns gets them at the next refresh, which is
    the incremental one it would have been."""
    by_cost = settings.with_overrides(tables__refresh_by_cost=True)
    log_run(client, experiment, params={"a": 1})
    build(by_cost, experiment, engine)
    earlier = [(n, t) for n, t in INDEX_COLUMNS if n not in MEASURED]
    rows = to_arrow(engine.spark.table(f"{DB}.experiments")).select([n for n, _ in earlier])
    db = Database(engine, DB)
    db.overwrite(to_dataframe(engine.spark, rows, ", ".join(f"{n} {t}" for n, t in earlier)), "experiments",
                 ["experiment_id"])
    assert not set(MEASURED) & set(db.columns("experiments"))
    log_run(client, experiment, params={"a": 2})
    summary = build(by_cost, experiment, engine)
    assert (summary.mode, summary.rows_inserted) == ("incremental", 1)
    index = _index(engine, experiment)
    assert index["last_incremental_seconds"] > 0 and index["last_full_seconds"] is None
    log_run(client, experiment, params={"a": 3})
    assert build(by_cost, experiment, engine).mode == "incremental"  # no full build measured yet
