"""What a report shows, read from an experiment's tables through Spark.

Only small results reach the driver:

- the ``top`` runs by the metric (active runs with a value that is not NaN);
- the plotted runs: at most ``max_points``, half of them the best runs (``best``), the rest
  the first of the others by a hash of their run id (a spread sample, the same runs on every
  call), for the parallel coordinates and the scatter plots;
- per categorical param, the metric's quartiles for its 20 most frequent values (aggregated in
  Spark over every run);
- the metric's points of the top runs from ``exp_<id>_metrics`` where the table was built with
  its history, at most ``MAX_CURVE_POINTS`` per run (every k-th step beyond that).

The params charted are those with more than one value among the plotted runs, at most
``max_params`` of them, those most runs have first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from mlflow_spark_tools.core.identifiers import experiment_table_name, quote, sql_string, sql_strings
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.runs.columns import METRIC, PARAM
from mlflow_spark_tools.spark.arrow import to_arrow
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.tables.metric_history import history_table_name
from mlflow_spark_tools.tables.queries import refreshed_at, table_column

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

NUMERIC_TYPES = ("bigint", "double")
MAX_CATEGORIES = 20
FEW_VALUES = 3  # a numeric param with at most this many values is charted as categories
MAX_CURVE_POINTS = 500
QUARTILES = (("q1", 0.25), ("median", 0.5), ("q3", 0.75))


@dataclass(frozen=True)
class ParamAxis:
    """A param the report charts: its key, its table column, and whether it is numeric."""

    key: str
    column: str
    numeric: bool


@dataclass
class ReportData:
    """The rows a report is drawn from (Arrow tables, small)."""

    experiment_id: str
    metric: str
    ascending: bool
    table: str
    refreshed_at: datetime | None
    runs_with_metric: int
    params: list[ParamAxis]
    top: pa.Table
    plotted: pa.Table
    categories: dict[str, pa.Table] = field(default_factory=dict)
    curves: pa.Table | None = None


def read_report_data(db: Database, experiment_id: str, metric: str, *, ascending: bool = True, top: int = 10,
                     max_points: int = 1000, max_params: int = 12) -> ReportData:
    """The report's rows for ``metric`` from ``<database>.exp_<experiment_id>``."""
    from pyspark.sql import functions as F

    table = experiment_table_name(experiment_id)
    if not db.exists(table) or not db.exists(table + "_columns"):
        raise UsageError(f"There is no table {db.shown(table)}: build it first with "
                         f"`mlflow-spark-tools build-tables --experiment-ids {experiment_id}`.")
    column = table_column(db, experiment_id, metric, METRIC)
    if column is None:
        raise UsageError(f"No run of {db.shown(table)} has the metric {metric!r}; check its name "
                         f"(`SELECT key FROM {db.name(table + '_columns')} WHERE kind = 'metric'`).")
    columns = set(db.columns(table))
    params = [(r["key"], r["column_name"], r["data_type"]) for r in db.spark.sql(
        f"SELECT key, column_name, data_type FROM {db.name(table + '_columns')} "
        f"WHERE kind = {sql_string(PARAM)}").collect() if r["column_name"] in columns]
    value = F.col(quote(column))
    runs = (db.spark.table(db.name(table))
            .where((F.col("lifecycle_stage") == F.lit("active")) & value.isNotNull() & ~F.isnan(value))
            .withColumn("metric", value.cast("double")))
    order = [F.col("metric").asc() if ascending else F.col("metric").desc(), F.col("start_time").desc(),
             F.col("run_id")]
    count = runs.count()
    if count == 0:
        raise UsageError(f"No active run of {db.shown(table)} has a value of {metric!r} that is a number.")
    base = ["run_id", "run_name", "status", "start_time", "metric"]
    param_columns = [quote(c) for _, c, _ in params]
    best_count = max(1, max_points // 2)
    best = runs.orderBy(*order).limit(best_count)
    # the others: those first by a hash of the run id, exactly enough to fill max_points (a
    # top-k in Spark; a filter on the hash kept a random number of them, at times none)
    others = (runs.join(best.select("run_id"), "run_id", "left_anti")
              .withColumn("__spread", F.xxhash64("run_id"))
              .orderBy("__spread", "run_id").limit(max(0, max_points - best_count)))
    plotted = to_arrow(best.select(*base, F.lit(True).alias("best"), *param_columns).unionByName(
        others.select(*base, F.lit(False).alias("best"), *param_columns)))
    axes = _few_values_as_categories(runs, _axes(params, plotted, max_params))
    top_rows = to_arrow(runs.orderBy(*order).limit(top).select(*base, *(quote(a.column) for a in axes)))
    categories = {a.key: _category_stats(runs, a.column) for a in axes if not a.numeric}
    curves = _curves(db, experiment_id, metric, top_rows.column("run_id").to_pylist())
    return ReportData(experiment_id, metric, ascending, db.shown(table), refreshed_at(db, experiment_id), count,
                      axes, top_rows, plotted, categories, curves)


def _axes(params: list[tuple[str, str, str]], plotted: pa.Table, max_params: int) -> list[ParamAxis]:
    """The params that vary among the plotted runs, those most runs have first, then by key."""
    found = []
    for key, column, data_type in params:
        values = plotted.column(column)
        present = len(values) - values.null_count
        if present and len(values.unique().drop_null()) > 1:
            found.append((-present, key, ParamAxis(key, column, data_type in NUMERIC_TYPES)))
    return [axis for *_, axis in sorted(found, key=lambda f: (f[0], f[1]))[:max_params]]


def _few_values_as_categories(runs: DataFrame, axes: list[ParamAxis]) -> list[ParamAxis]:
    """The axes, a numeric param with at most :data:`FEW_VALUES` values over every run (a sweep
    over ``layers in (2, 4)``) as categories: a continuous axis would spread two values apart
    with nothing between. Counted over every run, in one aggregation, so that the choice does
    not depend on which runs are drawn."""
    from pyspark.sql import functions as F

    numeric = [a for a in axes if a.numeric]
    if not numeric:
        return axes
    counts = runs.agg(*(F.countDistinct(F.col(quote(a.column))).alias(f"n{i}")
                        for i, a in enumerate(numeric))).collect()[0]
    few = {a.column for i, a in enumerate(numeric) if counts[f"n{i}"] <= FEW_VALUES}
    return [ParamAxis(a.key, a.column, False) if a.column in few else a for a in axes]


def value_label(value: object) -> str:
    """How a categorical param's value is shown (and grouped): the same text for the quartiles
    computed by Spark and for the points of the plotted runs."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


def _category_stats(runs: DataFrame, column: str) -> pa.Table:
    """Per value of a categorical param (its 20 most frequent): runs, and the metric's
    min, quartiles and max; the values labelled by :func:`value_label`."""
    from pyspark.sql import functions as F

    grouped = runs.groupBy(F.col(quote(column)).alias("value")).agg(
        F.count(F.lit(1)).alias("runs"), F.min("metric").alias("min"), F.max("metric").alias("max"),
        # one percentage per call, in SQL: the embedded engine takes neither an array nor an accuracy
        *(F.expr(f"percentile_approx(metric, {p})").alias(name) for name, p in QUARTILES))
    top = to_arrow(grouped.orderBy(F.col("runs").desc(), F.col("value")).limit(MAX_CATEGORIES)
                   .select("value", "runs", "min", "q1", "median", "q3", "max"))
    labels = pa.array([value_label(v) for v in top.column("value").to_pylist()], pa.string())
    return top.set_column(0, "value", labels)


def _curves(db: Database, experiment_id: str, metric: str, run_ids: list[str]) -> pa.Table | None:
    """The metric's points of ``run_ids`` from the history table, if it was built."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    history = history_table_name(experiment_table_name(experiment_id))
    if not run_ids or not db.exists(history):
        return None
    points = db.spark.sql(f"SELECT run_id, step, timestamp, value FROM {db.name(history)} "
                          f"WHERE key = {sql_string(metric)} AND run_id IN ({sql_strings(run_ids)})")
    by_run = Window.partitionBy("run_id")
    ordered = by_run.orderBy("step", "timestamp")
    thinned = (points.withColumn("__n", F.count(F.lit(1)).over(by_run))
               .withColumn("__i", F.row_number().over(ordered) - 1)
               .where((F.col("__i") % F.greatest(F.lit(1), F.ceil(F.col("__n") / F.lit(MAX_CURVE_POINTS))) == 0)
                      | (F.col("__i") == F.col("__n") - 1)))
    found = to_arrow(thinned.select("run_id", "step", "value").orderBy("run_id", "step"))
    return found if found.num_rows else None
