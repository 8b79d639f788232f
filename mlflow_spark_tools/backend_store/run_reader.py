"""Runs of an experiment read from the backend database, as the same Arrow tables REST pages give.

:class:`DatabaseRunReader` answers what a table build asks of a source's runs
(:class:`~mlflow_spark_tools.tables.source_interface.RunReader`) and experiments: every run
(in chunks of a bounded number of runs, in start order), the runs started or ended since a
watermark, runs by id.
Its tables have the columns of :func:`~mlflow_spark_tools.runs.run_batches.runs_to_table`,
with the values the REST API would give for the same runs: the run name from ``runs.name``,
else the ``mlflow.runName`` tag; the parent from ``mlflow.parentRunId``; the latest metric
values from ``latest_metrics`` (NaN where ``is_nan``; MLflow stores infinities as +-1.797e308
and so returns them); a user id or tag value that is empty or NULL as the API sends it.

Each query streams in record batches: run info first (one row per run), then params, latest
metrics and tags in long form (run, key, value), by run id or joined with the runs (see
:meth:`DatabaseRunReader._entry_queries`). Each batch is reduced to (run position, key
number, value) as it arrives, and the whole is pivoted into one column per key with Arrow and
numpy (one pass per key over the run count, whatever the number of keys:
:mod:`~mlflow_spark_tools.backend_store.run_columns`).
Dataset inputs come from ``inputs``, ``datasets`` and ``input_tags``.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlflow_spark_tools.backend_store.connection import BackendDatabase
from mlflow_spark_tools.backend_store.run_columns import info_columns, pivot_numbered
from mlflow_spark_tools.backend_store.schema import DEFAULT_WORKSPACE, has_workspaces, schema_revision
from mlflow_spark_tools.core.private_apis import request_workspace
from mlflow_spark_tools.errors import ExperimentNotFoundError
from mlflow_spark_tools.runs.columns import METRIC, PARAM, TAG
from mlflow_spark_tools.runs.run_batches import (
    CONTEXT_TAG,
    DATASET_FIELDS,
    DATASET_INPUT,
    INPUTS_COLUMN,
    concat_pages,
)

log = logging.getLogger(__name__)

IDS_PER_QUERY = 500
# a read of fewer runs than this share of the store's goes by run id (see _entry_queries)
BY_ID_SHARE = 0.2
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_EXPERIMENT_ID = re.compile(r"^[0-9]{1,18}$")

RUN_ROW = pa.schema([
    ("run_id", pa.string()), ("experiment_id", pa.int64()), ("name", pa.string()), ("status", pa.string()),
    ("lifecycle_stage", pa.string()), ("user_id", pa.string()), ("start_time", pa.int64()),
    ("end_time", pa.int64()), ("artifact_uri", pa.string()),
])
RUN_KEY_ROW = pa.schema([("start_key", pa.int64()), ("run_id", pa.string())])
TEXT_ENTRY = pa.schema([("run_id", pa.string()), ("key", pa.string()), ("value", pa.string())])
METRIC_ENTRY = pa.schema([("run_id", pa.string()), ("key", pa.string()), ("value", pa.float64()),
                          ("is_nan", pa.bool_())])
INPUT_ROW = pa.schema([
    ("run_id", pa.string()), ("input_uuid", pa.string()), ("dataset_uuid", pa.string()), ("name", pa.string()),
    ("digest", pa.string()), ("source_type", pa.string()), ("source", pa.string()),
])
WORKSPACE_ROW = pa.schema([("workspace", pa.string())])
DATASET_DOCUMENTS = pa.schema([("dataset_uuid", pa.string()), ("dataset_schema", pa.string()),
                               ("dataset_profile", pa.string())])
INPUT_TAG = pa.schema([("input_uuid", pa.string()), ("key", pa.string()), ("value", pa.string())])
EXPERIMENT_ROW = pa.schema([("experiment_id", pa.int64()), ("name", pa.string()),
                            ("lifecycle_stage", pa.string()), ("artifact_location", pa.string())])

# params, latest metrics and tags: (kind, the select of the long form, its schema, its values
# as the API sends them: NaN where is_nan; a tag stored with a NULL value as "")
_ENTRIES: tuple[tuple[str, str, pa.Schema, Callable[[pa.RecordBatch], pa.Array]], ...] = (
    (PARAM, "SELECT x.run_uuid, x.key, x.value FROM params x", TEXT_ENTRY, lambda batch: batch.column(2)),
    (METRIC, "SELECT x.run_uuid, x.key, x.value, x.is_nan FROM latest_metrics x", METRIC_ENTRY,
     lambda batch: pc.if_else(pc.fill_null(batch.column(3), False), math.nan, batch.column(2))),
    (TAG, "SELECT x.run_uuid, x.key, x.value FROM tags x", TEXT_ENTRY,
     lambda batch: pc.fill_null(batch.column(2), "")),
)
ACTIVE = "r.lifecycle_stage = 'active'"
_START = "COALESCE(r.start_time, -1)"  # the chunks' order: a run may lack a start time
ANY_STAGE = "r.lifecycle_stage IN ('active', 'deleted')"


@dataclass(frozen=True)
class ExperimentRow:
    experiment_id: str
    name: str
    lifecycle_stage: str
    artifact_location: str | None


@dataclass(frozen=True)
class _Selection:
    """Which runs of an experiment a read takes: a WHERE clause over ``runs r`` and its
    parameters."""

    where: str
    params: tuple[object, ...]


class DatabaseRunReader:
    """Reads runs of experiments from an MLflow backend database.

    Args:
        db: the read-only connection (its schema revision is checked here).
        workspace: the MLflow workspace whose experiments are read, in a database with
            workspaces (MLflow 3.17 on); None: the one MLflow's client would send to a server,
            ``MLFLOW_WORKSPACE`` else ``default``, so that the database source sees the
            experiments the REST source sees.
    """

    def __init__(self, db: BackendDatabase, workspace: str | None = None) -> None:
        self.db = db
        self.revision = schema_revision(db)
        self.workspace = ((workspace or request_workspace() or DEFAULT_WORKSPACE).strip()
                          if has_workspaces(self.revision) else None)
        self._on_runs: Callable[[int], None] | None = None
        self._store_run_count: int | None = None

    @property
    def on_runs(self) -> Callable[[int], None] | None:
        """Told how many runs each read brought (the build's progress)."""
        return self._on_runs

    @on_runs.setter
    def on_runs(self, callback: Callable[[int], None] | None) -> None:
        self._on_runs = callback

    # ---- experiments -----------------------------------------------------------------------

    def _experiments(self, where: str, params: tuple[object, ...]) -> list[ExperimentRow]:
        if self.workspace is not None:
            where, params = f"{where} AND e.workspace = ?", (*params, self.workspace)
        table = self.db.table(
            "SELECT e.experiment_id, e.name, e.lifecycle_stage, e.artifact_location FROM experiments e "
            f"WHERE {where} ORDER BY e.experiment_id", params, EXPERIMENT_ROW)
        return [ExperimentRow(str(row["experiment_id"]), row["name"], row["lifecycle_stage"],
                              row["artifact_location"]) for row in table.to_pylist()]

    def _where(self) -> str:
        return (f"backend store {self.db.description}" if self.workspace is None
                else f"backend store {self.db.description} (workspace {self.workspace!r})")

    def _elsewhere(self, where: str, params: tuple[object, ...]) -> str:
        """What to do when an experiment is in another workspace of the database."""
        if self.workspace is None:
            return ""
        found = self.db.table(f"SELECT e.workspace FROM experiments e WHERE {where}", params, WORKSPACE_ROW)
        others = sorted({str(w) for w in found.column(0).to_pylist()} - {self.workspace})
        if not others:
            return ""
        return (f" It is in workspace {', '.join(repr(w) for w in others)}: set MLFLOW_WORKSPACE={others[0]} "
                f"to build the experiments of that workspace, as with MLflow's client.")

    def experiment_by_id(self, experiment_id: str) -> ExperimentRow:
        if not _EXPERIMENT_ID.match(str(experiment_id)):
            raise ExperimentNotFoundError(
                f"Experiment id {experiment_id!r} is not in backend store {self.db.description} "
                f"(MLflow's experiment ids there are integers).")
        found = self._experiments("e.experiment_id = ?", (int(experiment_id),))
        if not found:
            raise ExperimentNotFoundError(
                f"Experiment id {experiment_id!r} is not in {self._where()}."
                + self._elsewhere("e.experiment_id = ?", (int(experiment_id),)))
        return found[0]

    def experiment_by_name(self, name: str) -> ExperimentRow:
        found = self._experiments("e.name = ?", (name,))
        if not found:
            raise ExperimentNotFoundError(f"Experiment {name!r} is not in {self._where()}."
                                          + self._elsewhere("e.name = ?", (name,)))
        return found[0]

    def all_experiments(self) -> list[ExperimentRow]:
        """Every active experiment (of the workspace, in a database with workspaces)."""
        return self._experiments("e.lifecycle_stage = 'active'", ())

    # ---- runs ------------------------------------------------------------------------------

    def iter_all(self, experiment_id: str, *, include_deleted: bool = False,
                 chunk_runs: int | None = None) -> Iterator[pa.Table]:
        """Every run of the experiment in tables of at most ``chunk_runs`` runs (one table
        when None; at least one, empty for an experiment without runs).

        The chunks follow the runs' start order (then run id), each one after the last run of
        the one before, so that no query holds more than a chunk's runs: stores write a run's
        rows as it runs, so start order reads them with locality (run id order alone made a
        200,000-run sqlite read 2.5 times slower)."""
        stage = ANY_STAGE if include_deleted else ACTIVE
        everything = _Selection(f"r.experiment_id = ? AND {stage}", (int(experiment_id),))
        if chunk_runs is None:
            yield self._read(everything)
            return
        of_runs = int(self.db.scalar(f"SELECT count(*) FROM runs r WHERE {everything.where}", everything.params) or 0)
        if of_runs > chunk_runs and not self._by_id(of_runs):
            yield from self._read_spilled(everything, chunk_runs)
            return
        after: tuple[int, str] | None = None
        while True:
            where, params = everything.where, everything.params
            if after is not None:
                where = f"{where} AND ({_START} > ? OR ({_START} = ? AND r.run_uuid > ?))"
                params = (*params, after[0], after[0], after[1])
            ids = self.db.table(f"SELECT {_START}, r.run_uuid FROM runs r WHERE {where} "
                                f"ORDER BY {_START}, r.run_uuid LIMIT {int(chunk_runs)}", params, RUN_KEY_ROW)
            if ids.num_rows == 0:
                if after is None:
                    yield concat_pages([])
                return
            last = (ids["start_key"][-1].as_py(), ids["run_id"][-1].as_py())
            yield self._read(_Selection(f"{where} AND ({_START} < ? OR ({_START} = ? AND r.run_uuid <= ?))",
                                        (*params, last[0], last[0], last[1])), of_runs)
            if ids.num_rows < chunk_runs:
                return
            after = last

    def fetch_recent(self, experiment_id: str, since_ms: int, *, include_deleted: bool = False) -> pa.Table:
        """Runs that ended or started at or after ``since_ms``, and every deleted run: the runs
        the REST source's three searches return."""
        stage = ANY_STAGE if include_deleted else ACTIVE
        return self._read(_Selection(
            f"r.experiment_id = ? AND (({stage} AND (r.end_time >= ? OR r.start_time >= ?)) "
            "OR r.lifecycle_stage = 'deleted')",
            (int(experiment_id), int(since_ms), int(since_ms))))

    def count_runs(self, experiment_id: str, *, include_deleted: bool = False) -> int | None:
        """How many runs the experiment has in the store (one indexed count)."""
        stage = ANY_STAGE if include_deleted else ACTIVE
        return int(self.db.scalar(f"SELECT count(*) FROM runs r WHERE r.experiment_id = ? AND {stage}",
                                  (int(experiment_id),)) or 0)

    def fetch_by_ids(self, experiment_id: str, run_ids: Iterable[str]) -> pa.Table:
        """The current state of the given runs (deleted ones included)."""
        ids = sorted({r for r in run_ids if _RUN_ID.match(r)})
        parts = []
        for start in range(0, len(ids), IDS_PER_QUERY):
            chunk = ids[start:start + IDS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            parts.append(self._read(_Selection(f"r.experiment_id = ? AND {ANY_STAGE} AND r.run_uuid IN ({marks})",
                                               (int(experiment_id), *chunk))))
        return concat_pages(parts)

    # ---- one read ----------------------------------------------------------------------------

    def _read(self, selection: _Selection, of_runs: int = 0) -> pa.Table:
        """The selected runs; ``of_runs``: how many runs the whole read takes (a chunk's read
        is part of a bigger one), which says how entries are read (:meth:`_entry_queries`)."""
        runs = self.db.table(
            "SELECT r.run_uuid, r.experiment_id, r.name, r.status, r.lifecycle_stage, r.user_id, r.start_time, "
            f"r.end_time, r.artifact_uri FROM runs r WHERE {selection.where} ORDER BY r.start_time, r.run_uuid",
            selection.params, RUN_ROW)
        if runs.num_rows == 0:
            return concat_pages([])
        run_ids = runs["run_id"].combine_chunks()
        queries = self._entry_queries(selection, run_ids, max(of_runs, len(run_ids)))
        columns: dict[str, pa.Array] = {}
        for kind, select, schema, values_of in _ENTRIES:
            columns.update(self._pivoted(queries(select), schema, run_ids, kind, values_of))
        return self._assembled(runs, columns, selection)

    def _assembled(self, runs: pa.Table, columns: dict[str, pa.Array], selection: _Selection) -> pa.Table:
        """The run table of run rows, their pivoted entry columns and their dataset inputs."""
        table = info_columns(runs, columns)
        for name in sorted(columns):
            table = table.append_column(name, columns[name])
        table = table.append_column(INPUTS_COLUMN, self._inputs(runs["run_id"].combine_chunks(), selection))
        if self._on_runs is not None:
            self._on_runs(table.num_rows)
        return table

    def _entry_queries(self, selection: _Selection, run_ids: pa.Array,
                       of_runs: int) -> Callable[[str], list[tuple[str, tuple[object, ...]]]]:
        """How the params, latest metrics and tags of the selected runs are read.

        When the read takes few of the store's runs (``of_runs``, under :data:`BY_ID_SHARE`
        of them), by run id, :data:`IDS_PER_QUERY` per query, which the run id indexes answer.
        Else in one query joined with ``runs`` by the selection. PostgreSQL plans that join as
        a scan of the whole entry table whatever the share: reading 10,000 runs of a
        1,000,000-run store took 3 times as long that way.
        """
        if self._by_id(of_runs):
            ids = run_ids.to_pylist()
            chunks = [tuple(ids[i:i + IDS_PER_QUERY]) for i in range(0, len(ids), IDS_PER_QUERY)]
            return lambda select: [(f"{select} WHERE x.run_uuid IN ({', '.join('?' * len(chunk))})", chunk)
                                   for chunk in chunks]
        return lambda select: [(f"{select} JOIN runs r ON r.run_uuid = x.run_uuid WHERE {selection.where}",
                                selection.params)]

    def _by_id(self, of_runs: int) -> bool:
        """Whether a read of ``of_runs`` runs reads their entries by run id."""
        return of_runs < self._store_runs() * BY_ID_SHARE

    def _read_spilled(self, selection: _Selection, chunks_of: int) -> Iterator[pa.Table]:
        """The selected runs in tables of ``chunks_of`` runs (in start order), each entry table
        read in one query joined with ``runs``, as for a whole read: the runs' rows and their
        entries are spilled to local Arrow files, the entries per chunk as they stream, and
        each chunk is then pivoted from its files. A join per chunk would scan the entry tables
        once per chunk, where this scans them once in all (a 200,000-run sqlite build: 17.8 s
        instead of 28.8 s); the driver holds a chunk's entries and the map of run ids to their
        positions (each answer streams: see :mod:`~mlflow_spark_tools.backend_store.connection`)."""
        with tempfile.TemporaryDirectory(prefix="mlflow-spark-tools-runs-") as folder:
            spill = Path(folder)
            position_of: dict[str, int] = {}
            with pa.OSFile(str(spill / "runs.arrow"), "wb") as sink, pa.ipc.new_file(sink, RUN_ROW) as writer:
                for batch in self.db.batches(
                        "SELECT r.run_uuid, r.experiment_id, r.name, r.status, r.lifecycle_stage, r.user_id, "
                        f"r.start_time, r.end_time, r.artifact_uri FROM runs r WHERE {selection.where} "
                        f"ORDER BY {_START}, r.run_uuid", selection.params, RUN_ROW):
                    for run_id in batch.column(0).to_pylist():
                        position_of[run_id] = len(position_of)
                    writer.write_batch(batch)
            for kind, select, schema, values_of in _ENTRIES:
                self._spill_entries(spill, kind, select, schema, values_of, selection, position_of, chunks_of)
            del position_of
            runs = pa.ipc.open_file(pa.memory_map(str(spill / "runs.arrow"))).read_all()
            for number, start in enumerate(range(0, max(1, runs.num_rows), chunks_of)):
                chunk = runs.slice(start, chunks_of)
                columns: dict[str, pa.Array] = {}
                for kind, *_ in _ENTRIES:
                    path = spill / f"{kind}-{number}.arrow"
                    if not path.exists():
                        continue
                    entries = pa.ipc.open_file(pa.memory_map(str(path))).read_all().combine_chunks()
                    encoded = entries["key"].combine_chunks().dictionary_encode()
                    columns.update(pivot_numbered(
                        chunk.num_rows, encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False),
                        entries["position"].to_numpy() - start, entries["value"].combine_chunks(), kind))
                first, last = chunk.slice(0, 1).to_pylist()[0], chunk.slice(chunk.num_rows - 1, 1).to_pylist()[0]
                bounds = [_coalesced(first["start_time"]), first["run_id"], _coalesced(last["start_time"]),
                          last["run_id"]]
                within = _Selection(
                    f"{selection.where} AND ({_START} > ? OR ({_START} = ? AND r.run_uuid >= ?)) "
                    f"AND ({_START} < ? OR ({_START} = ? AND r.run_uuid <= ?))",
                    (*selection.params, bounds[0], bounds[0], bounds[1], bounds[2], bounds[2], bounds[3]))
                yield self._assembled(chunk, columns, within)

    def _spill_entries(self, spill: Path, kind: str, select: str, schema: pa.Schema,
                       values_of: Callable[[pa.RecordBatch], pa.Array], selection: _Selection,
                       position_of: dict[str, int], chunks_of: int) -> None:
        """The long-form entries of one table, each row with its run's position, written to the
        file of its run's chunk (``<kind>-<chunk>.arrow``)."""
        writers: dict[int, tuple[pa.NativeFile, pa.ipc.RecordBatchFileWriter]] = {}
        try:
            for batch in self.db.batches(f"{select} JOIN runs r ON r.run_uuid = x.run_uuid WHERE {selection.where}",
                                         selection.params, schema):
                runs = batch.column(0).dictionary_encode()
                found = np.array([position_of.get(r, -1) for r in runs.dictionary.to_pylist()], dtype=np.int64)
                position = found[runs.indices.to_numpy(zero_copy_only=False)] if len(found) else found
                rows = pa.table({"position": position, "key": batch.column(1), "value": values_of(batch)})
                rows = rows.filter(pa.array(position >= 0))  # a run outside the selection (none)
                numbers = rows["position"].to_numpy() // chunks_of
                for number in np.unique(numbers).tolist():
                    part = rows.filter(pa.array(numbers == number))
                    if number not in writers:
                        sink = pa.OSFile(str(spill / f"{kind}-{number}.arrow"), "wb")
                        writers[number] = (sink, pa.ipc.new_file(sink, part.schema))
                    writers[number][1].write_table(part)
        finally:
            for sink, writer in writers.values():
                writer.close()
                sink.close()

    def _store_runs(self) -> int:
        """How many runs the store holds (counted once)."""
        if self._store_run_count is None:
            self._store_run_count = int(self.db.scalar("SELECT count(*) FROM runs") or 0)
        return self._store_run_count

    def _pivoted(self, queries: list[tuple[str, tuple[object, ...]]], schema: pa.Schema, run_ids: pa.Array,
                 kind: str, values_of: Callable[[pa.RecordBatch], pa.Array]) -> dict[str, pa.Array]:
        """One column per key of the long-form answers of ``queries`` (run id, key, value...),
        aligned with ``run_ids``. Each record batch is reduced to (run position, key number,
        value) as it arrives, so the run ids and keys of the long form are never all held."""
        keys: dict[str, int] = {}
        positions, key_numbers, values = [], [], []
        # one mapping of run ids to positions for every batch (an Arrow set lookup would hash
        # all the run ids again for each batch); each batch looks up its distinct runs only
        position_of = {run_id: i for i, run_id in enumerate(run_ids.to_pylist())}
        for batch in (b for sql, params in queries for b in self.db.batches(sql, params, schema)):
            runs = batch.column(0).dictionary_encode()
            found = np.array([position_of.get(r, -1) for r in runs.dictionary.to_pylist()], dtype=np.int64)
            position = found[runs.indices.to_numpy(zero_copy_only=False)] if len(found) else found
            if (position < 0).any():  # a run outside the selection (none, for a join on it)
                keep = pa.array(position >= 0)
                batch, position = batch.filter(keep), position[position >= 0]
            encoded = batch.column(1).dictionary_encode()
            numbers = np.array([keys.setdefault(k, len(keys)) for k in encoded.dictionary.to_pylist()],
                               dtype=np.int32)
            key_numbers.append(numbers[encoded.indices.to_numpy(zero_copy_only=False)])
            positions.append(position)
            values.append(values_of(batch))
        if not keys:
            return {}
        return pivot_numbered(len(run_ids), list(keys), np.concatenate(key_numbers), np.concatenate(positions),
                              pa.concat_arrays(values), kind)

    def _inputs(self, run_ids: pa.Array, selection: _Selection) -> pa.Array:
        """Each run's dataset inputs (a list per run, in ``run_ids`` order), ordered by dataset
        name, digest and context; each input's tags by key."""
        of_runs = ("JOIN runs r ON r.run_uuid = i.destination_id "
                   f"WHERE i.source_type = 'DATASET' AND i.destination_type = 'RUN' AND {selection.where}")
        rows = self.db.table(
            "SELECT i.destination_id, i.input_uuid, i.source_id, d.name, d.digest, d.dataset_source_type, "
            f"d.dataset_source FROM inputs i JOIN datasets d ON d.dataset_uuid = i.source_id {of_runs}",
            selection.params, INPUT_ROW)
        per_run: dict[str, list[dict[str, object]]] = {}
        if rows.num_rows:
            # each dataset's schema and profile (up to 16 MB) read once, however many inputs use it
            documents = {row["dataset_uuid"]: row for row in self.db.table(
                "SELECT d.dataset_uuid, d.dataset_schema, d.dataset_profile FROM datasets d "
                f"WHERE d.dataset_uuid IN (SELECT i.source_id FROM inputs i {of_runs})", selection.params,
                DATASET_DOCUMENTS).to_pylist()}
            tag_rows = self.db.table(
                f"SELECT t.input_uuid, t.name, t.value FROM input_tags t JOIN inputs i ON i.input_uuid = t.input_uuid "
                f"{of_runs}", selection.params, INPUT_TAG)
            tags: dict[str, list[dict[str, str]]] = {}
            for tag in sorted(tag_rows.to_pylist(), key=lambda t: (t["input_uuid"], t["key"])):
                tags.setdefault(tag["input_uuid"], []).append({"key": tag["key"], "value": tag["value"] or ""})
            for row in rows.to_pylist():
                document = documents.get(row["dataset_uuid"]) or {}
                row["schema"], row["profile"] = document.get("dataset_schema"), document.get("dataset_profile")
                input_tags = tags.get(row["input_uuid"], [])
                context = next((t["value"] for t in input_tags if t["key"] == CONTEXT_TAG), None)
                entry = {**{name: row.get(name) for name in DATASET_FIELDS}, "context": context, "tags": input_tags}
                per_run.setdefault(row["run_id"], []).append(entry)
            for entries in per_run.values():
                entries.sort(key=lambda e: (str(e["name"]), str(e["digest"]), str(e["context"])))
        return pa.array([per_run.get(run_id, []) for run_id in run_ids.to_pylist()], pa.list_(DATASET_INPUT))


def _coalesced(start_time: object) -> int:
    """A run's start time as the chunks are ordered by it (:data:`_START`)."""
    return -1 if start_time is None else int(start_time)  # type: ignore[call-overload]
