"""The run table refreshed from runs read as Arrow tables in the driver (sources ``rest`` and
``database``): the :class:`~mlflow_spark_tools.tables.builder.RunRefresh` strategy of the sources
that implement :class:`~mlflow_spark_tools.tables.source_interface.RunReader`.

- A full build reads every run; one chunk of runs (``chunk_runs``) is shaped in Arrow and
  overwrites the table; more are staged in Spark chunk by chunk
  (:class:`~mlflow_spark_tools.tables.staged_runs.StagedRuns`) and shaped there.
- An incremental refresh reads the runs that started or ended since the watermark minus
  ``watermark_margin_seconds``, every deleted run and the runs the table holds as unfinished,
  and merges them in one MERGE.
- With a metric history selection, the history table is written before the run table, and the
  per-run summaries it gives are columns of the run table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlflow_spark_tools.runs.columns import (
    KIND_TYPES,
    METRIC,
    PARAM,
    SUMMARY_KINDS,
    ColumnNamer,
    ColumnSpec,
    info_specs,
    sort_specs,
)
from mlflow_spark_tools.runs.run_batches import INFO_SCHEMA, concat_pages, split_raw_name
from mlflow_spark_tools.spark.arrow import to_arrow
from mlflow_spark_tools.tables import param_types
from mlflow_spark_tools.tables.fetch import merge_changes, missing_ids
from mlflow_spark_tools.tables.metric_history import HistorySelection, MetricHistoryWriter, with_summaries
from mlflow_spark_tools.tables.run_table import (
    STATS_COLUMNS,
    Refresh,
    RunTable,
    TableState,
    align,
    ddl,
    full_build_counts,
)
from mlflow_spark_tools.tables.source_interface import RunReader
from mlflow_spark_tools.tables.staged_runs import StagedRuns

log = logging.getLogger(__name__)


class ArrowRunRefresh:
    """Reads runs with ``reader`` and writes them into the run table.

    Args:
        reader: the source's runs.
        history: writes the metric history tables; None builds none.
        selection: the metric keys whose history is kept (with ``history``).
        watermark_margin_seconds: how far before the previous refresh an incremental refresh
            looks again.
        chunk_runs: the most runs a full build holds in the driver; an experiment with more is
            staged in Spark chunk by chunk. None holds every run.
        clock: wall clock in seconds.
    """

    def __init__(self, reader: RunReader, *, history: MetricHistoryWriter | None = None,
                 selection: HistorySelection | None = None, watermark_margin_seconds: int = 600,
                 chunk_runs: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self.reader = reader
        self.selection = selection if history is not None else None
        self.history = history if selection is not None else None
        self.margin_ms = int(watermark_margin_seconds * 1000)
        self.chunk_runs = chunk_runs
        self.clock = clock

    @property
    def on_runs(self) -> Callable[[int], None] | None:
        return self.reader.on_runs

    @on_runs.setter
    def on_runs(self, callback: Callable[[int], None] | None) -> None:
        self.reader.on_runs = callback

    # ---- shaping ---------------------------------------------------------------------

    @staticmethod
    def shape(raw: pa.Table, namer: ColumnNamer, types: dict[str, str]) -> tuple[pa.Table, list[ColumnSpec], list[str]]:
        """Name, type and order the columns of fetched runs.

        Args:
            raw: runs with raw column names.
            namer: names of the table's columns (new keys get named).
            types: types of columns the table has already.

        Returns:
            The table, the specs of its columns, and the param columns whose values no longer
            fit the table's type.
        """
        keyed = {kind_key: n for n in raw.column_names if (kind_key := split_raw_name(n)) is not None}
        namer.assign(keyed)
        columns: dict[str, pa.ChunkedArray] = {n: raw[n] for n in INFO_SCHEMA.names}
        specs = info_specs()
        broken = []
        for (kind, key), raw_col in keyed.items():
            name = namer.name(kind, key)
            values = raw[raw_col]
            if kind == PARAM:
                data_type = types.get(name) or param_types.infer(values)
                if not param_types.fits(values, data_type):
                    broken.append(name)
                    data_type = param_types.STRING
                values = param_types.cast(values, data_type)
            else:
                data_type = KIND_TYPES[kind]
            columns[name] = values
            specs.append(ColumnSpec(name, kind, key, data_type))
        specs = sort_specs(specs)
        table = pa.table({s.column_name: columns[s.column_name] for s in specs})
        return table, specs, broken

    # ---- full build ------------------------------------------------------------------

    def full(self, job: Refresh, tables: RunTable) -> None:
        job.watermark_ms = int(self.clock() * 1000)
        state = tables.state(job.table, job.exists, job.index)
        chunks = self.reader.iter_all(job.experiment.experiment_id, include_deleted=job.include_deleted,
                                      chunk_runs=self.chunk_runs)
        pending = [next(chunks)]
        following = next(chunks, None)
        if following is not None:  # more runs than one chunk: staged in Spark
            pending.append(following)
            del following
            self._full_staged(job, tables, state, _draining(pending, chunks))
            return
        raw = pending.pop()
        summary = job.summary
        summary.runs_fetched = raw.num_rows
        # A full rebuild keeps existing names but infers every type afresh.
        namer = ColumnNamer(state.specs)
        data, specs, _ = self.shape(raw, namer, {})
        data, specs = self._with_history(job, raw, data, specs, namer, [], replace_all=True)
        if state.exists:
            old_ids = to_arrow(tables.spark.sql(f"SELECT run_id FROM {tables.db.name(job.table)}"))["run_id"]
            summary.rows_updated = pc.sum(pc.is_in(data["run_id"], value_set=old_ids)).as_py() or 0
            summary.rows_deleted = len(old_ids) - summary.rows_updated
        summary.rows_inserted = data.num_rows - summary.rows_updated
        full_build_counts(summary, state, specs)
        summary.column_collisions = namer.collisions
        tables.write_columns(job.table, specs, state.specs)
        with tables.db.arrow_frame(data, ddl(specs), f"{job.table}__rows", STATS_COLUMNS) as frame:
            tables.db.overwrite(frame, job.table, STATS_COLUMNS)
        job.runs_read(raw)
        summary.row_count = data.num_rows
        job.column_count = len(specs)

    def _full_staged(self, job: Refresh, tables: RunTable, state: TableState, chunks: Iterator[pa.Table]) -> None:
        """A full build of more runs than one chunk: each chunk is staged in Spark as it comes
        (its runs, and told to the companion tables), and the table's columns are made there, in
        one projection."""
        db, table, summary = tables.db, job.table, job.summary
        staged = StagedRuns(db, f"{table}__staged")
        summaries = f"{table}__summaries"
        having_metrics: list[pa.Table] = []  # which runs have which selected metric (history)
        try:
            for chunk in chunks:
                staged.add(chunk)
                job.runs_read(chunk)
                if self.selection is not None:
                    having_metrics.append(_selected_metrics(chunk, self.selection))
                del chunk
            summary.runs_fetched = staged.runs
            namer = ColumnNamer(state.specs)
            data, specs = staged.frame(namer)
            if self.history is not None:
                data, specs = self._with_staged_history(job, tables, concat_pages(having_metrics), data, specs,
                                                        namer, summaries)
            del having_metrics
            if state.exists:
                old = tables.spark.table(db.name(table)).select("run_id")
                total_old = old.count()
                summary.rows_updated = old.join(data.select("run_id"), "run_id", "left_semi").count()
                summary.rows_deleted = total_old - summary.rows_updated
            summary.rows_inserted = staged.runs - summary.rows_updated
            full_build_counts(summary, state, specs)
            summary.column_collisions = namer.collisions
            tables.write_columns(table, specs, state.specs)
            db.overwrite(data, table, STATS_COLUMNS)
        finally:
            staged.drop()
            db.drop(summaries)
        summary.row_count = staged.runs
        job.column_count = len(specs)

    # ---- metric history --------------------------------------------------------------

    def _with_staged_history(self, job: Refresh, tables: RunTable, runs: pa.Table, data: Any,
                             specs: list[ColumnSpec], namer: ColumnNamer, staging: str) -> tuple[Any, list[ColumnSpec]]:
        """Write the metric history of ``runs`` (run ids and their selected metric columns) and
        join its per-run summaries to the staged ``data``, through the table ``staging``."""
        run_id = [s for s in info_specs() if s.column_name == "run_id"]
        ids = pa.table({"run_id": runs["run_id"]})
        wide, wide_specs = self._with_history(job, runs, ids, run_id, namer, [], replace_all=True)
        added = [s for s in wide_specs if s.column_name != "run_id"]
        if not added:
            return data, specs
        tables.db.write_arrow(wide, ddl(wide_specs), staging, ("run_id",))
        specs = sort_specs(specs + added)
        joined = data.join(tables.spark.table(tables.db.name(staging)), "run_id", "left")
        return joined.select(*(s.column_name for s in specs)), specs

    def _with_history(self, job: Refresh, runs: pa.Table, data: pa.Table, specs: list[ColumnSpec],
                      namer: ColumnNamer, removed: list[str], *, replace_all: bool) -> tuple[pa.Table, list[ColumnSpec]]:
        """Write the metric history of ``runs`` (when asked for) and add the per-metric
        summaries it gives to ``data``; the history table is committed before the run table."""
        if self.history is None or self.selection is None:
            return data, specs
        result = self.history.write(job.table, runs, namer, self.selection, replace_all=replace_all,
                                    removed_run_ids=removed)
        summary = job.summary
        summary.metrics_table = result.table
        summary.history_runs = result.runs_read
        summary.history_points = result.points
        summary.history_requests = result.requests
        summary.history_truncated = result.truncated
        keys = sorted(set(result.summaries["key"].to_pylist()))
        namer.assign([(kind, key) for key in keys for kind in SUMMARY_KINDS])
        data, added = with_summaries(data, result.summaries, namer.name)
        specs = sort_specs(specs + [ColumnSpec(*column) for column in added])
        return data.select([s.column_name for s in specs]), specs

    # ---- incremental refresh ---------------------------------------------------------

    def _changed_runs(self, job: Refresh, tables: RunTable) -> tuple[pa.Table, TableState]:
        """The runs changed since the watermark (the time-filtered searches run while the
        table's state is read), and that state."""
        since = int(job.index["watermark_ms"]) - self.margin_ms if job.index else 0
        exp_id = job.experiment.experiment_id
        with ThreadPoolExecutor(max_workers=1) as pool:
            recent_future = pool.submit(self.reader.fetch_recent, exp_id, since, include_deleted=job.include_deleted)
            state = tables.state(job.table, True, job.index)
            unfinished = tables.unfinished(job.table)
            recent = recent_future.result()
        return merge_changes(recent, self.reader.fetch_by_ids(exp_id, missing_ids(recent, unfinished))), state

    def incremental(self, job: Refresh, tables: RunTable) -> bool:
        """Merge what changed since the watermark; False when the table needs a full rebuild
        instead (new values no longer fit a column's type)."""
        assert job.index is not None
        job.watermark_ms = int(self.clock() * 1000)
        raw, state = self._changed_runs(job, tables)
        summary = job.summary
        summary.runs_fetched = raw.num_rows
        namer = ColumnNamer(state.specs)
        data, specs, broken = self.shape(raw, namer, state.types)
        if broken:
            # New values no longer fit a typed param column: rebuild the table in full with
            # the widened types, from the original strings in the source.
            log.info("Columns %s no longer fit their type; rebuilding %s", broken, job.table)
            summary.columns_widened = sorted(broken)
            return False
        deleted = pc.fill_null(pc.equal(raw["lifecycle_stage"], "deleted"), False)
        kept = raw if job.include_deleted else raw.filter(pc.invert(deleted))
        removed = [] if job.include_deleted else raw.filter(deleted)["run_id"].to_pylist()
        data, specs = self._with_history(job, kept, data, specs, namer, removed, replace_all=False)
        summary.column_collisions = namer.collisions
        all_specs = tables.add_new_columns(job, state, specs)
        if data.num_rows:
            view = f"__mst_changes_{job.table}"
            with tables.db.arrow_frame(align(data, all_specs), ddl(all_specs), f"{job.table}__rows",
                                       STATS_COLUMNS) as frame:
                frame.createOrReplaceTempView(view)
                tables.merge(view, job, all_specs)
                tables.spark.catalog.dropTempView(view)
        job.replaced_run_ids = raw["run_id"].to_pylist()
        job.runs_read(kept)
        summary.row_count = (job.index.get("run_count") or 0) + summary.rows_inserted - summary.rows_deleted
        in_store = self.reader.count_runs(job.experiment.experiment_id, include_deleted=job.include_deleted)
        if in_store is not None and in_store > summary.row_count:  # started and ended before the watermark
            summary.runs_not_seen = in_store - summary.row_count
        job.column_count = len(all_specs)
        return True


def _draining(held: list[pa.Table], rest: Iterator[pa.Table]) -> Iterator[pa.Table]:
    """The tables of ``held`` (let go as they are taken), then those of ``rest``."""
    while held:
        yield held.pop(0)
    yield from rest


def _selected_metrics(runs: pa.Table, selection: HistorySelection) -> pa.Table:
    """``run_id`` and the raw columns of the selected metrics (what the history reads)."""
    names = [n for n in runs.column_names
             if (kind_key := split_raw_name(n)) is not None and kind_key[0] == METRIC and selection.wants(kind_key[1])]
    return runs.select(["run_id", *names])

