"""Experiment tables built from the Databricks MLflow system tables, entirely inside Spark.

The same tables, column names, types, index rows and refresh rules as
:class:`~mlflow_spark_tools.tables.builder.ExperimentTableBuilder` (which this extends), with
the runs read as DataFrames from :class:`~mlflow_spark_tools.tables.system_tables.SystemTables`
and shaped by :mod:`~mlflow_spark_tools.tables.spark_shape`: the driver sees the experiment's
keys and a few counts, never its rows.

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
from typing import TYPE_CHECKING, Any

from mlflow_spark_tools.core.identifiers import sql_strings
from mlflow_spark_tools.errors import TrackingServerError
from mlflow_spark_tools.runs.columns import (
    INFO,
    METRIC,
    METRIC_MAX,
    METRIC_MAX_STEP,
    METRIC_MIN,
    METRIC_MIN_STEP,
    PARAM,
    SUMMARY_KINDS,
    ColumnNamer,
    ColumnSpec,
    sort_specs,
)
from mlflow_spark_tools.spark.engine import Engine
from mlflow_spark_tools.spark.maps import map_from_entries
from mlflow_spark_tools.tables import param_types
from mlflow_spark_tools.tables.builder import (
    FULL,
    INCREMENTAL,
    STATS_COLUMNS,
    UNFINISHED,
    ExperimentTableBuilder,
    RefreshSummary,
)
from mlflow_spark_tools.tables.metric_history import (
    HISTORY_COLUMNS,
    HISTORY_STATS_COLUMNS,
    ROWS_PER_FILE,
    HistorySelection,
    history_table_name,
)
from mlflow_spark_tools.tables.models_table import ModelsWriter, models_table_name
from mlflow_spark_tools.tables.spark_shape import key_stats, shape
from mlflow_spark_tools.tables.system_tables import SystemTables
from mlflow_spark_tools.tracking.source import ExperimentInfo

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

_SUMMARY_FIELDS = ((METRIC_MIN, "min", "double"), (METRIC_MIN_STEP, "min_step", "bigint"),
                   (METRIC_MAX, "max", "double"), (METRIC_MAX_STEP, "max_step", "bigint"))


class SystemTablesBuilder(ExperimentTableBuilder):
    """Builds and refreshes experiment tables from the MLflow system tables.

    Args:
        engine: the Spark engine (it reads the system tables and writes the tables).
        system: the system tables.
        database: ``schema`` or ``catalog.schema`` of the experiment tables.
        watermark_margin_seconds: how far before the last build's latest ``update_time`` an
            incremental refresh looks again.
        selection: the metric keys whose history is kept; None builds none.
        models: writes the logged models tables; None builds none.
        refresh_by_cost: build in full where that took less time than an incremental refresh.
        deletion_vectors: ``delta.enableDeletionVectors`` of the tables written on JVM Delta.
    """

    def __init__(self, engine: Engine, system: SystemTables, database: str, watermark_margin_seconds: int = 600,
                 clock: Callable[[], float] = time.time, selection: HistorySelection | None = None,
                 models: ModelsWriter | None = None, refresh_by_cost: bool = True,
                 deletion_vectors: bool | None = None) -> None:
        super().__init__(engine, None, database, watermark_margin_seconds, clock, models=models,
                         refresh_by_cost=refresh_by_cost, deletion_vectors=deletion_vectors)
        self.system = system
        self.selection = selection
        self.inputs = None

    # ---- full build ------------------------------------------------------------------------

    def _refresh_full(self, experiment: ExperimentInfo, table: str, state: Any, include_deleted: bool,
                      summary: RefreshSummary) -> None:

        exp_id = experiment.experiment_id
        watermark = self.system.last_update_ms(exp_id) or int(self.clock() * 1000)
        runs = self.system.runs(exp_id, include_deleted=include_deleted)
        namer = ColumnNamer(state.specs)
        data, specs, _ = shape(runs, key_stats(runs), namer, {})
        data, specs = self._with_spark_history(table, exp_id, runs, data, specs, namer, summary, changed=None)
        target = self.db.name(table)
        if state.exists:
            old = self.spark.table(target).select("run_id")
            total_old = old.count()
            summary.rows_deleted = old.join(data.select("run_id"), "run_id", "left_anti").count()
            summary.rows_updated = total_old - summary.rows_deleted
            summary.columns_widened = sorted(
                s.column_name for s in specs if s.kind == PARAM and s.data_type == param_types.STRING
                and state.types.get(s.column_name, param_types.STRING) != param_types.STRING)
        summary.column_collisions = namer.collisions
        summary.columns_added = sorted(s.column_name for s in specs if s.kind != INFO and s.column_name not in state.types)
        self._write_columns(table, specs, state.specs)
        self.db.overwrite(data, table, STATS_COLUMNS)
        summary.row_count = self.spark.table(target).count()
        summary.rows_inserted = summary.row_count - summary.rows_updated
        summary.runs_fetched = summary.row_count
        self._write_models(experiment, table, summary)
        summary.mode = FULL
        self._write_index(experiment, table, summary.row_count, len(specs), include_deleted, watermark, FULL)

    # ---- incremental refresh -----------------------------------------------------------------

    def _refresh_incremental(self, experiment: ExperimentInfo, table: str, index: dict[str, Any],
                             include_deleted: bool, summary: RefreshSummary) -> bool:
        from pyspark.sql import functions as F

        exp_id = experiment.experiment_id
        previous = int(index["watermark_ms"])
        watermark = max(previous, self.system.last_update_ms(exp_id) or previous)
        state = self._state(table, True, index)
        unfinished = [r["run_id"] for r in self.spark.sql(
            f"SELECT run_id FROM {self.db.name(table)} WHERE status IN ({sql_strings(UNFINISHED)})").collect()]
        changed = self.system.runs(exp_id, updated_since_ms=previous - self.margin_ms, run_ids=unfinished)
        found = changed.select("run_id", "lifecycle_stage").collect()
        summary.runs_fetched = len(found)
        namer = ColumnNamer(state.specs)
        data, specs, broken = shape(changed, key_stats(changed), namer, state.types)
        if broken:
            log.info("Columns %s no longer fit their type; rebuilding %s", broken, table)
            summary.columns_widened = sorted(broken)
            return False
        kept = changed if include_deleted else changed.where(F.col("lifecycle_stage") != F.lit("deleted"))
        changed_ids = sorted(r["run_id"] for r in found)
        data, specs = self._with_spark_history(table, exp_id, kept, data, specs, namer, summary, changed=changed_ids)
        new_specs = [s for s in specs if s.column_name not in state.types]
        all_specs = sort_specs(
            [ColumnSpec(n, *self._kind_key(n, state.specs), t) for n, t in state.types.items()] + new_specs)
        summary.column_collisions = namer.collisions
        summary.columns_added = sorted(s.column_name for s in new_specs)
        if new_specs:
            self._write_columns(table, all_specs, state.specs)
            self.db.add_columns(table, [(s.column_name, s.data_type) for s in new_specs])
        if found:
            have = set(data.columns)
            full = data.select(*(F.col(s.column_name) if s.column_name in have
                                 else F.lit(None).cast(s.data_type).alias(s.column_name) for s in all_specs))
            view = f"__mst_changes_{table}"
            full.createOrReplaceTempView(view)
            self._merge_changes(view, table, include_deleted, summary, all_specs)
            self.spark.catalog.dropTempView(view)
        self._write_models(experiment, table, summary)
        summary.row_count = (index.get("run_count") or 0) + summary.rows_inserted - summary.rows_deleted
        summary.mode = INCREMENTAL
        self._write_index(experiment, table, summary.row_count, len(all_specs), include_deleted, watermark,
                          INCREMENTAL)
        return True

    def _write_models(self, experiment: ExperimentInfo, table: str, summary: RefreshSummary) -> None:
        """The logged models table from the tracking API; a server that cannot be reached
        leaves the previous one as it is, with a warning: the runs came from the system tables."""
        try:
            super()._write_models(experiment, table, summary)
        except TrackingServerError as exc:
            log.warning("Experiment %s: the logged models table was not refreshed: %s", experiment.experiment_id, exc)
            self._models_written = self.db.exists(models_table_name(table))
            summary.models_table = self.db.shown(models_table_name(table)) if self._models_written else None

    # ---- metric history -------------------------------------------------------------------------

    def _with_spark_history(self, table: str, experiment_id: str, runs: DataFrame, data: DataFrame,
                            specs: list[ColumnSpec], namer: ColumnNamer, summary: RefreshSummary, *,
                            changed: list[str] | None) -> tuple[DataFrame, list[ColumnSpec]]:
        """Write the selected keys' points of ``runs`` (all of them, or replacing the rows of
        the ``changed`` runs) and join their summaries to ``data``."""
        from pyspark.sql import functions as F

        if self.selection is None:
            return data, specs
        target = history_table_name(table)
        names = {s.key: s.column_name for s in specs if s.kind == METRIC and self.selection.wants(s.key)}
        points = self.system.history(experiment_id).join(runs.select("run_id"), "run_id", "left_semi")
        points = points.where(F.col("key").isin(sorted(names))) if names else points.limit(0)
        mapping = self.spark.createDataFrame(sorted(names.items()) or [("", "")], "key string, column_name string")
        points = points.join(F.broadcast(mapping), "key").select(
            "run_id", "key", "column_name", "step", "timestamp", "value",
            *(F.lit(None).cast("string").alias(c) for c in ("model_id", "dataset_name", "dataset_digest")))
        summary.metrics_table = self.db.shown(target)
        if changed is None or not self.db.exists(target):
            count = points.count()
            files = max(1, -(-count // ROWS_PER_FILE))
            self.db.overwrite(points.repartitionByRange(files, "run_id")
                              .sortWithinPartitions("run_id", "key", "step", "timestamp"), target, HISTORY_STATS_COLUMNS)
            summary.history_points = count
        else:
            view = f"__mst_history_{table}"
            points.createOrReplaceTempView(view)
            try:
                self.db.replace_rows(view, target, HISTORY_COLUMNS, "run_id", changed)
            finally:
                self.spark.catalog.dropTempView(view)
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

