"""Run search results as pandas and Spark DataFrames with ``mlflow.search_runs`` columns.

Columns: ``run_id``, ``experiment_id``, ``status``, ``artifact_uri``, ``start_time``,
``end_time`` (UTC timestamps), then ``metrics.<key>`` (latest value, float), ``params.<key>`` and
``tags.<key>`` (strings), each group sorted by key. As in ``mlflow.search_runs``, a metric a run
did not log is NaN in pandas and a param or tag is None; in Spark a missing metric is NULL and a
logged NaN stays NaN. Pages are turned into Arrow columns as they arrive, never into MLflow
entity objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mlflow_spark_tools.runs.columns import METRIC, PARAM, TAG
from mlflow_spark_tools.runs.run_batches import concat_pages, runs_to_table, split_raw_name

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

INFO = ("run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time")
GROUP_PREFIX = {METRIC: "metrics.", PARAM: "params.", TAG: "tags."}
_GROUP_ORDER = (METRIC, PARAM, TAG)


def runs_arrow(pages: Iterable[list[dict[str, Any]]]) -> pa.Table:
    """One Arrow table of the runs of every page, in the order the pages returned them."""
    table = concat_pages([runs_to_table(runs) for runs in pages])
    grouped: dict[str, list[tuple[str, str]]] = {kind: [] for kind in _GROUP_ORDER}
    for name in table.column_names:
        kind_key = split_raw_name(name)
        if kind_key is not None:
            kind, key = kind_key
            grouped[kind].append((key, name))
    columns = [table[name] for name in INFO]
    names = list(INFO)
    for kind in _GROUP_ORDER:
        for key, raw in sorted(grouped[kind]):
            columns.append(table[raw])
            names.append(GROUP_PREFIX[kind] + key)
    return pa.Table.from_arrays(columns, names=names)


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """The pandas DataFrame ``mlflow.search_runs`` would return for these runs."""
    return table.to_pandas(coerce_temporal_nanoseconds=True)


def to_spark(spark: SparkSession, table: pa.Table) -> DataFrame:
    """A Spark DataFrame of the runs (NaN kept apart from NULL)."""
    from mlflow_spark_tools.spark.arrow import to_dataframe

    ddl = ", ".join(f"`{field.name}` {_spark_type(field.type)}" for field in table.schema)
    return to_dataframe(spark, table, ddl)


def _spark_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP"
    if pa.types.is_floating(arrow_type):
        return "DOUBLE"
    return "STRING"
