"""Runs held in Spark, shaped into experiment table columns inside Spark.

The input is a DataFrame of one row per run with the run info columns
(:data:`~mlflow_spark_tools.runs.columns.INFO_COLUMNS`, named and typed as the table has them)
and three maps: ``params`` (``map<string,string>``), ``metrics`` (the latest value of each key,
``map<string,double>``) and ``tags`` (``map<string,string>``). Two Spark jobs make the table's
columns, however many runs and keys there are:

1. one aggregate over the maps' entries gives every key with the number of runs that have it
   and, for params, whether every value parses as a bigint, a double or a boolean (the rules of
   :mod:`~mlflow_spark_tools.tables.param_types`, as Spark regular expressions and casts); only
   these few rows per key reach the driver, where the keys are named
   (:class:`~mlflow_spark_tools.runs.columns.ColumnNamer`);
2. one projection turns each key into its column (a map lookup, cast to the param's type).

Keys never enter SQL text: the lookups are DataFrame expressions with the key as a literal value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow_spark_tools.runs.columns import (
    INFO_COLUMNS,
    KIND_TYPES,
    METRIC,
    PARAM,
    TAG,
    ColumnNamer,
    ColumnSpec,
    info_specs,
    sort_specs,
)
from mlflow_spark_tools.tables import param_types
from mlflow_spark_tools.tables.param_types import KeyStats

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

MAPS = {PARAM: "params", METRIC: "metrics", TAG: "tags"}


def key_stats(runs: DataFrame) -> list[KeyStats]:
    """Every key of the runs' maps with its run count and, for params, its value types."""
    from pyspark.sql import functions as F

    # `$` also matches before a final newline in Java's regular expressions (Spark), not in
    # Arrow's or Rust's: \z is the end of the value in all of them
    patterns = {t: p[:-1] + r"\z" if p.endswith("$") else p for t, p in param_types.PATTERNS.items()}
    value = F.col("value")
    params = runs.select(F.inline(F.map_entries("params"))).groupBy("key").agg(
        F.count(F.lit(1)).alias("runs"),
        F.bool_and(value.rlike(patterns[param_types.BIGINT])
                   & F.expr("try_cast(value AS BIGINT)").isNotNull()).alias("bigint"),
        F.bool_and(value.rlike(patterns[param_types.DOUBLE])).alias("double"),
        F.bool_and(value.rlike(patterns[param_types.BOOLEAN])).alias("boolean"),
    ).withColumn("kind", F.lit(PARAM))
    others = [
        runs.select(F.inline(F.map_entries(MAPS[kind]))).groupBy("key").agg(F.count(F.lit(1)).alias("runs"))
        .select("key", "runs", *(F.lit(False).alias(t) for t in ("bigint", "double", "boolean")),
                F.lit(kind).alias("kind"))
        for kind in (METRIC, TAG)
    ]
    found = params.select("key", "runs", "bigint", "double", "boolean", "kind")
    for other in others:
        found = found.unionByName(other)
    return [KeyStats(r["kind"], r["key"], int(r["runs"]), {param_types.BIGINT: bool(r["bigint"]),
                                                           param_types.DOUBLE: bool(r["double"]),
                                                           param_types.BOOLEAN: bool(r["boolean"])})
            for r in found.collect()]


def shape(runs: DataFrame, stats: list[KeyStats], namer: ColumnNamer,
          types: dict[str, str]) -> tuple[DataFrame, list[ColumnSpec], list[str]]:
    """The table's columns of ``runs``: info columns, then one column per key, in table order.

    Args:
        stats: the keys of these runs (:func:`key_stats`).
        namer: names of the table's columns (new keys get named).
        types: types of param columns the table has already (new values must fit them).

    Returns:
        The DataFrame, the specs of its columns, and the param columns whose values no longer
        fit the table's type.
    """
    from pyspark.sql import functions as F

    namer.assign([(s.kind, s.key) for s in stats])
    expressions = {name: F.col(name) for name, _ in INFO_COLUMNS}
    specs = info_specs()
    broken = []
    for stat in stats:
        name = namer.name(stat.kind, stat.key)
        value = F.col(MAPS[stat.kind]).getItem(stat.key)
        if stat.kind == PARAM:
            data_type = types.get(name) or stat.inferred_type()
            if not stat.fits(data_type):
                broken.append(name)
                data_type = param_types.STRING
            value = value.cast(data_type)
        else:
            data_type = KIND_TYPES[stat.kind]
        expressions[name] = value.alias(name)
        specs.append(ColumnSpec(name, stat.kind, stat.key, data_type))
    specs = sort_specs(specs)
    return runs.select(*(expressions[s.column_name] for s in specs)), specs, broken
