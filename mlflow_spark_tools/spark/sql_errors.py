"""Engine SQL errors as one line a user can act on.

Engines word the same mistake differently: Sail says ``attribute
ObjectName([Identifier("_m_x")]) is missing from the schema``, Spark says
``[UNRESOLVED_COLUMN.WITH_SUGGESTION] A column ... cannot be resolved`` followed by the query
plan. :func:`describe_sql_error` names the problem in the project's words (a column, a table, a
function, the syntax), suggests close column names of the tables the query reads, and keeps
only the first line of what is left.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable

_SAIL_MISSING_COLUMN = re.compile(r'attribute ObjectName\(\[(?P<parts>.*?)\]\) is missing')
_SAIL_IDENTIFIER = re.compile(r'Identifier\("(?P<name>(?:[^"\\]|\\.)*)"\)')
_SPARK_MISSING_COLUMN = re.compile(r"\[UNRESOLVED_COLUMN[^\]]*\][^`]*`(?P<name>[^`]+)`")
_MISSING_TABLE = re.compile(r"TABLE_OR_VIEW_NOT_FOUND\]\s*(?:Table or view not found:\s*|The table or view\s*)"
                            r"`?(?P<name>[^`\s]+)`?")
_UNKNOWN_FUNCTION = re.compile(r"(?:unknown function:\s*|UNRESOLVED_ROUTINE\][^`]*`)(?P<name>[\w.]+)")
_SAIL_SYNTAX = re.compile(r"^invalid argument: (?P<what>found .*)$")
_SPARK_SYNTAX = re.compile(r"\[PARSE_SYNTAX_ERROR\]\s*Syntax error (?P<what>.*?)\.?\s*(?:SQLSTATE|$)")
_TABLES_READ = re.compile(r"\b(?:FROM|JOIN)\s+(?P<name>`[^`]+`(?:\.`[^`]+`)*|[\w.]+)", re.IGNORECASE)
_KEY_PREFIXES = ("_p_", "_m_", "_t_")
# the query plan and error context Spark appends after the message
_SPARK_TAIL = re.compile(r"\s*(?:SQLSTATE: \w+;?|;\s*line \d+ pos \d+).*$", re.DOTALL)


def is_sql_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the engine refusing or failing a query (not a lost connection)."""
    try:
        from pyspark.errors import PySparkException
    except ImportError:  # pragma: no cover - pyspark is there whenever a query ran
        return False
    if not isinstance(exc, PySparkException):
        return False
    # a Connect server that went away is not a mistake in the query
    text = str(exc)
    return not any(marker in text for marker in ("UNAVAILABLE", "Connection refused", "failed to connect"))


def tables_read(query: str) -> list[str]:
    """The table names a query reads (after FROM and JOIN), as written, without backticks."""
    return [m.group("name").replace("`", "") for m in _TABLES_READ.finditer(query)]


def describe_sql_error(exc: BaseException, query: str,
                       columns_of: Callable[[str], Iterable[str]] | None = None) -> str:
    """One line saying what is wrong with ``query``.

    Args:
        exc: what the engine raised.
        query: the query.
        columns_of: the columns of a table by name, for suggestions (errors are ignored).
    """
    text = str(exc).strip()
    first = (text.splitlines() or [type(exc).__name__])[0]
    missing = _missing_column(text)
    if missing is not None:
        hint = _suggestions(missing, query, columns_of)
        return (f"column {missing} does not exist{hint}. The tables' exp_<id>_columns tables map each "
                "column to its key.")
    if (table := _MISSING_TABLE.search(text)) is not None:
        return (f"table or view {table.group('name')} does not exist (build experiment tables with "
                "build-tables; SHOW TABLES IN <database> lists them).")
    if (function := _UNKNOWN_FUNCTION.search(text)) is not None:
        return f"unknown function {function.group('name')}."
    if (syntax := _SAIL_SYNTAX.match(first)) is not None:
        return f"syntax error: {syntax.group('what')}."
    if (syntax := _SPARK_SYNTAX.search(first)) is not None:
        return f"syntax error {syntax.group('what')}."
    return _SPARK_TAIL.sub("", first).strip() or type(exc).__name__


def _missing_column(text: str) -> str | None:
    sail = _SAIL_MISSING_COLUMN.search(text)
    if sail is not None:
        parts = [m.group("name") for m in _SAIL_IDENTIFIER.finditer(sail.group("parts"))]
        return ".".join(parts) if parts else None
    spark = _SPARK_MISSING_COLUMN.search(text)
    return spark.group("name") if spark is not None else None


def _suggestions(missing: str, query: str, columns_of: Callable[[str], Iterable[str]] | None) -> str:
    if columns_of is None:
        return ""
    known: list[str] = []
    for table in tables_read(query):
        try:
            known.extend(columns_of(table))
        except Exception:  # a table that does not exist either: the column message is enough
            continue
    by_lower = {c.lower(): c for c in known}
    name = missing.rsplit(".", 1)[-1].lower()
    # a key written as it was logged (``acc``) names the column of that key (``_m_acc``)
    keyed = [c for c in by_lower if c[:3] in _KEY_PREFIXES and c[3:] == name]
    close = keyed or difflib.get_close_matches(name, list(by_lower), n=3, cutoff=0.8)
    return f" (did you mean {', '.join(by_lower[c] for c in close)}?)" if close else ""
