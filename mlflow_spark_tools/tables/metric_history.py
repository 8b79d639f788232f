"""The metric history table ``<database>.exp_<id>_metrics``: one row per logged metric point.

Columns: ``run_id``, ``key`` (the MLflow key), ``column_name`` (the ``_m_`` column of that key
in ``exp_<id>``), ``step``, ``timestamp`` (UTC), ``value`` (NaN and infinities as the server
returns them) and, where the server sends them (MLflow 3), ``model_id``, ``dataset_name`` and
``dataset_digest``.

Which keys are kept is a :class:`HistorySelection` (``all`` or a list of keys). The points are
read with the source's :class:`~mlflow_spark_tools.tables.source_interface.HistoryReader`
(in parallel requests from a tracking server) and written in chunks of bounded size to a staging
table (when there is more than one chunk), so that the driver never holds more than a few chunks however long the histories are;
the table itself then changes in one Delta commit: an overwrite for a full build; for an
incremental refresh an append of the points the table does not hold yet (MLflow never changes a
logged point), or one MERGE when deleted runs still have rows (deleted, with the new points
inserted) or when more than 2,000 runs were re-read (their rows replaced by their points as
read now). While reading, the lowest and highest value of each run's metric and the step where
each was first reached are computed for ``exp_<id>``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlflow_spark_tools.core.identifiers import quote, sql_strings
from mlflow_spark_tools.core.progress import Progress
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.runs.columns import (
    METRIC,
    METRIC_MAX,
    METRIC_MAX_STEP,
    METRIC_MIN,
    METRIC_MIN_STEP,
    ColumnNamer,
)
from mlflow_spark_tools.runs.run_batches import split_raw_name
from mlflow_spark_tools.spark.arrow import to_arrow, to_dataframe
from mlflow_spark_tools.spark.catalog import MAX_KEYS_NAMED, Database
from mlflow_spark_tools.tables.source_interface import POINTS, HistoryReader
from mlflow_spark_tools.tracking.metric_history import MAX_RUNS_PER_BULK

log = logging.getLogger(__name__)

HISTORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "string"),
    ("key", "string"),
    ("column_name", "string"),
    ("step", "bigint"),
    ("timestamp", "timestamp"),
    ("value", "double"),
    ("model_id", "string"),
    ("dataset_name", "string"),
    ("dataset_digest", "string"),
)
HISTORY_DDL = ", ".join(f"{quote(n)} {t}" for n, t in HISTORY_COLUMNS)
# the points of every source (POINTS) with their key's column in exp_<id>
HISTORY_SCHEMA = POINTS.insert(2, pa.field("column_name", pa.string()))
# Min/max statistics of `value` would turn NaN into numbers on readers that trust them.
HISTORY_STATS_COLUMNS = ("run_id", "key", "step", "timestamp")
SUMMARY_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("key", pa.string()),
    ("min", pa.float64()), ("min_step", pa.int64()), ("max", pa.float64()), ("max_step", pa.int64()),
])
CHUNK_ROWS = 250_000
_POINTS_VIEW = "__mst_history_points"
# A full build writes the points ordered by run into files of about this many rows, so that the
# MERGE of an incremental refresh rewrites only the files that hold the re-read runs (their
# run_id statistics rule the others out) instead of the whole table.
ROWS_PER_FILE = 50_000
ALL = "all"


def history_table_name(table: str) -> str:
    return table + "_metrics"


@dataclass(frozen=True)
class HistorySelection:
    """The metric keys whose history is kept: every key (``keys`` None) or the keys listed."""

    keys: frozenset[str] | None = None

    @classmethod
    def parse(cls, text: str | Iterable[str] | None) -> HistorySelection | None:
        """``all``, ``key1,key2`` or a list of keys; None, ``""``, ``none`` or ``off`` for no
        history."""
        if text is None:
            return None
        items = [text] if isinstance(text, str) else list(text)
        keys = [k.strip() for item in items for k in str(item).split(",") if k.strip()]
        if not keys or (len(keys) == 1 and keys[0].lower() in ("none", "off", "false")):
            return None
        if any(k.lower() in (ALL, "none", "off") for k in keys):
            if len(keys) > 1:
                raise UsageError("--metric-history takes `all`, `none` or a list of metric keys, not a mix.")
            return cls(None)
        return cls(frozenset(keys))

    @property
    def label(self) -> str:
        """How the selection is recorded in the index table: ``all`` or the sorted keys."""
        return ALL if self.keys is None else ",".join(sorted(self.keys))

    def wants(self, key: str) -> bool:
        return self.keys is None or key in self.keys


@dataclass
class HistoryResult:
    """What one history write did, and the per-run summaries it computed."""

    table: str
    points: int = 0
    runs_read: int = 0
    requests: int = 0
    truncated: list[str] = field(default_factory=list)
    summaries: pa.Table = field(default_factory=SUMMARY_SCHEMA.empty_table)


class MetricHistoryWriter:
    """Reads histories and writes them into the history table of an experiment table.

    Args:
        db: the database of the tables.
        reader: the source's metric points.
        chunk_rows: points per write to the staging table (bounds the driver's memory).
    """

    def __init__(self, db: Database, reader: HistoryReader, chunk_rows: int | None = None) -> None:
        self.db = db
        self.spark = db.spark
        self.reader = reader
        self.chunk_rows = chunk_rows or CHUNK_ROWS

    def write(self, table: str, runs: pa.Table, namer: ColumnNamer, selection: HistorySelection, *,
              replace_all: bool, removed_run_ids: Iterable[str] = ()) -> HistoryResult:
        """Write the histories of ``runs`` (raw run columns, as fetched) into ``<table>_metrics``.

        Args:
            runs: the runs to read (their ``_m_`` raw columns say which keys each has).
            namer: names the metric columns (every key of ``runs`` is named already).
            replace_all: the table becomes exactly these runs' points (a full build); else
                the points of these runs the table lacks are added and the other rows kept.
            removed_run_ids: runs whose rows are deleted (incremental refresh only).
        """
        target = history_table_name(table)
        staging = target + "__staging"
        result = HistoryResult(self.db.shown(target))
        requests_before, truncated_before = self.reader.counts.requests, len(self.reader.counts.truncated)
        tasks = list(_tasks(runs, selection))
        read_ids = sorted({r for _, ids in tasks for r in ids})
        result.runs_read = len(read_ids)
        incremental = not replace_all and self.db.exists(target)
        # MLflow never changes a logged point: an incremental refresh appends the points the
        # table does not hold yet (when it can name the re-read runs), instead of rewriting them
        known = self._known_points(target, read_ids) if incremental and len(read_ids) <= MAX_KEYS_NAMED else None
        summaries: list[pa.Table] = []
        try:
            source, result.points = self._read(table, staging, tasks, selection, namer, known, summaries)
            if not incremental:
                files = max(1, -(-result.points // ROWS_PER_FILE))
                ordered = (source.repartitionByRange(files, "run_id")
                           .sortWithinPartitions("run_id", "key", "step", "timestamp"))
                self.db.overwrite(ordered, target, HISTORY_STATS_COLUMNS)
            elif known is not None:
                gone = self._runs_with_rows(target, sorted(set(removed_run_ids)))
                if gone:  # deleted runs' rows go and the new points come in one MERGE
                    self._replace_rows(source, target, gone)
                elif result.points:  # new points only: one append, nothing rewritten
                    self.db.append(source, target)
            else:
                self._replace_rows(source, target, sorted(set(runs["run_id"].to_pylist()) | set(removed_run_ids)))
        finally:
            self._drop(staging)
        counts = self.reader.counts
        result.requests = counts.requests - requests_before
        result.truncated = [f"{run_id}/{key}" for run_id, key, _ in counts.truncated[truncated_before:]]
        if summaries:
            result.summaries = combine_summaries(summaries)
        return result

    def _read(self, table: str, staging: str, tasks: list[tuple[str, list[str]]], selection: HistorySelection,
              namer: ColumnNamer, known: pa.Table | None, summaries: list[pa.Table]) -> tuple[Any, int]:
        """Read every task's points (their summaries into ``summaries``; without the ``known``
        ones) into a DataFrame: from memory when they fit one chunk, else from ``staging``
        (written chunk by chunk). Returns it and its row count."""
        staged = 0
        pending: list[pa.Table] = []
        pending_rows = 0
        pairs = sum(len(ids) for _, ids in tasks)
        with Progress(f"{table}: metric histories read", "run-keys", total=pairs) as progress:
            for done, part in self._parts(tasks, selection, namer):
                progress.update(done)
                if part.num_rows == 0:
                    continue
                summaries.append(summarize(part))
                if known is not None:
                    part = _new_points(part, known)
                pending.append(part)
                pending_rows += part.num_rows
                if pending_rows >= self.chunk_rows:
                    staged += self._stage(staging, pending, first=staged == 0)
                    pending, pending_rows = [], 0
        if staged:  # more than one chunk: the rest joins the others in the staging table
            if pending:
                staged += self._stage(staging, pending, first=False)
            return self.spark.table(self.db.name(staging)), staged
        # one chunk at most: straight from memory, no staging table
        data = pa.concat_tables(pending).combine_chunks() if pending else HISTORY_SCHEMA.empty_table()
        return to_dataframe(self.spark, data, HISTORY_DDL), data.num_rows

    def _replace_rows(self, source: Any, target: str, run_ids: list[str]) -> None:
        """The rows of ``run_ids`` replaced by the points of ``source``, in one MERGE."""
        source.createOrReplaceTempView(_POINTS_VIEW)
        try:
            self.db.replace_rows(_POINTS_VIEW, target, HISTORY_COLUMNS, "run_id", run_ids)
        finally:
            self.spark.catalog.dropTempView(_POINTS_VIEW)

    # ---- what the table holds ------------------------------------------------------------

    def _known_points(self, target: str, run_ids: list[str]) -> pa.Table:
        """The points the table holds of these runs, as (run_id, key, step, ts, bits)."""
        if not run_ids:
            return _identity(HISTORY_SCHEMA.empty_table())
        rows = to_arrow(self.spark.sql(
            f"SELECT run_id, key, step, unix_millis(timestamp) AS ts, value FROM {self.db.name(target)} "
            f"WHERE run_id IN ({sql_strings(run_ids)})"))
        return _identity(rows)

    def _runs_with_rows(self, target: str, run_ids: list[str]) -> list[str]:
        """Those of ``run_ids`` the table holds rows of (all of them when too many to name)."""
        if not run_ids:
            return []
        if len(run_ids) > MAX_KEYS_NAMED:
            return run_ids
        found = self.spark.sql(
            f"SELECT DISTINCT run_id FROM {self.db.name(target)} "
            f"WHERE run_id IN ({sql_strings(run_ids)})").collect()
        return sorted(r["run_id"] for r in found)

    # ---- reading -----------------------------------------------------------------------

    def _parts(self, tasks: list[tuple[str, list[str]]], selection: HistorySelection,
               namer: ColumnNamer) -> Iterator[tuple[int, pa.Table]]:
        """(run-keys finished, points with their column names) for every task."""
        keys = None if selection.keys is None else sorted(selection.keys)
        for done, points in self.reader.points(tasks, keys):
            yield done, with_column_names(points, namer)

    # ---- writing -----------------------------------------------------------------------

    def _stage(self, staging: str, parts: list[pa.Table], *, first: bool) -> int:
        data = pa.concat_tables(parts).combine_chunks() if parts else HISTORY_SCHEMA.empty_table()
        df = to_dataframe(self.spark, data, HISTORY_DDL)
        if first:
            self.db.overwrite(df, staging, HISTORY_STATS_COLUMNS)
        else:
            self.db.append(df, staging)
        return data.num_rows

    def _drop(self, staging: str) -> None:
        self.db.drop(staging)


def _tasks(runs: pa.Table, selection: HistorySelection) -> Iterator[tuple[str, list[str]]]:
    """(key, up to 100 run ids) for every selected key: the runs whose latest metrics have it."""
    run_ids = runs["run_id"]
    for name in runs.column_names:
        kind_key = split_raw_name(name)
        if kind_key is None or kind_key[0] != METRIC or not selection.wants(kind_key[1]):
            continue
        having = sorted(r for r in run_ids.filter(pc.is_valid(runs[name])).to_pylist() if r)
        for start in range(0, len(having), MAX_RUNS_PER_BULK):
            yield kind_key[1], having[start:start + MAX_RUNS_PER_BULK]


def with_column_names(points: pa.Table, namer: ColumnNamer) -> pa.Table:
    """Points of several keys (:data:`~mlflow_spark_tools.tables.source_interface.POINTS`) as
    :data:`HISTORY_SCHEMA` rows: with each key's ``_m_`` column name."""
    keys = pc.unique(points["key"])
    names = pa.array([namer.name(METRIC, k) for k in keys.to_pylist()], pa.string())
    column_names = names.take(pc.index_in(points["key"], value_set=keys))
    return pa.table({
        "run_id": points["run_id"], "key": points["key"], "column_name": column_names,
        "step": points["step"], "timestamp": points["timestamp"], "value": points["value"],
        "model_id": points["model_id"], "dataset_name": points["dataset_name"],
        "dataset_digest": points["dataset_digest"],
    }, schema=HISTORY_SCHEMA)


def _identity(points: pa.Table) -> pa.Table:
    """What tells points apart: run, key, step, time in ms and the value's bits (NaN equal to
    NaN, 0.0 apart from -0.0), as plain columns an Arrow join takes."""
    values = points["value"].combine_chunks().cast(pa.float64())
    if values.null_count:
        values = pc.fill_null(values, 0.0)
    if "ts" in points.column_names:  # epoch milliseconds, as read back from the table
        timestamps = points["ts"].combine_chunks().cast(pa.int64())
    else:
        timestamps = points["timestamp"].combine_chunks().cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    timestamps = pc.fill_null(timestamps, -1)
    return pa.table({"run_id": points["run_id"].combine_chunks().cast(pa.string()),
                     "key": points["key"].combine_chunks().cast(pa.string()),
                     "step": pc.fill_null(points["step"].combine_chunks().cast(pa.int64()), 0),
                     "ts": timestamps, "bits": values.view(pa.int64())})


def _new_points(points: pa.Table, known: pa.Table) -> pa.Table:
    """The rows of ``points`` whose identity is not among ``known``."""
    if known.num_rows == 0 or points.num_rows == 0:
        return points
    ids = _identity(points).append_column("__row", pa.array(range(points.num_rows), pa.int64()))
    new = ids.join(known, keys=["run_id", "key", "step", "ts", "bits"], join_type="left anti")
    rows = new["__row"].combine_chunks()
    return points.take(rows.take(pc.sort_indices(rows)))


def summarize(points: pa.Table) -> pa.Table:
    """Per run and key: the lowest and highest value (NaN ignored; infinities count) and the
    first step where each was reached (the lowest such step)."""
    numbers = points.filter(pc.invert(pc.fill_null(pc.is_nan(points["value"]), True)))
    if numbers.num_rows == 0:
        return SUMMARY_SCHEMA.empty_table()
    lowest = _first_per_group(numbers.sort_by([("run_id", "ascending"), ("key", "ascending"),
                                               ("value", "ascending"), ("step", "ascending")]))
    highest = _first_per_group(numbers.sort_by([("run_id", "ascending"), ("key", "ascending"),
                                                ("value", "descending"), ("step", "ascending")]))
    return pa.table({
        "run_id": lowest["run_id"], "key": lowest["key"],
        "min": lowest["value"], "min_step": lowest["step"],
        "max": highest["value"], "max_step": highest["step"],
    }, schema=SUMMARY_SCHEMA)


def combine_summaries(parts: list[pa.Table]) -> pa.Table:
    """One summary per run and key from the summaries of parts of their points (a run's
    history may be split across the record batches or pages it is read in): the lowest of the
    lowest values, the highest of the highest, each at the lowest step that reached it.

    The parts' lows and highs are summarized again as points: a value that is some part's low
    and another's high at once is that value's first step in both."""
    summaries = pa.concat_tables(parts)
    if summaries.num_rows == 0:
        return SUMMARY_SCHEMA.empty_table()
    ends = [pa.table({"run_id": summaries["run_id"], "key": summaries["key"], "step": summaries[f"{end}_step"],
                      "value": summaries[end]}) for end in ("min", "max")]
    return summarize(pa.concat_tables(ends))


def _first_per_group(ordered: pa.Table) -> pa.Table:
    """The first row of each (run_id, key) group of a table sorted by them."""
    if ordered.num_rows == 0:
        return ordered
    run_ids, keys = ordered["run_id"].combine_chunks(), ordered["key"].combine_chunks()
    changed = pc.or_(pc.not_equal(run_ids[1:], run_ids[:-1]), pc.not_equal(keys[1:], keys[:-1]))
    return ordered.filter(pa.concat_arrays([pa.array([True]), changed]))


def with_summaries(data: pa.Table, summaries: pa.Table,
                   name_of: Callable[[str, str], str]) -> tuple[pa.Table, list[tuple[str, str, str, str]]]:
    """``data`` (one row per run, with ``run_id``) with summary columns appended for every key
    in ``summaries``; returns the table and (column name, kind, key, type) of the new columns.

    Args:
        name_of: the column name of (kind, key).
    """
    added: list[tuple[str, str, str, str]] = []
    if summaries.num_rows == 0 or data.num_rows == 0:
        return data, added
    order = pa.table({"run_id": data["run_id"], "__row": pa.array(range(data.num_rows), pa.int64())})
    for key in sorted(set(summaries["key"].to_pylist())):
        of_key = summaries.filter(pc.equal(summaries["key"], key)).drop_columns(["key"])
        joined = order.join(of_key, "run_id", join_type="left outer").sort_by("__row")
        for kind, column, data_type in ((METRIC_MIN, "min", "double"), (METRIC_MIN_STEP, "min_step", "bigint"),
                                        (METRIC_MAX, "max", "double"), (METRIC_MAX_STEP, "max_step", "bigint")):
            name = name_of(kind, key)
            data = data.append_column(name, joined[column])
            added.append((name, kind, key, data_type))
    return data, added
