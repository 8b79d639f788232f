"""``DESCRIBE <table>`` and ``SHOW COLUMNS IN <table>`` answered from the table's schema.

The embedded engine answers neither for the Delta tables this package writes (``DESCRIBE t``
is a syntax error there, ``DESCRIBE TABLE t`` and ``SHOW COLUMNS`` give no rows). The ``sql``
command answers both itself, on every engine alike: one row per column, ``col_name``,
``data_type`` and ``comment``, where the comment of an experiment table's column is what it
holds, from ``exp_<id>_columns`` (``param lr``, ``metric val.loss``, ``run info``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pyarrow as pa

from mlflow_spark_tools.core.identifiers import validate_database, validate_table_name
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.runs.columns import INFO

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_NAME = r"(?P<name>`?[A-Za-z_]\w*`?(?:\.`?[A-Za-z_]\w*`?){0,2})"
_DESCRIBE = re.compile(rf"^\s*(?:DESCRIBE|DESC)\s+(?:TABLE\s+)?{_NAME}\s*;?\s*$", re.IGNORECASE)
_SHOW_COLUMNS = re.compile(
    rf"^\s*SHOW\s+COLUMNS\s+(?:IN|FROM)\s+{_NAME}(?:\s+(?:IN|FROM)\s+(?P<db>`?[A-Za-z_]\w*`?(?:\.`?[A-Za-z_]\w*`?)?))?"
    r"\s*;?\s*$", re.IGNORECASE)
DESCRIBE_SCHEMA = pa.schema([("col_name", pa.string()), ("data_type", pa.string()), ("comment", pa.string())])
_EXPERIMENT_TABLE = re.compile(r"^exp_[A-Za-z0-9_]+$")


def describe_query(spark: SparkSession, query: str) -> pa.Table | None:
    """The answer to ``query`` when it describes a table's columns, else None (the engine
    runs it, and says what is wrong).

    Raises:
        UsageError: the table does not exist (the embedded engine would answer ``DESCRIBE t``
            of a missing table with a syntax error).
    """
    describe, show = _DESCRIBE.match(query), _SHOW_COLUMNS.match(query)
    found = describe or show
    if found is None:
        return None
    parts = [p.strip("`") for p in found.group("name").split(".")]
    if show is not None and show.group("db"):
        if len(parts) > 1:
            return None
        parts = [p.strip("`") for p in show.group("db").split(".")] + parts
    database, table = ".".join(parts[:-1]), parts[-1]
    if database:
        validate_database(database)
    validate_table_name(table)
    name = f"{database}.{table}" if database else table
    if not spark.catalog.tableExists(name):
        raise UsageError(f"SQL failed: table or view {name} does not exist.")
    fields = spark.table(name).schema.fields
    if show is not None:
        return pa.table({"col_name": [f.name for f in fields]})
    held = _held(spark, database, table)
    return pa.Table.from_pylist([{"col_name": f.name, "data_type": f.dataType.simpleString(),
                                  "comment": held.get(f.name)} for f in fields], schema=DESCRIBE_SCHEMA)


def _held(spark: SparkSession, database: str, table: str) -> dict[str, str]:
    """What each column of an experiment table holds, from its ``_columns`` table."""
    columns = f"{database}.{table}_columns" if database else f"{table}_columns"
    if not _EXPERIMENT_TABLE.match(table) or not spark.catalog.tableExists(columns):
        return {}
    return {row["column_name"]: "run info" if row["kind"] == INFO else f"{row['kind']} {row['key']}"
            for row in spark.table(columns).collect()}
