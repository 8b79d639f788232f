"""Moving Arrow tables into and out of Spark without losing NaN.

``createDataFrame(pandas_df)`` turns NaN into NULL; an Arrow table keeps them apart. Spark 4
sessions (classic and Connect) accept Arrow tables directly; older sessions get rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def to_dataframe(spark: SparkSession, table: pa.Table, ddl_schema: str) -> DataFrame:
    """A DataFrame with ``ddl_schema`` holding the rows of ``table`` (NaN preserved)."""
    if table.num_rows == 0:
        return spark.createDataFrame([], ddl_schema)
    try:
        return spark.createDataFrame(table, ddl_schema)
    except (TypeError, ValueError) as exc:
        if "Table" not in str(exc) and "arrow" not in str(exc).lower():
            raise
    return spark.createDataFrame([tuple(r.values()) for r in table.to_pylist()], ddl_schema)


def to_arrow(df: Any) -> pa.Table:
    """Collect a DataFrame as an Arrow table."""
    if hasattr(df, "toArrow"):
        return df.toArrow()
    return pa.Table.from_pandas(df.toPandas(), preserve_index=False)
