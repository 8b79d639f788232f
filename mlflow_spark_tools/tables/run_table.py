"""The run table ``exp_<id>`` and its column mapping ``exp_<id>_columns`` as a refresh reads and
changes them, whatever the source: its state before a refresh, the refresh under way
(:class:`Refresh`), the mapping's writes, and the one MERGE of an incremental refresh with the
engine's way of counting what it changed (:func:`change_counting`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from mlflow_spark_tools.core.identifiers import quote, sql_strings
from mlflow_spark_tools.errors import EngineError
from mlflow_spark_tools.runs.columns import INFO, INFO_COLUMNS, PARAM, SUMMARY_KINDS, ColumnSpec, sort_specs
from mlflow_spark_tools.spark.arrow import to_dataframe
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.spark.engine import SAIL
from mlflow_spark_tools.tables import param_types
from mlflow_spark_tools.tables.refresh_summary import RefreshSummary
from mlflow_spark_tools.tracking.source import ExperimentInfo

COLUMNS_TABLE_SCHEMA = "`column_name` string, `kind` string, `key` string, `data_type` string"
UNFINISHED = ("RUNNING", "SCHEDULED")
STATS_COLUMNS = ("run_id", "start_time", "end_time")
ARROW_TYPES = {**param_types.ARROW_TYPES, "timestamp": pa.timestamp("ms", tz="UTC")}


@dataclass
class TableState:
    """What is known about an existing table before a refresh."""

    exists: bool
    types: dict[str, str]
    specs: list[ColumnSpec]
    index_row: dict[str, Any] | None


@dataclass
class Refresh:
    """One refresh under way: what it refreshes, what it found, what it reports.

    ``exists`` says whether the table existed before; ``listeners`` are told every table of fetched runs (:meth:`runs_read`: the companion
    tables' inputs); ``replaced_run_ids`` are the runs an incremental refresh re-read;
    ``column_count`` and ``watermark_ms`` go to the index row.
    """

    experiment: ExperimentInfo
    table: str
    include_deleted: bool
    summary: RefreshSummary
    exists: bool
    index: dict[str, Any] | None
    listeners: list[Callable[[pa.Table], None]] = field(default_factory=list)
    replaced_run_ids: list[str] = field(default_factory=list)
    column_count: int = 0
    watermark_ms: int = 0

    def runs_read(self, runs: pa.Table) -> None:
        for listener in self.listeners:
            listener(runs)


def ddl(specs: list[ColumnSpec]) -> str:
    return ", ".join(f"{quote(s.column_name)} {s.data_type}" for s in specs)


class RunTable:
    """Reads and writes of the run tables of one database that every refresh strategy shares."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.spark = db.spark
        self.counting = change_counting(db)

    def column_specs(self, table: str) -> list[ColumnSpec]:
        """The column mapping stored in ``<table>_columns`` ([] without one)."""
        if not self.db.exists(table + "_columns"):
            return []
        return [ColumnSpec(r["column_name"], r["kind"], r["key"], r["data_type"])
                for r in self.spark.table(self.db.name(table + "_columns")).collect()]

    def state(self, table: str, exists: bool, index_row: dict[str, Any] | None) -> TableState:
        specs = self.column_specs(table)
        if not exists:
            return TableState(False, {}, specs, None)
        return TableState(True, self.db.columns(table), specs, index_row)

    def unfinished(self, table: str) -> list[str]:
        """The runs the table holds as running or scheduled."""
        return [r["run_id"] for r in self.spark.sql(
            f"SELECT run_id FROM {self.db.name(table)} WHERE status IN ({sql_strings(UNFINISHED)})").collect()]

    def write_columns(self, table: str, specs: list[ColumnSpec], previous: list[ColumnSpec]) -> None:
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
        self.db.overwrite(to_dataframe(self.spark, data, COLUMNS_TABLE_SCHEMA), table + "_columns", ["column_name"])

    def add_new_columns(self, job: Refresh, state: TableState, specs: list[ColumnSpec]) -> list[ColumnSpec]:
        """Every column of the table after an incremental refresh whose rows have ``specs``: the
        new ones are added to the table and its mapping, and listed in the summary."""
        new_specs = [s for s in specs if s.column_name not in state.types]
        all_specs = sort_specs(
            [ColumnSpec(n, *_kind_key(n, state.specs), t) for n, t in state.types.items()] + new_specs)
        job.summary.columns_added = sorted(s.column_name for s in new_specs)
        if new_specs:
            self.write_columns(job.table, all_specs, state.specs)
            self.db.add_columns(job.table, [(s.column_name, s.data_type) for s in new_specs])
        return all_specs

    def merge(self, view: str, job: Refresh, specs: list[ColumnSpec]) -> None:
        """MERGE the rows of ``view`` (every column of ``specs``) into the table and count what
        changed in the summary: deleted runs leave the table unless they are included. Rows
        whose every value is what the table holds are not counted as updated."""
        self.counting.merge(view, job, specs)


def full_build_counts(summary: RefreshSummary, state: TableState, specs: list[ColumnSpec]) -> None:
    """What a full build over an existing table reports beside its row counts: the param
    columns it had to widen to strings, the columns it adds."""
    if state.exists:
        summary.columns_widened = sorted(set(summary.columns_widened) | {
            s.column_name for s in specs if s.kind == PARAM and s.data_type == param_types.STRING
            and state.types.get(s.column_name, param_types.STRING) != param_types.STRING})
    summary.columns_added = sorted(s.column_name for s in specs if s.kind != INFO and s.column_name not in state.types)


def _kind_key(column: str, specs: list[ColumnSpec]) -> tuple[str, str]:
    for spec in specs:
        if spec.column_name == column:
            return spec.kind, spec.key
    if column in dict(INFO_COLUMNS):
        return INFO, column
    raise KeyError(column)


class ChangeCounting(Protocol):
    """How the engine's MERGE of a refresh's changes is counted."""

    def merge(self, view: str, job: Refresh, specs: list[ColumnSpec]) -> None: ...


def change_counting(db: Database) -> ChangeCounting:
    """Delta Lake answers what its MERGE changed; the embedded engine's MERGE answers nothing, so
    there the changes are counted first, with one more read of the table."""
    return CountedBeforeMerge(db) if db.engine.executor == SAIL else MergeAnswers(db)


class MergeAnswers:
    """Delta Lake's MERGE updates only rows that differ and says how many it changed."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def merge(self, view: str, job: Refresh, specs: list[ColumnSpec]) -> None:
        deleting, inserting = _conditions(job.include_deleted)
        counts = self.db.merge(view, job.table, [s.column_name for s in specs], deleting, inserting,
                               update_condition=f"NOT ({all_same(specs)})")
        if counts is None:
            raise EngineError(f"The MERGE into {job.table} did not say what it changed")
        job.summary.rows_updated, job.summary.rows_deleted = counts.updated, counts.deleted
        job.summary.rows_inserted = counts.inserted


class CountedBeforeMerge:
    """Rows the merge inserts, deletes and changes, counted before it: a run re-read within the
    watermark margin whose every value is what the table holds is not counted as updated."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def merge(self, view: str, job: Refresh, specs: list[ColumnSpec]) -> None:
        deleted = "FALSE" if job.include_deleted else "s.lifecycle_stage = 'deleted'"
        same = all_same(specs)
        row = self.db.spark.sql(
            f"SELECT "
            f"count_if(t.run_id IS NOT NULL AND {deleted}) AS deleted, "
            f"count_if(t.run_id IS NOT NULL AND NOT ({deleted}) AND NOT ({same})) AS updated, "
            f"count_if(t.run_id IS NULL AND NOT ({deleted})) AS inserted "
            f"FROM {quote(view)} s LEFT JOIN {self.db.name(job.table)} t ON s.run_id = t.run_id"
        ).collect()[0]
        job.summary.rows_deleted = row["deleted"]
        job.summary.rows_updated = row["updated"]
        job.summary.rows_inserted = row["inserted"]
        deleting, inserting = _conditions(job.include_deleted)
        self.db.merge(view, job.table, [s.column_name for s in specs], deleting, inserting)


def _conditions(include_deleted: bool) -> tuple[str | None, str | None]:
    """The MERGE's conditions to delete and to insert: deleted runs leave the table unless included."""
    if include_deleted:
        return None, None
    return "s.lifecycle_stage = 'deleted'", "s.lifecycle_stage <> 'deleted'"


def align(data: pa.Table, specs: list[ColumnSpec]) -> pa.Table:
    """``data`` with every column of ``specs`` in order (missing ones null)."""
    columns = []
    for spec in specs:
        if spec.column_name in data.column_names:
            columns.append(data[spec.column_name])
        else:
            columns.append(pa.nulls(data.num_rows, ARROW_TYPES[spec.data_type]))
    return pa.table(columns, names=[s.column_name for s in specs])


def all_same(specs: list[ColumnSpec]) -> str:
    """SQL: every column of the change equals the table's."""
    return " AND ".join(_same_value(s) for s in specs)


def _same_value(spec: ColumnSpec) -> str:
    """SQL: the change's value of this column equals the table's (NULLs alike, NaNs alike)."""
    column = quote(spec.column_name)
    same = f"s.{column} <=> t.{column}"
    if spec.data_type == "double":
        same = f"({same} OR (isnan(s.{column}) AND isnan(t.{column})))"
    return same
