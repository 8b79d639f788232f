"""Moving Arrow tables into and out of Spark without losing NaN.

``createDataFrame(pandas_df)`` and ``toPandas()`` turn NaN into NULL or NULL into NaN (and
integer columns with NULLs into floats); an Arrow table keeps them apart. Spark 4 sessions
(classic and Connect) take and give Arrow tables directly (``createDataFrame(table)``,
``toArrow()``). Spark 3.5 sessions (Databricks Runtime 15.4 and 16.4 LTS) have neither: there
the rows go as Python values, which keep NaN and NULL apart as well, only slower.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mlflow_spark_tools.core.dependencies import version_tuple
from mlflow_spark_tools.core.identifiers import quote
from mlflow_spark_tools.spark.maps import map_from_entries

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def arrow_native() -> bool:
    """Whether this pyspark takes and gives Arrow tables (``createDataFrame(pa.Table)``,
    ``DataFrame.toArrow``): Spark 4 and later."""
    import pyspark

    return version_tuple(pyspark.__version__) >= (4,)


def to_dataframe(spark: SparkSession, table: pa.Table, ddl_schema: str) -> DataFrame:
    """A DataFrame with ``ddl_schema`` holding the rows of ``table`` (NaN preserved)."""
    if table.num_rows == 0:
        return spark.createDataFrame([], ddl_schema)
    if arrow_native():
        try:
            return spark.createDataFrame(table, ddl_schema)
        except (TypeError, ValueError) as exc:  # a fork of Spark 4 without Arrow input
            if "Table" not in str(exc) and "arrow" not in str(exc).lower():
                raise
    # Spark 3.5: rows of Python values (timestamps as aware datetimes, NaN as float('nan')).
    rows = list(zip(*(column.to_pylist() for column in table.columns)))
    return spark.createDataFrame(rows, ddl_schema)


def to_arrow(df: Any) -> pa.Table:
    """Collect a DataFrame as an Arrow table, typed by its Spark schema (NaN kept apart from NULL)."""
    if hasattr(df, "toArrow"):
        return df.toArrow()
    return rows_to_arrow(df.schema, df.collect())


def rows_to_arrow(schema: Any, rows: list[Any]) -> pa.Table:
    """The Arrow table Spark 4's ``toArrow`` gives for collected ``rows`` of ``schema`` (a
    ``StructType``): the same column types (timestamps in UTC), NULL and NaN kept apart."""
    columns = list(zip(*rows)) if rows else [() for _ in schema.fields]
    arrays, fields = [], []
    for field, values in zip(schema.fields, columns):
        if _needs_conversion(field.dataType):
            plain = [_plain(value, field.dataType) for value in values]
        else:  # numbers, strings, booleans, dates, decimals: as collected
            plain = list(values)
        arrow_type = _arrow_type(field.dataType)
        array = pa.array(plain) if arrow_type is None else pa.array(plain, type=arrow_type)
        arrays.append(array)
        fields.append(pa.field(field.name, array.type, nullable=field.nullable))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _arrow_type(data_type: Any) -> pa.DataType | None:
    """The Arrow type of a Spark type, None where this pyspark has no mapping (inferred then)."""
    from pyspark.sql.pandas.types import to_arrow_type

    try:
        return to_arrow_type(data_type)
    except Exception:  # pyspark raises its own error types for unsupported (nested) types
        return None


def _needs_conversion(data_type: Any) -> bool:
    from pyspark.sql.types import ArrayType, BinaryType, MapType, StructType, TimestampType

    return isinstance(data_type, (ArrayType, BinaryType, MapType, StructType, TimestampType))


def _plain(value: Any, data_type: Any) -> Any:
    """A collected value as pyarrow takes it for ``data_type``."""
    from pyspark.sql.types import ArrayType, BinaryType, MapType, StructType, TimestampType

    if value is None:
        return None
    if isinstance(data_type, TimestampType):
        # collect() gives local wall-clock time without a zone; Arrow holds the instant (UTC)
        return value.astimezone(datetime.timezone.utc)
    if isinstance(data_type, StructType):
        return {f.name: _plain(v, f.dataType) for f, v in zip(data_type.fields, value)}
    if isinstance(data_type, ArrayType):
        return [_plain(v, data_type.elementType) for v in value]
    if isinstance(data_type, MapType):
        return [(_plain(k, data_type.keyType), _plain(v, data_type.valueType)) for k, v in value.items()]
    if isinstance(data_type, BinaryType):
        return bytes(value)
    return value


def _is_map(data_type: str) -> bool:
    return data_type.replace(" ", "").lower().startswith("map<")


def _entries_type(map_type: str) -> str:
    """``array<struct<key:K,value:V>>`` for ``map<K,V>``."""
    inner = map_type.strip()[len("map<"):-1]
    depth = 0
    for i, char in enumerate(inner):
        depth += char == "<"
        depth -= char == ">"
        if char == "," and depth == 0:
            return f"array<struct<key:{inner[:i].strip()},value:{inner[i + 1:].strip()}>>"
    raise ValueError(f"Not a map type: {map_type!r}")


def entries_schema(columns: Sequence[tuple[str, str]]) -> str:
    """The DDL schema ``columns`` (name, SQL type) travel in: each ``map<K,V>`` as a list of
    ``key`` / ``value`` structs (see :func:`frame_with_maps`)."""
    return ", ".join(f"{quote(n)} {_entries_type(t) if _is_map(t) else t}" for n, t in columns)


def with_maps(df: DataFrame, columns: Sequence[tuple[str, str]], spark: SparkSession) -> DataFrame:
    """``df`` in :func:`entries_schema` with its map columns made maps."""
    if not any(_is_map(t) for _, t in columns):
        return df
    return df.select(*(map_from_entries(df[n], spark).alias(n) if _is_map(t) else df[n] for n, t in columns))


def frame_with_maps(spark: SparkSession, data: pa.Table, columns: Sequence[tuple[str, str]]) -> DataFrame:
    """A DataFrame of ``data`` with the columns (name, SQL type) ``columns`` (NaN preserved).

    A ``map<K,V>`` column comes in ``data`` as a list of ``key`` / ``value`` structs (empty
    for none) and becomes a map in Spark (:func:`~mlflow_spark_tools.spark.maps.map_from_entries`): Spark 3.5 sessions take Arrow
    data as rows of Python values, where a map must be a dict and an Arrow map is a list of
    pairs, while lists of structs travel alike on every version.
    """
    return with_maps(to_dataframe(spark, data, entries_schema(columns)), columns, spark)


def byte_slices(data: pa.Table, limit: int) -> list[pa.Table]:
    """``data`` cut into consecutive slices of at most ``limit`` bytes of top-level string and
    binary values each (at least one row each): a few huge values among small ones (a dataset
    profile of 8 MB in 40 rows of inputs) are spread by their own sizes, not by the average."""
    if data.num_rows == 0 or data.nbytes <= limit:
        return [data]
    import numpy as np
    import pyarrow.compute as pc

    sizes = np.full(data.num_rows, 64, dtype=np.int64)  # a row's fixed-width part, roughly
    for column in data.columns:
        if pa.types.is_string(column.type) or pa.types.is_binary(column.type) or \
                pa.types.is_large_string(column.type):
            sizes += pc.fill_null(pc.binary_length(column), 0).to_numpy()
    slices, start, taken = [], 0, 0
    for row, size in enumerate(sizes.tolist()):
        if row > start and taken + size > limit:
            slices.append(data.slice(start, row - start))
            start, taken = row, 0
        taken += size
    slices.append(data.slice(start))
    return slices
