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

:class:`ExperimentTableBuilder` is the refresh core: it decides between a full build and an
incremental refresh, lets its :class:`RunRefresh` strategy read the runs and write the run table
(from Arrow tables in the driver, :mod:`~mlflow_spark_tools.tables.arrow_refresh`, or inside
Spark, :mod:`~mlflow_spark_tools.tables.spark_refresh`), then its companion tables
(:mod:`~mlflow_spark_tools.tables.companion_tables`), and records the refresh in the index table.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any, Protocol

from mlflow_spark_tools.core.identifiers import experiment_table_name
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.runs.columns import METRIC
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.tables.companion_tables import CompanionRefresh, CompanionTable
from mlflow_spark_tools.tables.index_table import IndexTable, Measure
from mlflow_spark_tools.tables.metric_history import HistorySelection, history_table_name
from mlflow_spark_tools.tables.refresh_cost import ASKED_FOR, NO_TABLE_YET, cheaper_full_build
from mlflow_spark_tools.tables.refresh_summary import FULL, INCREMENTAL, RefreshSummary
from mlflow_spark_tools.tables.run_table import Refresh, RunTable
from mlflow_spark_tools.tracking.source import ExperimentInfo

log = logging.getLogger(__name__)


class RunRefresh(Protocol):
    """How a source's runs become the run table: a full build and an incremental refresh.

    Both fill ``job.summary`` (rows, columns, history), ``job.column_count`` and
    ``job.watermark_ms``; a strategy that reads runs in the driver tells ``job.runs_read`` every
    table of runs it fetched (the companion tables' input).
    """

    on_runs: Callable[[int], None] | None  # told how many runs each fetch brought

    def full(self, job: Refresh, tables: RunTable) -> None: ...

    def incremental(self, job: Refresh, tables: RunTable) -> bool:
        """Refresh what changed; False (nothing written) when the table must be built in full."""
        ...


class ExperimentTableBuilder:
    """Builds and refreshes experiment tables in one database.

    Args:
        db: the database of the tables.
        runs: how the source's runs are read and written (:class:`RunRefresh`).
        selection: the metric keys whose history the run strategy keeps; None keeps none.
        companions: the tables written beside each run table (inputs, models), in that order.
        clock: wall clock in seconds, for the index row's ``last_refreshed_at`` (the watermark
            is the strategy's).
        refresh_by_cost: build in full where that took less time than an incremental refresh
            (:mod:`refresh_cost`); False refreshes incrementally wherever it can.
    """

    def __init__(self, db: Database, runs: RunRefresh, *, selection: HistorySelection | None = None,
                 companions: Sequence[CompanionTable] = (), clock: Callable[[], float] = time.time,
                 refresh_by_cost: bool = True) -> None:
        self.db = db
        self.spark = db.spark
        self.runs = runs
        self.selection = selection
        self.companions = list(companions)
        self.clock = clock
        self.refresh_by_cost = refresh_by_cost
        self.tables = RunTable(db)
        self.index = IndexTable(db)
        self._db_ready = False

    @property
    def on_runs(self) -> Callable[[int], None] | None:
        return self.runs.on_runs

    @on_runs.setter
    def on_runs(self, callback: Callable[[int], None] | None) -> None:
        self.runs.on_runs = callback

    def refresh(self, experiment: ExperimentInfo, *, full_refresh: bool = False,
                include_deleted: bool = False) -> RefreshSummary:
        """Build or refresh the table of one experiment; see the module docstring."""
        started = time.perf_counter()
        table = experiment_table_name(experiment.experiment_id)
        summary = RefreshSummary(experiment.experiment_id, experiment.name, self.db.shown(table))
        if not self._db_ready:
            self.db.ensure()
            self._db_ready = True
        exists = self.db.exists(table)
        index = self.index.row(experiment.experiment_id) if exists else None
        label = self.selection.label if self.selection is not None else None
        if index is not None and not full_refresh and index.get("metric_history") != label:
            self._check_selection(table, experiment.experiment_id)
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
        measure = Measure(started, index, by_cost)
        job = Refresh(experiment, table, include_deleted, summary, exists, index)
        if reason is None and self._run(job, full=False, measure=measure):
            summary.mode = INCREMENTAL
        else:
            summary.reason = reason or f"columns no longer fit their type: {', '.join(summary.columns_widened)}"
            self._run(Refresh(experiment, table, include_deleted, summary, exists, index), full=True, measure=measure)
            summary.mode = FULL
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary

    def _run(self, job: Refresh, *, full: bool, measure: Measure) -> bool:
        """One full build or incremental refresh of the run table, then its companion tables
        and its index row; False when an incremental refresh found it must build in full."""
        with ExitStack() as stack:
            parts: list[CompanionRefresh] = []
            for companion in self.companions:
                part = companion.begin(job, full=full)
                stack.callback(part.close)
                parts.append(part)
            job.listeners = [part.add for part in parts]
            if full:
                self.runs.full(job, self.tables)
            elif not self.runs.incremental(job, self.tables):
                return False
            for part in parts:
                part.finish(job)
            self._write_index(job, FULL if full else INCREMENTAL, measure, parts)
        return True

    def _check_selection(self, table: str, experiment_id: str) -> None:
        """Refuse a new metric history selection that names keys the table has never seen (a
        typo would otherwise replace the history table and its summary columns with nothing)."""
        if self.selection is None or self.selection.keys is None:
            return
        known = {s.key for s in self.tables.column_specs(table) if s.kind == METRIC}
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
        for companion in self.companions:
            reason = companion.missing_reason(table)
            if reason is not None:
                return reason
        return None

    def _write_index(self, job: Refresh, mode: str, measure: Measure, parts: list[CompanionRefresh]) -> None:
        selection = self.selection
        tables: dict[str, str | None] = {
            "metric_history": selection.label if selection else None,
            "metrics_table": history_table_name(job.table) if selection else None,
            "inputs_table": None, "models_table": None,
        }
        for companion, part in zip(self.companions, parts):
            tables[companion.index_column] = part.indexed()
        self.index.write(job, mode, measure, int(self.clock() * 1000), tables)

