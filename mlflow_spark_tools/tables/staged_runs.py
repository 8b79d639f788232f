"""Runs staged in Spark chunk by chunk, for full builds of experiments bigger than one chunk.

Each chunk of fetched runs (a page table: run info columns and one raw column per key, as
:func:`~mlflow_spark_tools.runs.run_batches.runs_to_table` makes them) is appended to a staging
table as it arrives, and only what the final table needs to know of each key is kept in the
driver: how many runs have it and, for a param, which types all its values parse as (the
rules of :mod:`~mlflow_spark_tools.tables.param_types`). In the staging table a key's column is
named by its number (``k0``, ``k1``, ... in the order the keys first come; a chunk with new
keys adds columns), so that any key can be staged whatever its characters. After the last
chunk, one projection of the staging table names, types and orders the columns as
:meth:`ExperimentTableBuilder._shape <mlflow_spark_tools.tables.builder.ExperimentTableBuilder._shape>`
does in Arrow: the same names (:class:`~mlflow_spark_tools.runs.columns.ColumnNamer`, given
the same keys and run counts) and the same types (the param strings cast inside Spark).
The driver holds one chunk at a time, however many runs the experiment has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from mlflow_spark_tools.core.identifiers import quote
from mlflow_spark_tools.runs.columns import (
    INFO_COLUMNS,
    KIND_TYPES,
    PARAM,
    ColumnNamer,
    ColumnSpec,
    info_specs,
    sort_specs,
)
from mlflow_spark_tools.runs.run_batches import INFO_SCHEMA, raw_name, split_raw_name
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.tables import param_types

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

_INFO_DDL = ", ".join(f"{quote(name)} {data_type}" for name, data_type in INFO_COLUMNS)


@dataclass
class StagedKey:
    """One key of the staged runs: its staging column, its run count and, for a param, the
    types all its values parse as so far."""

    kind: str
    key: str
    number: int
    runs: int = 0
    fits: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(param_types.TYPE_ORDER, True))

    @property
    def column(self) -> str:
        return f"k{self.number}"

    @property
    def raw_type(self) -> tuple[pa.DataType, str]:
        """The key's values as fetched: strings for params and tags, doubles for metrics."""
        if self.kind == PARAM:
            return pa.string(), "string"
        data_type = KIND_TYPES[self.kind]
        return param_types.ARROW_TYPES[data_type], data_type

    def inferred_type(self) -> str:
        """The narrowest type every value parses as (:func:`param_types.infer`)."""
        if self.runs == 0:
            return param_types.STRING
        return next((t for t in param_types.TYPE_ORDER if self.fits[t]), param_types.STRING)


class StagedRuns:
    """Appends chunks of runs to the staging table ``staging``, then gives the table's columns.

    Args:
        db: the database of the staging table.
        staging: its name (replaced by the first chunk; :meth:`drop` removes it).
    """

    def __init__(self, db: Database, staging: str) -> None:
        self.db = db
        self.staging = staging
        self.keys: dict[tuple[str, str], StagedKey] = {}
        self.runs = 0
        self.chunks = 0

    def add(self, chunk: pa.Table) -> None:
        """Stage one chunk of runs (the run ids of all chunks are distinct)."""
        n = chunk.num_rows
        columns: dict[str, pa.ChunkedArray | pa.Array] = {}
        for name in chunk.column_names:
            kind_key = split_raw_name(name)
            if kind_key is None:
                continue
            staged = self.keys.get(kind_key)
            if staged is None:
                staged = self.keys[kind_key] = StagedKey(*kind_key, number=len(self.keys))
            values = chunk[name]
            having = n - values.null_count
            staged.runs += having
            if staged.kind == PARAM and having:
                for data_type in param_types.TYPE_ORDER:
                    if staged.fits[data_type]:
                        staged.fits[data_type] = param_types.fits(values, data_type)
            columns[staged.column] = values
        # every key column staged so far, in number order, so that each chunk's columns extend
        # the staging table's: a chunk without a key holds nulls in its column
        ordered = sorted(self.keys.values(), key=lambda k: k.number)
        arrays = [chunk[name] for name in INFO_SCHEMA.names]
        arrays += [columns.get(k.column, pa.nulls(n, k.raw_type[0])) for k in ordered]
        data = pa.Table.from_arrays(arrays, names=[*INFO_SCHEMA.names, *(k.column for k in ordered)])
        schema = ", ".join([_INFO_DDL, *(f"{k.column} {k.raw_type[1]}" for k in ordered)])
        self.db.write_arrow(data, schema, self.staging, ("run_id", "start_time", "end_time"),
                            append=self.chunks > 0, merge_schema=True)
        self.runs += n
        self.chunks += 1

    def frame(self, namer: ColumnNamer) -> tuple[DataFrame, list[ColumnSpec]]:
        """The staged runs with the table's columns, in table order, and their specs; new keys
        get named by ``namer``, params typed as all their values parse (inferred afresh, as a
        full build does)."""
        from pyspark.sql import functions as F

        ordered = sorted(self.keys.values(), key=lambda k: raw_name(k.kind, k.key))
        namer.assign([(k.kind, k.key) for k in ordered])
        expressions = {name: F.col(name) for name, _ in INFO_COLUMNS}
        specs = info_specs()
        for staged in ordered:
            name = namer.name(staged.kind, staged.key)
            value = F.col(staged.column)
            if staged.kind == PARAM:
                data_type = staged.inferred_type()
                if data_type != param_types.STRING:
                    value = value.cast(data_type)
            else:
                data_type = KIND_TYPES[staged.kind]
            expressions[name] = value.alias(name)
            specs.append(ColumnSpec(name, staged.kind, staged.key, data_type))
        specs = sort_specs(specs)
        runs = self.db.spark.table(self.db.name(self.staging))
        return runs.select(*(expressions[s.column_name] for s in specs)), specs

    def drop(self) -> None:
        self.db.drop(self.staging)
