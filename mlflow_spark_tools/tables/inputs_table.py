"""The dataset inputs table ``<database>.exp_<id>_inputs``: one row per dataset input of a run.

Columns: ``run_id``, the dataset's ``name``, ``digest``, ``source_type``, ``source`` (the JSON
MLflow records, e.g. ``{"uri": "s3://..."}``), ``context`` (the input's ``mlflow.data.context``
tag: ``training``, ``validation``, ...), ``schema`` and ``profile`` (JSON strings, as MLflow
records them) and ``tags`` (every tag of the input, ``map<string,string>``).

The inputs come with the runs in the run search pages a build fetches anyway (no request of
their own). A full build overwrites the table (a build staged chunk by chunk stages the inputs
alike, :class:`StagedInputs`); an incremental refresh replaces, in one MERGE,
every row of the runs it re-read and removes the rows of the runs that left the run table.

A dataset's schema and profile are repeated in every input row that uses it (a profile may
hold 16 MB, and every run of a sweep may log the same dataset): rows beyond what one Spark
Connect message holds go to a staging table in slices (:meth:`Database.arrow_frame
<mlflow_spark_tools.spark.catalog.Database.arrow_frame>`), and the table is written from there
in one commit.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from mlflow_spark_tools.core.identifiers import sql_strings
from mlflow_spark_tools.runs.run_batches import concat_pages, dataset_inputs
from mlflow_spark_tools.spark.arrow import entries_schema, frame_with_maps, with_maps
from mlflow_spark_tools.spark.catalog import MAX_KEYS_NAMED, Database
from mlflow_spark_tools.tables.run_table import Refresh

INPUT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "string"),
    ("name", "string"),
    ("digest", "string"),
    ("source_type", "string"),
    ("source", "string"),
    ("context", "string"),
    ("schema", "string"),
    ("profile", "string"),
    ("tags", "map<string,string>"),
)
INPUT_STATS_COLUMNS = ("run_id", "name", "digest")


def inputs_table_name(table: str) -> str:
    return table + "_inputs"


class InputsWriter:
    """Writes the dataset inputs of fetched runs into ``<table>_inputs``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.spark = db.spark

    def write(self, table: str, runs: pa.Table, *, replace_all: bool,
              replaced_run_ids: Iterable[str] = ()) -> tuple[str, int]:
        """Write the inputs of ``runs`` (a fetched page table); returns the table's quoted name
        and the number of rows written.

        Args:
            runs: the runs whose inputs the table holds after this write.
            replace_all: the table becomes exactly these inputs (a full build); else the rows
                of ``replaced_run_ids`` are replaced by them and the others kept.
            replaced_run_ids: every run re-read (those of ``runs`` and those that left the run
                table, such as deleted runs).
        """
        target = inputs_table_name(table)
        data = dataset_inputs(runs)
        staging = target + "__slices"
        if replace_all or not self.db.exists(target):
            with self.db.arrow_frame(data, entries_schema(INPUT_COLUMNS), staging, INPUT_STATS_COLUMNS) as frame:
                self.db.overwrite(with_maps(frame, INPUT_COLUMNS, self.spark), target, INPUT_STATS_COLUMNS)
            return self.db.shown(target), data.num_rows
        replaced = sorted(set(replaced_run_ids) | set(data["run_id"].to_pylist()))
        if replaced and data.num_rows == 0:
            # the runs named when few, so that the key column's statistics narrow the read
            named = f"run_id IN ({sql_strings(replaced)})" if len(replaced) <= MAX_KEYS_NAMED else None
            if not self.db.has_rows(target, named):
                replaced = []  # no inputs before or after: no commit (most experiments log none)
        if replaced:  # else nothing changed: no commit
            view = f"__mst_inputs_{table}"
            with self.db.arrow_frame(data, entries_schema(INPUT_COLUMNS), staging, INPUT_STATS_COLUMNS) as frame:
                with_maps(frame, INPUT_COLUMNS, self.spark).createOrReplaceTempView(view)
                try:
                    self.db.replace_rows(view, target, INPUT_COLUMNS, "run_id", replaced)
                finally:
                    self.spark.catalog.dropTempView(view)
        return self.db.shown(target), data.num_rows

    def staged(self, table: str) -> StagedInputs:
        """A full build's writer of the inputs of runs that come chunk by chunk."""
        return StagedInputs(self.db, table)


class StagedInputs:
    """The dataset inputs of a full build whose runs come in chunks: each chunk's inputs are
    appended to ``<table>_inputs__staging`` (when it has any), and :meth:`finish` overwrites the
    inputs table with them in one commit."""

    def __init__(self, db: Database, table: str) -> None:
        self.db = db
        self.target = inputs_table_name(table)
        self.staging = self.target + "__staging"
        self.rows = 0

    def add(self, runs: pa.Table) -> None:
        data = dataset_inputs(runs)
        if data.num_rows == 0:
            return
        # the maps as entries here, made maps once by finish()
        self.db.write_arrow(data, entries_schema(INPUT_COLUMNS), self.staging, INPUT_STATS_COLUMNS,
                            append=self.rows > 0)
        self.rows += data.num_rows

    def finish(self) -> tuple[str, int]:
        """Overwrite the inputs table with the staged inputs; returns its quoted name and rows."""
        if self.rows:
            source = with_maps(self.db.spark.table(self.db.name(self.staging)), INPUT_COLUMNS, self.db.spark)
        else:
            source = frame_with_maps(self.db.spark, dataset_inputs(pa.table({})), INPUT_COLUMNS)
        self.db.overwrite(source, self.target, INPUT_STATS_COLUMNS)
        return self.db.shown(self.target), self.rows

    def drop(self) -> None:
        if self.rows:
            self.db.drop(self.staging)


class InputsTable:
    """``exp_<id>_inputs`` as a companion table of each refresh (:mod:`companion_tables`)."""

    index_column = "inputs_table"

    def __init__(self, db: Database) -> None:
        self.db = db
        self.writer = InputsWriter(db)

    def missing_reason(self, table: str) -> str | None:
        return None if self.db.exists(inputs_table_name(table)) else f"{inputs_table_name(table)} is missing"

    def begin(self, job: Refresh, *, full: bool) -> InputsRefresh:
        return InputsRefresh(self.writer, job.table, full)


class InputsRefresh:
    """The inputs of one refresh: one table of runs is written straight from memory; the runs of
    a full build that come in several chunks are staged chunk by chunk (:class:`StagedInputs`)."""

    def __init__(self, writer: InputsWriter, table: str, full: bool) -> None:
        self.writer = writer
        self.table = table
        self.full = full
        self.held: pa.Table | None = None
        self.staged: StagedInputs | None = None

    def add(self, runs: pa.Table) -> None:
        if not self.full:
            self.held = runs if self.held is None else concat_pages([self.held, runs])
            return
        if self.held is None and self.staged is None:
            self.held = runs
            return
        if self.staged is None:
            self.staged = self.writer.staged(self.table)
            if self.held is not None:
                self.staged.add(self.held)
            self.held = None
        self.staged.add(runs)

    def finish(self, job: Refresh) -> None:
        summary = job.summary
        if self.staged is not None:
            summary.inputs_table, summary.inputs = self.staged.finish()
            self.close()  # the staging table goes before the other companions write
            return
        runs = self.held if self.held is not None else concat_pages([])
        self.held = None
        summary.inputs_table, summary.inputs = self.writer.write(
            self.table, runs, replace_all=self.full, replaced_run_ids=job.replaced_run_ids)

    def indexed(self) -> str | None:
        return inputs_table_name(self.table)

    def close(self) -> None:
        self.held = None
        if self.staged is not None:
            staged, self.staged = self.staged, None
            staged.drop()
