"""Arrow tables in and out of Spark: natively on Spark 4, as rows on Spark 3.5 (``make compat``),
with the same values either way: NaN apart from NULL, timestamps as instants, integers kept."""

from __future__ import annotations

import datetime
import math

import pyarrow as pa
import pytest

from mlflow_spark_tools.spark.arrow import arrow_native, rows_to_arrow, to_arrow, to_dataframe

from ..conftest import cells_equal

pytestmark = pytest.mark.jvm

UTC = datetime.timezone.utc
QUERY = (
    "SELECT TIMESTAMP'2024-01-01 12:00:00' AS ts, CAST(NULL AS BIGINT) AS n, 7L AS big, 1 AS small, "
    "CAST('NaN' AS DOUBLE) AS nan, CAST(NULL AS DOUBLE) AS nul, true AS flag, 'é' AS text, "
    "DATE'2024-01-02' AS day, map('a', 1) AS m, array(1, 2) AS arr, named_struct('x', 1) AS st, "
    "CAST(1.5 AS DECIMAL(10,2)) AS dec, X'0102' AS bin, array(named_struct('y', 2)) AS nested"
)


def rows_equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(cells_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


@pytest.mark.compat
def test_collected_rows_become_the_table_spark_4_gives(engine):
    df = engine.spark.sql(QUERY)
    table = rows_to_arrow(df.schema, df.collect())
    (row,) = table.to_pylist()
    assert row["ts"] == datetime.datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert (row["n"], row["big"], row["small"], row["nul"], row["flag"], row["text"]) == (None, 7, 1, None, True, "é")
    assert math.isnan(row["nan"]) and row["day"] == datetime.date(2024, 1, 2)
    assert (row["m"], row["arr"], row["st"], row["bin"], row["nested"]) == (
        [("a", 1)], [1, 2], {"x": 1}, b"\x01\x02", [{"y": 2}])
    assert str(row["dec"]) == "1.50"
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("n").type == pa.int64() and table.schema.field("small").type == pa.int32()
    if arrow_native():
        native = df.toArrow()
        assert table.schema.equals(native.schema)
        assert rows_equal(table.to_pylist(), native.to_pylist())


@pytest.mark.compat
def test_a_table_goes_into_spark_and_back_unchanged(engine):
    table = pa.table({
        "run_id": pa.array(["a", "b", "c"]),
        "start_time": pa.array([datetime.datetime(2024, 3, 10, 7, 30, tzinfo=UTC), None,
                                datetime.datetime(1999, 12, 31, 23, 59, 59, 123000, tzinfo=UTC)],
                               pa.timestamp("us", tz="UTC")),
        "_p_depth": pa.array([3, None, 5], pa.int64()),
        "_p_flag": pa.array([True, None, False]),
        "_m_rmse": pa.array([0.5, math.nan, None], pa.float64()),
        "_m_inf": pa.array([math.inf, -math.inf, 1.7976931348623157e308], pa.float64()),
    })
    ddl = ("run_id STRING, start_time TIMESTAMP, _p_depth BIGINT, _p_flag BOOLEAN, _m_rmse DOUBLE, "
           "_m_inf DOUBLE")
    df = to_dataframe(engine.spark, table, ddl)
    back = to_arrow(df.orderBy("run_id"))
    assert back.column_names == table.column_names
    assert rows_equal(back.to_pylist(), table.to_pylist())
    assert to_arrow(to_dataframe(engine.spark, table.slice(0, 0), ddl)).num_rows == 0
