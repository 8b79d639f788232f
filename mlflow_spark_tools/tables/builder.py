"""The flattened experiment tables: ``<database>.exp_<experiment_id>``.

One row per run, keyed by ``run_id``: run info columns, params as ``_p_<key>`` (typed), the
latest metric values as ``_m_<key>`` and tags as ``_t_<key>``. Beside each table,
``exp_<id>_columns`` maps every column to its kind, original key and type,
``exp_<id>_inputs`` lists the runs' dataset inputs, ``exp_<id>_models`` the experiment's MLflow 3
logged models (on servers that have them), and the index table ``experiments`` lists the tables
with their run counts and refresh state.

A table is built in full the first time (and with ``full_refresh``) and refreshed
incrementally afterwards; each refresh of a table's rows is one Delta commit (an overwrite or
one MERGE). What an incremental refresh cannot see is listed in docs/TABLES.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlflow_spark_tools.backend_store.run_reader import DatabaseRunReader
from mlflow_spark_tools.core.identifiers import experiment_table_name, quote, sql_string, sql_strings
from mlflow_spark_tools.errors import EXIT_FAILURE, EngineError, MlflowSparkToolsError, UsageError
from mlflow_spark_tools.runs.columns import (
    INFO,
    INFO_COLUMNS,
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
from mlflow_spark_tools.spark.arrow import to_arrow, to_dataframe
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.spark.engine import SAIL, Engine
from mlflow_spark_tools.tables import param_types
from mlflow_spark_tools.tables.fetch import RunFetcher, merge_changes, missing_ids
from mlflow_spark_tools.tables.inputs_table import InputsWriter, inputs_table_name
from mlflow_spark_tools.tables.metric_history import (
    HistorySelection,
    MetricHistoryWriter,
    history_table_name,
    with_summaries,
)
from mlflow_spark_tools.tables.models_table import ModelsWriter, models_table_name
from mlflow_spark_tools.tables.refresh_cost import (
    ASKED_FOR,
    COST_COLUMNS,
    NO_TABLE_YET,
    cheaper_full_build,
    measurements,
)
from mlflow_spark_tools.tables.staged_runs import StagedRuns
from mlflow_spark_tools.tracking.rate_limit_errors import error_summary
from mlflow_spark_tools.tracking.source import ExperimentInfo

log = logging.getLogger(__name__)

INDEX_TABLE = "experiments"
INDEX_COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiment_id", "string"),
    ("name", "string"),
    ("lifecycle_stage", "string"),
    ("table_name", "string"),
    ("columns_table", "string"),
    ("run_count", "bigint"),
    ("column_count", "bigint"),
    ("include_deleted", "boolean"),
    ("watermark_ms", "bigint"),
    ("last_refresh_mode", "string"),
    ("last_refreshed_at", "timestamp"),
    ("metric_history", "string"),
    ("metrics_table", "string"),
    ("inputs_table", "string"),
    ("models_table", "string"),
    *COST_COLUMNS,
)
COLUMNS_TABLE_SCHEMA = "`column_name` string, `kind` string, `key` string, `data_type` string"
UNFINISHED = ("RUNNING", "SCHEDULED")
STATS_COLUMNS = ("run_id", "start_time", "end_time")
FULL, INCREMENTAL = "full", "incremental"

ARROW_TYPES = {**param_types.ARROW_TYPES, "timestamp": pa.timestamp("ms", tz="UTC")}


@dataclass
class RefreshSummary:
    """What one refresh of one experiment table did.

    ``reason`` says why a refresh was a full build (None for an incremental one);
    ``column_collisions`` names each key that got a suffixed column name this time, and the key
    that holds the name it wanted; ``runs_not_seen`` counts the runs the store has and the table
    lacks after an incremental refresh (runs that started and ended before the last refresh,
    such as imported or back-dated ones; counted where the source can count, the database);
    ``inputs``
    counts the dataset inputs written (of the runs fetched), ``models`` the rows of the models
    table; ``models_table`` is None when the server has no logged models.
    """

    experiment_id: str
    experiment_name: str | None = None
    table: str | None = None
    mode: str | None = None
    reason: str | None = None
    runs_fetched: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    row_count: int = 0
    columns_added: list[str] = field(default_factory=list)
    column_collisions: list[str] = field(default_factory=list)
    runs_not_seen: int | None = None
    columns_widened: list[str] = field(default_factory=list)
    metrics_table: str | None = None
    history_runs: int = 0
    history_points: int = 0
    history_requests: int = 0
    history_truncated: list[str] = field(default_factory=list)
    inputs_table: str | None = None
    inputs: int = 0
    models_table: str | None = None
    models: int = 0
    seconds: float = 0.0
    error: str | None = None
    error_exit_code: int | None = None

    @classmethod
    def failed(cls, experiment_id: str, experiment_name: str | None, exc: Exception) -> RefreshSummary:
        """The summary of an experiment that could not be built: the error's message (an error
        that is not the package's own: its type and first line) and its exit code (2 for usage
        errors such as an unknown experiment, else 1)."""
        if isinstance(exc, MlflowSparkToolsError):
            return cls(experiment_id, experiment_name, error=str(exc), error_exit_code=exc.exit_code)
        return cls(experiment_id, experiment_name, error=f"{type(exc).__name__}: {error_summary(exc, 500)}",
                   error_exit_code=EXIT_FAILURE)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ok": self.ok}


@dataclass
class _Measure:
    """What the index row records about the refresh under way: when it started, the row it
    found, and whether it is a full build chosen because it is cheaper (refresh_cost)."""

    started: float
    previous: dict[str, Any] | None
    by_cost: bool


@dataclass
class _TableState:
    """What is known about an existing table before a refresh."""

    exists: bool
    types: dict[str, str]
    specs: list[ColumnSpec]
    index_row: dict[str, Any] | None


def ddl(specs: list[ColumnSpec]) -> str:
    return ", ".join(f"{quote(s.column_name)} {s.data_type}" for s in specs)


class ExperimentTableBuilder:
    """Builds and refreshes experiment tables in one database.

    Args:
        engine: the Spark engine.
        fetcher: reads runs from the tracking server, or from its backend database.
        database: ``schema`` or ``catalog.schema``.
        watermark_margin_seconds: how far before the previous refresh an incremental refresh
            looks again.
        clock: wall clock in seconds (injectable for tests).
        history: writes the metric history tables; None builds none.
        selection: the metric keys whose history is kept (with ``history``).
        models: writes the logged models tables; None builds none.
        chunk_runs: the most runs a full build holds in the driver; an experiment with more is
            staged in Spark chunk by chunk (:class:`StagedRuns`). None holds every run.
        refresh_by_cost: build in full where that took less time than an incremental refresh
            (:mod:`refresh_cost`); False refreshes incrementally wherever it can.
        deletion_vectors: ``delta.enableDeletionVectors`` of the tables written on Spark with
            Delta Lake (:class:`Database`); None leaves the platform's default.
    """

    def __init__(
        self,
        engine: Engine,
        fetcher: RunFetcher | DatabaseRunReader | None,
        database: str,
        watermark_margin_seconds: int = 600,
        clock: Callable[[], float] = time.time,
        history: MetricHistoryWriter | None = None,
        selection: HistorySelection | None = None,
        models: ModelsWriter | None = None,
        chunk_runs: int | None = None,
        refresh_by_cost: bool = True,
        deletion_vectors: bool | None = None,
    ) -> None:
        self.engine = engine
        self.spark = engine.spark
        self.fetcher = fetcher
        self.db = Database(engine, database, deletion_vectors)
        self.margin_ms = int(watermark_margin_seconds * 1000)
        self.clock = clock
        self.selection = selection if history is not None else None
        self.history = history if selection is not None else None
        self.inputs: InputsWriter | None = InputsWriter(self.db)
        self.models = models
        self.chunk_runs = chunk_runs
        self.refresh_by_cost = refresh_by_cost
        self._measure = _Measure(time.perf_counter(), None, False)
        self._models_written = False
        self._db_ready = False

    # ---- state -----------------------------------------------------------------------

    def _index_row(self, experiment_id: str) -> dict[str, Any] | None:
        if not self.db.exists(INDEX_TABLE):
            return None
        rows = self.spark.sql(
            f"SELECT * FROM {self.db.name(INDEX_TABLE)} "
            f"WHERE experiment_id = {sql_string(experiment_id)}"
        ).collect()
        return rows[0].asDict() if rows else None

    def _column_specs(self, table: str) -> list[ColumnSpec]:
        """The column mapping stored in ``<table>_columns`` ([] without one)."""
        if not self.db.exists(table + "_columns"):
            return []
        return [ColumnSpec(r["column_name"], r["kind"], r["key"], r["data_type"])
                for r in self.spark.table(self.db.name(table + "_columns")).collect()]

    def _check_selection(self, table: str, experiment_id: str) -> None:
        """Refuse a new metric history selection that names keys the table has never seen (a
        typo would otherwise replace the history table and its summary columns with nothing)."""
        if self.selection is None or self.selection.keys is None:
            return
        known = {s.key for s in self._column_specs(table) if s.kind == METRIC}
        unknown = sorted(self.selection.keys - known)
        if not unknown:
            return
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=2)
            hints.append(f"{key} (did you mean {' or '.join(close)}?)" if close else key)
        raise UsageError(
            f"--metric-history names metric keys that no run of experiment {experiment_id} has logged: "
            f"{', '.join(hints)}. Nothing was written. Name keys the experiment has, or `all`; a key that "
            f"new runs have just logged is taken with --full-refresh.")

    def _state(self, table: str, exists: bool, index_row: dict[str, Any] | None) -> _TableState:
        specs = self._column_specs(table)
        if not exists:
            return _TableState(False, {}, specs, None)
        return _TableState(True, self.db.columns(table), specs, index_row)

    # ---- shaping ---------------------------------------------------------------------

    def _shape(
        self,
        raw: pa.Table,
        namer: ColumnNamer,
        types: dict[str, str],
    ) -> tuple[pa.Table, list[ColumnSpec], list[str]]:
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

    # ---- refresh ---------------------------------------------------------------------

    def refresh(
        self,
        experiment: ExperimentInfo,
        *,
        full_refresh: bool = False,
        include_deleted: bool = False,
    ) -> RefreshSummary:
        """Build or refresh the table of one experiment; see the module docstring."""
        started = time.perf_counter()
        table = experiment_table_name(experiment.experiment_id)
        summary = RefreshSummary(experiment.experiment_id, experiment.name, self.db.shown(table))
        if not self._db_ready:
            self.db.ensure()
            self._db_ready = True
        exists = self.db.exists(table)
        index = self._index_row(experiment.experiment_id) if exists else None
        label = self.selection.label if self.selection is not None else None
        if index is not None and not full_refresh and index.get("metric_history") != label:
            self._check_selection(table, experiment.experiment_id)
        if index is not None and not full_refresh and index.get("metric_history") != label:
            # a scheduled build without --metric-history undoes a build with it: say so
            log.log(logging.WARNING if label is None else logging.INFO,
                    "The metric history of %s changes from %s to %s (--metric-history, tables.metric_history): "
                    "full refresh%s", table, index.get("metric_history") or "none", label or "none",
                    "; its summary columns are dropped and its history table is no longer refreshed"
                    if label is None else "")
        reason = self._full_build_reason(table, exists, index, full_refresh, include_deleted, label)
        by_cost = False
        if reason is None and self.refresh_by_cost:
            assert index is not None  # no reason to build in full: the index row is there
            reason = cheaper_full_build(index)
            by_cost = reason is not None
        self._measure = _Measure(started, index, by_cost)
        refreshed = reason is None and self._refresh_incremental(experiment, table, index, include_deleted, summary)
        if not refreshed:
            summary.reason = reason or f"columns no longer fit their type: {', '.join(summary.columns_widened)}"
            state = self._state(table, exists, index)
            self._refresh_full(experiment, table, state, include_deleted, summary)
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary

    def _full_build_reason(self, table: str, exists: bool, index: dict[str, Any] | None, full_refresh: bool,
                           include_deleted: bool, label: str | None) -> str | None:
        """Why the table must be built in full, or None when it can be refreshed incrementally."""
        if not exists:
            return NO_TABLE_YET
        if full_refresh:
            return ASKED_FOR
        if index is None:
            return "the table has no row in the index table"
        if index.get("watermark_ms") is None:
            return "the index row has no watermark"
        if bool(index.get("include_deleted")) != include_deleted:
            return "deleted runs are " + ("included now" if include_deleted else "no longer included")
        if index.get("metric_history") != label:
            return "the metric history selection changed"
        if label is not None and not self.db.exists(history_table_name(table)):
            return f"{history_table_name(table)} is missing"
        if self.inputs is not None and not self.db.exists(inputs_table_name(table)):
            return f"{inputs_table_name(table)} is missing"
        return None

    def _refresh_full(self, experiment, table, state, include_deleted, summary) -> None:
        assert self.fetcher is not None and self.inputs is not None
        watermark = int(self.clock() * 1000)
        chunks = self.fetcher.iter_all(experiment.experiment_id, include_deleted=include_deleted,
                                       chunk_runs=self.chunk_runs)
        pending = [next(chunks)]
        following = next(chunks, None)
        if following is not None:  # more runs than one chunk: staged in Spark
            pending.append(following)
            del following
            self._refresh_full_staged(experiment, table, state, include_deleted, summary,
                                      _draining(pending, chunks), watermark)
            return
        raw = pending.pop()
        summary.runs_fetched = raw.num_rows
        # A full rebuild keeps existing names but infers every type afresh.
        namer = ColumnNamer(state.specs)
        data, specs, _ = self._shape(raw, namer, {})
        data, specs = self._with_history(table, raw, data, specs, namer, [], summary, replace_all=True)
        if state.exists:
            old_ids = to_arrow(self.spark.sql(f"SELECT run_id FROM {self.db.name(table)}"))["run_id"]
            kept = pc.is_in(data["run_id"], value_set=old_ids)
            summary.rows_updated = pc.sum(kept).as_py() or 0
            summary.rows_inserted = data.num_rows - summary.rows_updated
            summary.rows_deleted = len(old_ids) - summary.rows_updated
            widened = {
                s.column_name
                for s in specs
                if s.kind == PARAM
                and s.data_type == param_types.STRING
                and state.types.get(s.column_name, param_types.STRING) != param_types.STRING
            }
            summary.columns_widened = sorted(widened | set(summary.columns_widened))
        else:
            summary.rows_inserted = data.num_rows
        summary.column_collisions = namer.collisions
        summary.columns_added = sorted(
            s.column_name for s in specs if s.kind != INFO and s.column_name not in state.types
        )
        self._write_columns(table, specs, state.specs)
        with self.db.arrow_frame(data, ddl(specs), f"{table}__rows", STATS_COLUMNS) as frame:
            self.db.overwrite(frame, table, STATS_COLUMNS)
        summary.inputs_table, summary.inputs = self.inputs.write(table, raw, replace_all=True)
        self._write_models(experiment, table, summary)
        summary.mode = FULL
        summary.row_count = data.num_rows
        self._write_index(experiment, table, summary.row_count, len(specs), include_deleted, watermark, FULL)

    def _refresh_full_staged(self, experiment: ExperimentInfo, table: str, state: _TableState,
                             include_deleted: bool, summary: RefreshSummary, chunks: Iterator[pa.Table],
                             watermark: int) -> None:
        """A full build of more runs than one chunk: each chunk is staged in Spark as it comes
        (runs and dataset inputs), and the table's columns are made there, in one projection."""
        assert self.inputs is not None
        staged = StagedRuns(self.db, f"{table}__staged")
        inputs = self.inputs.staged(table)
        summaries = f"{table}__summaries"
        having_metrics: list[pa.Table] = []  # which runs have which selected metric (history)
        try:
            for chunk in chunks:
                staged.add(chunk)
                inputs.add(chunk)
                if self.selection is not None:
                    having_metrics.append(_selected_metrics(chunk, self.selection))
                del chunk
            summary.runs_fetched = staged.runs
            namer = ColumnNamer(state.specs)
            data, specs = staged.frame(namer)
            if self.history is not None:
                data, specs = self._with_staged_history(table, concat_pages(having_metrics), data, specs, namer,
                                                        summaries, summary)
            del having_metrics
            if state.exists:
                old = self.spark.table(self.db.name(table)).select("run_id")
                total_old = old.count()
                summary.rows_updated = old.join(data.select("run_id"), "run_id", "left_semi").count()
                summary.rows_deleted = total_old - summary.rows_updated
                summary.columns_widened = sorted(
                    s.column_name for s in specs if s.kind == PARAM and s.data_type == param_types.STRING
                    and state.types.get(s.column_name, param_types.STRING) != param_types.STRING)
            summary.rows_inserted = staged.runs - summary.rows_updated
            summary.column_collisions = namer.collisions
            summary.columns_added = sorted(
                s.column_name for s in specs if s.kind != INFO and s.column_name not in state.types)
            self._write_columns(table, specs, state.specs)
            self.db.overwrite(data, table, STATS_COLUMNS)
            summary.inputs_table, summary.inputs = inputs.finish()
        finally:
            staged.drop()
            inputs.drop()
            self.db.drop(summaries)
        self._write_models(experiment, table, summary)
        summary.mode = FULL
        summary.row_count = staged.runs
        self._write_index(experiment, table, summary.row_count, len(specs), include_deleted, watermark, FULL)

    def _with_staged_history(self, table: str, runs: pa.Table, data: Any, specs: list[ColumnSpec],
                             namer: ColumnNamer, staging: str, summary: RefreshSummary) -> tuple[Any, list[ColumnSpec]]:
        """Write the metric history of ``runs`` (run ids and their selected metric columns) and
        join its per-run summaries to the staged ``data``, through the table ``staging``."""
        run_id = [s for s in info_specs() if s.column_name == "run_id"]
        ids = pa.table({"run_id": runs["run_id"]})
        wide, wide_specs = self._with_history(table, runs, ids, run_id, namer, [], summary, replace_all=True)
        added = [s for s in wide_specs if s.column_name != "run_id"]
        if not added:
            return data, specs
        self.db.write_arrow(wide, ddl(wide_specs), staging, ("run_id",))
        specs = sort_specs(specs + added)
        joined = data.join(self.spark.table(self.db.name(staging)), "run_id", "left")
        return joined.select(*(s.column_name for s in specs)), specs

    def _with_history(self, table: str, runs: pa.Table, data: pa.Table, specs: list[ColumnSpec],
                      namer: ColumnNamer, removed: list[str], summary: RefreshSummary, *,
                      replace_all: bool) -> tuple[pa.Table, list[ColumnSpec]]:
        """Write the metric history of ``runs`` (when asked for) and add the per-metric
        summaries it gives to ``data``; the history table is committed before the run table."""
        if self.history is None or self.selection is None:
            return data, specs
        result = self.history.write(table, runs, namer, self.selection, replace_all=replace_all,
                                    removed_run_ids=removed)
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

    def _refresh_incremental(self, experiment, table, index, include_deleted, summary) -> bool:
        """Merge what changed since the watermark; False when the table needs a full rebuild
        instead (new values no longer fit a column's type)."""
        assert self.fetcher is not None and self.inputs is not None
        watermark = int(self.clock() * 1000)
        since = int(index["watermark_ms"]) - self.margin_ms
        exp_id = experiment.experiment_id
        # The time-filtered searches run while the table's state is read.
        with ThreadPoolExecutor(max_workers=1) as pool:
            recent_future = pool.submit(self.fetcher.fetch_recent, exp_id, since, include_deleted=include_deleted)
            state = self._state(table, True, index)
            unfinished = [
                r["run_id"]
                for r in self.spark.sql(
                    f"SELECT run_id FROM {self.db.name(table)} WHERE status IN "
                    f"({sql_strings(UNFINISHED)})"
                ).collect()
            ]
            recent = recent_future.result()
        raw = merge_changes(recent, self.fetcher.fetch_by_ids(exp_id, missing_ids(recent, unfinished)))
        summary.runs_fetched = raw.num_rows
        namer = ColumnNamer(state.specs)
        data, specs, broken = self._shape(raw, namer, state.types)
        if broken:
            # New values no longer fit a typed param column: rebuild the table in full with
            # the widened types, from the original strings on the tracking server.
            log.info("Columns %s no longer fit their type; rebuilding %s", broken, table)
            summary.columns_widened = sorted(broken)
            return False
        deleted = pc.equal(raw["lifecycle_stage"], "deleted")
        kept = raw if include_deleted else raw.filter(pc.invert(pc.fill_null(deleted, False)))
        removed = [] if include_deleted else raw.filter(pc.fill_null(deleted, False))["run_id"].to_pylist()
        if self.history is not None:
            data, specs = self._with_history(table, kept, data, specs, namer, removed, summary,
                                             replace_all=False)
        new_specs = [s for s in specs if s.column_name not in state.types]
        all_specs = sort_specs(
            [ColumnSpec(n, *self._kind_key(n, state.specs), t) for n, t in state.types.items()]
            + new_specs
        )
        summary.column_collisions = namer.collisions
        summary.columns_added = sorted(s.column_name for s in new_specs)
        if new_specs:
            self._write_columns(table, all_specs, state.specs)
            self.db.add_columns(table, [(s.column_name, s.data_type) for s in new_specs])
        if data.num_rows:
            full = _align(data, all_specs)
            view = f"__mst_changes_{table}"
            with self.db.arrow_frame(full, ddl(all_specs), f"{table}__rows", STATS_COLUMNS) as frame:
                frame.createOrReplaceTempView(view)
                self._merge_changes(view, table, include_deleted, summary, all_specs)
                self.spark.catalog.dropTempView(view)
        summary.inputs_table, summary.inputs = self.inputs.write(
            table, kept, replace_all=False, replaced_run_ids=raw["run_id"].to_pylist())
        self._write_models(experiment, table, summary)
        previous = index.get("run_count") or 0
        summary.row_count = previous + summary.rows_inserted - summary.rows_deleted
        in_store = self.fetcher.count_runs(exp_id, include_deleted=include_deleted)
        if in_store is not None and in_store > summary.row_count:  # started and ended before the watermark
            summary.runs_not_seen = in_store - summary.row_count
        summary.mode = INCREMENTAL
        self._write_index(
            experiment, table, summary.row_count, len(all_specs), include_deleted, watermark, INCREMENTAL
        )
        return True

    def _write_models(self, experiment: ExperimentInfo, table: str, summary: RefreshSummary) -> None:
        """Rewrite the logged models table (when the server has logged models)."""
        self._models_written = False
        if self.models is not None:
            summary.models_table, summary.models = self.models.write(table, experiment.experiment_id)
            self._models_written = summary.models_table is not None

    @staticmethod
    def _kind_key(column: str, specs: list[ColumnSpec]) -> tuple[str, str]:
        for spec in specs:
            if spec.column_name == column:
                return spec.kind, spec.key
        if column in dict(INFO_COLUMNS):
            return INFO, column
        raise KeyError(column)

    def _merge_changes(self, view: str, table: str, include_deleted: bool, summary: RefreshSummary,
                       specs: list[ColumnSpec]) -> None:
        """MERGE the rows of ``view`` (every column of ``specs``) into ``table`` and count what
        changed in ``summary``: deleted runs leave the table unless they are included.

        Delta Lake answers what its MERGE changed: rows whose every value is what the table
        holds are left alone and not counted. The embedded engine's MERGE answers nothing: the
        changes are counted first, with one more read of the table.
        """
        counted = self.db.engine.executor == SAIL
        if counted:
            self._count_changes(view, table, include_deleted, summary, specs)
        counts = self.db.merge(
            view,
            table,
            [s.column_name for s in specs],
            delete_condition=None if include_deleted else "s.lifecycle_stage = 'deleted'",
            insert_condition=None if include_deleted else "s.lifecycle_stage <> 'deleted'",
            update_condition=None if counted else f"NOT ({_all_same(specs)})",
        )
        if not counted:
            if counts is None:
                raise EngineError(f"The MERGE into {table} did not say what it changed")
            summary.rows_updated, summary.rows_deleted = counts.updated, counts.deleted
            summary.rows_inserted = counts.inserted

    def _count_changes(self, view: str, table: str, include_deleted: bool, summary,
                       specs: list[ColumnSpec]) -> None:
        """Rows the merge inserts, deletes and changes: a run re-read within the watermark
        margin whose every value is what the table holds is not counted as updated."""
        deleted = "FALSE" if include_deleted else "s.lifecycle_stage = 'deleted'"
        same = _all_same(specs)
        row = self.spark.sql(
            f"SELECT "
            f"count_if(t.run_id IS NOT NULL AND {deleted}) AS deleted, "
            f"count_if(t.run_id IS NOT NULL AND NOT ({deleted}) AND NOT ({same})) AS updated, "
            f"count_if(t.run_id IS NULL AND NOT ({deleted})) AS inserted "
            f"FROM {quote(view)} s LEFT JOIN {self.db.name(table)} t ON s.run_id = t.run_id"
        ).collect()[0]
        summary.rows_deleted = row["deleted"]
        summary.rows_updated = row["updated"]
        summary.rows_inserted = row["inserted"]

    # ---- companion tables ------------------------------------------------------------

    def _write_columns(self, table: str, specs: list[ColumnSpec], previous: list[ColumnSpec]) -> None:
        """Store the column mapping (unless it is the one stored); names of keys no longer present
        stay reserved (not those of history summaries: they follow their metric's name, which
        stays reserved)."""
        current = {s.column_name for s in specs}
        kept = [s for s in previous if s.column_name not in current and s.kind != INFO
                and s.kind not in SUMMARY_KINDS]
        rows = [(s.column_name, s.kind, s.key, s.data_type) for s in sort_specs(specs + kept)]
        if set(rows) == {(s.column_name, s.kind, s.key, s.data_type) for s in previous}:
            return  # the same mapping: no commit
        data = pa.table(list(zip(*rows)), names=["column_name", "kind", "key", "data_type"])
        self.db.overwrite(
            to_dataframe(self.spark, data, COLUMNS_TABLE_SCHEMA), table + "_columns", ["column_name"]
        )

    def _write_index(self, experiment, table, run_count, column_count, include_deleted, watermark, mode) -> None:
        measure = self._measure
        cost = measurements(measure.previous, mode, time.perf_counter() - measure.started, run_count,
                            measure.by_cost)
        row = pa.table(
            {
                "experiment_id": [experiment.experiment_id],
                "name": [experiment.name],
                "lifecycle_stage": [experiment.lifecycle_stage],
                "table_name": [f"{self.db.database}.{table}"],
                "columns_table": [f"{self.db.database}.{table}_columns"],
                "run_count": pa.array([run_count], pa.int64()),
                "column_count": pa.array([column_count], pa.int64()),
                "include_deleted": [include_deleted],
                "watermark_ms": pa.array([watermark], pa.int64()),
                "last_refresh_mode": [mode],
                "last_refreshed_at": pa.array([int(self.clock() * 1000)], ARROW_TYPES["timestamp"]),
                "metric_history": pa.array([self.selection.label if self.selection else None], pa.string()),
                "metrics_table": pa.array(
                    [f"{self.db.database}.{history_table_name(table)}" if self.selection else None], pa.string()),
                "inputs_table": pa.array(
                    [f"{self.db.database}.{inputs_table_name(table)}" if self.inputs is not None else None], pa.string()),
                "models_table": pa.array(
                    [f"{self.db.database}.{models_table_name(table)}" if self._models_written else None],
                    pa.string()),
                **{name: pa.array([cost[name]], ARROW_TYPES[data_type]) for name, data_type in COST_COLUMNS},
            }
        )
        schema = ", ".join(f"{quote(n)} {t}" for n, t in INDEX_COLUMNS)
        df = to_dataframe(self.spark, row, schema)
        if not self.db.exists(INDEX_TABLE):
            self.db.overwrite(df, INDEX_TABLE, ["experiment_id"])
            return
        missing = [(n, t) for n, t in INDEX_COLUMNS if n not in self.db.columns(INDEX_TABLE)]
        self.db.add_columns(INDEX_TABLE, missing)  # an index table written by an older version
        view = "__mst_index_row"
        df.createOrReplaceTempView(view)
        self.db.merge(view, INDEX_TABLE, [n for n, _ in INDEX_COLUMNS], key="experiment_id")
        self.spark.catalog.dropTempView(view)


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


def _align(data: pa.Table, specs: list[ColumnSpec]) -> pa.Table:
    """``data`` with every column of ``specs`` in order (missing ones null)."""
    columns = []
    for spec in specs:
        if spec.column_name in data.column_names:
            columns.append(data[spec.column_name])
        else:
            columns.append(pa.nulls(data.num_rows, ARROW_TYPES[spec.data_type]))
    return pa.table(columns, names=[s.column_name for s in specs])


def _all_same(specs: list[ColumnSpec]) -> str:
    """SQL: every column of the change equals the table's."""
    return " AND ".join(_same_value(s) for s in specs)


def _same_value(spec: ColumnSpec) -> str:
    """SQL: the change's value of this column equals the table's (NULLs alike, NaNs alike)."""
    column = quote(spec.column_name)
    same = f"s.{column} <=> t.{column}"
    if spec.data_type == "double":
        same = f"({same} OR (isnan(s.{column}) AND isnan(t.{column})))"
    return same
