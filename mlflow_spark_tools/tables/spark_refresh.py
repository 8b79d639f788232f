"""The run table refreshed from runs held in Spark (source ``system-tables``): the
:class:`~mlflow_spark_tools.tables.builder.RunRefresh` strategy that reads the Databricks MLflow
system tables (:class:`~mlflow_spark_tools.tables.system_tables.SystemTables`) as DataFrames and
shapes them with :mod:`~mlflow_spark_tools.tables.spark_shape`: the driver sees the experiment's
keys and a few counts, never its rows. The same tables, column names, types, index rows and
refresh rules as the sources read in the driver.

- A full build overwrites the table from the projection of every run; the metric history
  (``--metric-history``) is an overwrite of the selected keys' points and its
  ``_mmin_``/``_mmax_`` summaries are aggregates joined to the runs.
- An incremental refresh reads the runs whose ``update_time`` is at or after the watermark
  minus ``tables.watermark_margin_seconds`` (the watermark is the latest ``update_time`` seen
  at the last build, not the clock: the system tables are filled with a delay), and the runs
  the table holds as unfinished. Unlike the REST source it sees tags and params changed on
  finished runs and restored runs. It merges them in one MERGE, and replaces their history rows.
- There are no dataset inputs in the system tables: no ``exp_<id>_inputs`` table. The logged
  models table comes from the tracking server's API, as with the REST source.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mlflow_spark_tools.runs.columns import (
    METRIC,
    METRIC_MAX,
    METRIC_MAX_STEP,
    METRIC_MIN,
    METRIC_MIN_STEP,
    SUMMARY_KINDS,
    ColumnNamer,
    ColumnSpec,
    sort_specs,
)
from mlflow_spark_tools.spark.maps import map_from_entries
from mlflow_spark_tools.tables.metric_history import (
    HISTORY_COLUMNS,
    HISTORY_STATS_COLUMNS,
    ROWS_PER_FILE,
    HistorySelection,
    history_table_name,
)
from mlflow_spark_tools.tables.run_table import STATS_COLUMNS, Refresh, RunTable, full_build_counts
from mlflow_spark_tools.tables.spark_shape import key_stats, shape
from mlflow_spark_tools.tables.system_tables import SystemTables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

_SUMMARY_FIELDS = ((METRIC_MIN, "min", "double"), (METRIC_MIN_STEP, "min_step", "bigint"),
                   (METRIC_MAX, "max", "double"), (METRIC_MAX_STEP, "max_step", "bigint"))


class SparkRunRefresh:
    """Reads the runs of the system tables and writes them into the run table, inside Spark.

    Args:
        system: the system tables.
        selection: the metric keys whose history is kept; None builds none.
        watermark_margin_seconds: how far before the last build's latest ``update_time`` an
            incremental refresh looks again.
        clock: wall clock in seconds (the watermark of a table whose runs have no update time).
    """

    on_runs: Callable[[int], None] | None = None  # the runs never reach the driver

    def __init__(self, system: SystemTables, *, selection: HistorySelection | None = None,
                 watermark_margin_seconds: int = 600, clock: Callable[[], float] = time.time) -> None:
        self.system = system
        self.selection = selection
        self.margin_ms = int(watermark_margin_seconds * 1000)
        self.clock = clock

    # ---- full build ------------------------------------------------------------------------

    def full(self, job: Refresh, tables: RunTable) -> None:
        exp_id, table, summary = job.experiment.experiment_id, job.table, job.summary
        job.watermark_ms = self.system.last_update_ms(exp_id) or int(self.clock() * 1000)
        state = tables.state(table, job.exists, job.index)
        runs = self.system.runs(exp_id, include_deleted=job.include_deleted)
        namer = ColumnNamer(state.specs)
        data, specs, _ = shape(runs, key_stats(runs), namer, {})
        data, specs = self._with_spark_history(job, tables, runs, data, specs, namer, changed=None)
        target = tables.db.name(table)
        if state.exists:
            old = tables.spark.table(target).select("run_id")
            total_old = old.count()
            summary.rows_deleted = old.join(data.select("run_id"), "run_id", "left_anti").count()
            summary.rows_updated = total_old - summary.rows_deleted
        full_build_counts(summary, state, specs)
        summary.column_collisions = namer.collisions
        tables.write_columns(table, specs, state.specs)
        tables.db.overwrite(data, table, STATS_COLUMNS)
        summary.row_count = tables.spark.table(target).count()
        summary.rows_inserted = summary.row_count - summary.rows_updated
        summary.runs_fetched = summary.row_count
        job.column_count = len(specs)

    # ---- incremental refresh -----------------------------------------------------------------

    def incremental(self, job: Refresh, tables: RunTable) -> bool:
        from pyspark.sql import functions as F

        assert job.index is not None
        exp_id, table, summary = job.experiment.experiment_id, job.table, job.summary
        previous = int(job.index["watermark_ms"])
        job.watermark_ms = max(previous, self.system.last_update_ms(exp_id) or previous)
        state = tables.state(table, True, job.index)
        unfinished = tables.unfinished(table)
        changed = self.system.runs(exp_id, updated_since_ms=previous - self.margin_ms, run_ids=unfinished)
        found = changed.select("run_id", "lifecycle_stage").collect()
        summary.runs_fetched = len(found)
        namer = ColumnNamer(state.specs)
        data, specs, broken = shape(changed, key_stats(changed), namer, state.types)
        if broken:
            log.info("Columns %s no longer fit their type; rebuilding %s", broken, table)
            summary.columns_widened = sorted(broken)
            return False
        kept = changed if job.include_deleted else changed.where(F.col("lifecycle_stage") != F.lit("deleted"))
        changed_ids = sorted(r["run_id"] for r in found)
        data, specs = self._with_spark_history(job, tables, kept, data, specs, namer, changed=changed_ids)
        summary.column_collisions = namer.collisions
        all_specs = tables.add_new_columns(job, state, specs)
        if found:
            have = set(data.columns)
            full = data.select(*(F.col(s.column_name) if s.column_name in have
                                 else F.lit(None).cast(s.data_type).alias(s.column_name) for s in all_specs))
            view = f"__mst_changes_{table}"
            full.createOrReplaceTempView(view)
            tables.merge(view, job, all_specs)
            tables.spark.catalog.dropTempView(view)
        job.replaced_run_ids = changed_ids
        summary.row_count = (job.index.get("run_count") or 0) + summary.rows_inserted - summary.rows_deleted
        job.column_count = len(all_specs)
        return True

    # ---- metric history -------------------------------------------------------------------------

    def _with_spark_history(self, job: Refresh, tables: RunTable, runs: DataFrame, data: DataFrame,
                            specs: list[ColumnSpec], namer: ColumnNamer, *,
                            changed: list[str] | None) -> tuple[DataFrame, list[ColumnSpec]]:
        """Write the selected keys' points of ``runs`` (all of them, or replacing the rows of
        the ``changed`` runs) and join their summaries to ``data``."""
        from pyspark.sql import functions as F

        if self.selection is None:
            return data, specs
        db, spark, summary = tables.db, tables.spark, job.summary
        target = history_table_name(job.table)
        names = {s.key: s.column_name for s in specs if s.kind == METRIC and self.selection.wants(s.key)}
        points = self.system.history(job.experiment.experiment_id).join(runs.select("run_id"), "run_id", "left_semi")
        points = points.where(F.col("key").isin(sorted(names))) if names else points.limit(0)
        mapping = spark.createDataFrame(sorted(names.items()) or [("", "")], "key string, column_name string")
        points = points.join(F.broadcast(mapping), "key").select(
            "run_id", "key", "column_name", "step", "timestamp", "value",
            *(F.lit(None).cast("string").alias(c) for c in ("model_id", "dataset_name", "dataset_digest")))
        summary.metrics_table = db.shown(target)
        if changed is None or not db.exists(target):
            count = points.count()
            files = max(1, -(-count // ROWS_PER_FILE))
            db.overwrite(points.repartitionByRange(files, "run_id")
                              .sortWithinPartitions("run_id", "key", "step", "timestamp"), target, HISTORY_STATS_COLUMNS)
            summary.history_points = count
        else:
            view = f"__mst_history_{job.table}"
            points.createOrReplaceTempView(view)
            try:
                db.replace_rows(view, target, HISTORY_COLUMNS, "run_id", changed)
            finally:
                spark.catalog.dropTempView(view)
            summary.history_points = points.count() if changed else 0
        summary.history_runs = runs.select("run_id").distinct().count() if changed is None else len(changed)
        summaries = key_summaries(points)
        keys = sorted(r["key"] for r in summaries.select("key").distinct().collect())
        if not keys:
            return data, specs
        namer.assign([(kind, key) for key in keys for kind in SUMMARY_KINDS])
        data = data.join(summary_maps(summaries).withColumnRenamed("summaries", "__summaries"), "run_id", "left")
        added = []
        for key in keys:
            for kind, field, data_type in _SUMMARY_FIELDS:
                name = namer.name(kind, key)
                data = data.withColumn(name, F.col("__summaries").getItem(key).getField(field).cast(data_type))
                added.append(ColumnSpec(name, kind, key, data_type))
        specs = sort_specs(specs + added)
        return data.select(*(s.column_name for s in specs)), specs


def summary_maps(summaries: DataFrame) -> DataFrame:
    """``run_id`` and ``summaries``: each key's summary (``min``, ``min_step``, ``max``,
    ``max_step``) by key, from one row per run and key (:func:`key_summaries`)."""
    from pyspark.sql import functions as F

    return summaries.groupBy("run_id").agg(map_from_entries(F.collect_list(
        F.struct("key", F.struct(*(F.col(c) for _, c, _ in _SUMMARY_FIELDS)))), summaries.sparkSession)
        .alias("summaries"))


def key_summaries(points: DataFrame) -> DataFrame:
    """Per run and key: the lowest and highest value (NaN ignored; infinities count) and the
    first step where each was reached."""
    from pyspark.sql import functions as F

    numbers = points.where(~F.isnan(F.col("value")))
    # min_by/max_by rather than the min/max of a struct: far cheaper on the embedded engine
    lowest = F.struct(F.col("value"), F.col("step"))
    highest = F.struct(F.col("value"), (-F.col("step")).alias("neg_step"))
    return numbers.groupBy("run_id", "key").agg(
        F.min_by(F.col("value"), lowest).alias("min"), F.min_by(F.col("step"), lowest).alias("min_step"),
        F.max_by(F.col("value"), highest).alias("max"), F.max_by(F.col("step"), highest).alias("max_step"))

