"""Validation and quoting of identifiers that go into SQL.

Every database and table name this package puts into a SQL string passes through here, so that
a name from a flag, a config file or the tracking server can never change the statement.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mlflow_spark_tools.errors import InvalidIdentifierError

_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_EXPERIMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def validate_database(database: str) -> tuple[str, ...]:
    """Check a database name (``schema`` or ``catalog.schema``) and return its parts.

    Raises:
        InvalidIdentifierError: naming the offending part and what is allowed.
    """
    if not isinstance(database, str) or not database:
        raise InvalidIdentifierError("The database name is empty: pass e.g. --database mlflow_exp.")
    parts = tuple(database.split("."))
    if len(parts) > 2:
        raise InvalidIdentifierError(
            f"Invalid database name {database!r}: use 'schema' or 'catalog.schema'."
        )
    for part in parts:
        if not _PART.match(part):
            raise InvalidIdentifierError(
                f"Invalid database name {database!r}: {part!r} must start with a letter or "
                "underscore and contain only letters, digits and underscores."
            )
    return parts


def validate_table_name(name: str) -> str:
    """Check an unqualified table name and return it."""
    if not isinstance(name, str) or not _PART.match(name):
        raise InvalidIdentifierError(
            f"Invalid table name {name!r}: use letters, digits and underscores only."
        )
    return name


def validate_experiment_id(experiment_id: str) -> str:
    """Check an experiment id before it becomes part of a table name."""
    experiment_id = str(experiment_id).strip()
    if not _EXPERIMENT_ID.match(experiment_id):
        raise InvalidIdentifierError(
            f"Invalid experiment id {experiment_id!r}: expected digits (or letters, digits, '-' "
            "and '_')."
        )
    return experiment_id


def quote(part: str) -> str:
    """Backtick-quote one validated identifier part."""
    if "`" in part:
        raise InvalidIdentifierError(f"Identifier {part!r} contains a backtick.")
    return f"`{part}`"


def qualified_name(database: str, table: str) -> str:
    """The quoted ``database.table`` name for SQL, both parts validated."""
    parts = (*validate_database(database), validate_table_name(table))
    return ".".join(quote(p) for p in parts)


def experiment_table_name(experiment_id: str) -> str:
    """Name of the flattened table of one experiment: ``exp_<id>`` with ``-`` mapped to ``_``."""
    return "exp_" + validate_experiment_id(experiment_id).replace("-", "_")


def sql_string(value: str) -> str:
    """A SQL string literal for a value (single quotes doubled, backslashes escaped)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_strings(values: Iterable[str]) -> str:
    """The SQL string literals of ``values``, comma-separated (the inside of an ``IN (...)``)."""
    return ", ".join(sql_string(v) for v in values)
