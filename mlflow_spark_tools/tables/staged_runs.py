"""Runs staged in Spark chunk by chunk, for full builds of experiments bigger than one chunk.

Each chunk of fetched runs (a page table: run info columns and one raw column per key, as
:func:`~mlflow_spark_tools.runs.run_batches.runs_to_table` makes them) is appended to a staging
table as it arrives, and only what the final table needs to know of each key is kept in the
driver: how many runs have it and, for a param, which types all its values parse as (the
rules of :mod:`~mlflow_spark_tools.tables.param_types`). In the staging table a key's column is
named by its number (``k0``, ``k1``, ... in the order the keys first come; a chunk with new
keys adds columns), so that any key can be staged whatever its characters. After the last
chunk, one projection of the staging table names, types and orders the columns as
:meth:`ArrowRunRefresh.shape <mlflow_spark_tools.tables.arrow_refresh.ArrowRunRefresh.shape>`
does in Arrow: the same names (:class:`~mlflow_spark_tools.runs.columns.ColumnNamer`, given
the same keys) and the same types (the param strings cast inside Spark).
The driver holds one chunk at a time, however many runs the experiment has.
"""

from __future__ import annotations

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
from mlflow_spark_tools.tables.param_types import KeyStats

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

_INFO_DDL = ", ".join(f"{quote(name)} {data_type}" for name, data_type in INFO_COLUMNS)


def _raw_type(kind: str) -> tuple[pa.DataType, str]:
    """A key's values as fetched: strings for params and tags, doubles for metrics."""
    if kind == PARAM:
        return pa.string(), "string"
    data_type = KIND_TYPES[kind]
    return param_types.ARROW_TYPES[data_type], data_type


class StagedRuns:
    """Appends chunks of runs to the staging table ``staging``, then gives the table's columns.

    Args:
        db: the database of the staging table.
        staging: its name (replaced by the first chunk; :meth:`drop` removes it).
    """

    def __init__(self, db: Database, staging: str) -> None:
        self.db = db
        self.staging = staging
        self.keys: dict[tuple[str, str], KeyStats] = {}
        self.numbers: dict[tuple[str, str], int] = {}  # in the order the keys first came: k0, k1, ...
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
            stats = self.keys.get(kind_key)
            if stats is None:
                stats = self.keys[kind_key] = KeyStats(*kind_key)
                self.numbers[kind_key] = len(self.numbers)
            stats.add(chunk[name], param=stats.kind == PARAM)
            columns[self._column(kind_key)] = chunk[name]
        # every key column staged so far, in number order, so that each chunk's columns extend
        # the staging table's: a chunk without a key holds nulls in its column
        staged = [(self._column(kind_key), _raw_type(kind_key[0])) for kind_key in self.keys]
        arrays = [chunk[name] for name in INFO_SCHEMA.names]
        arrays += [columns.get(column, pa.nulls(n, raw[0])) for column, raw in staged]
        data = pa.Table.from_arrays(arrays, names=[*INFO_SCHEMA.names, *(column for column, _ in staged)])
        schema = ", ".join([_INFO_DDL, *(f"{column} {raw[1]}" for column, raw in staged)])
        self.db.write_arrow(data, schema, self.staging, ("run_id", "start_time", "end_time"),
                            append=self.chunks > 0, merge_schema=True)
        self.runs += n
        self.chunks += 1

    def _column(self, kind_key: tuple[str, str]) -> str:
        """The staging column of a key: ``k`` and its number, in the order the keys first came."""
        return f"k{self.numbers[kind_key]}"

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
            value = F.col(self._column((staged.kind, staged.key)))
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
