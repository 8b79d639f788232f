"""Printing query results as a readable table, JSON (a list of objects) or CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import unicodedata
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa

from mlflow_spark_tools.core.json_values import json_float

FORMATS = ("table", "json", "csv")


def json_value(value: Any, *, special_floats: bool = False) -> Any:
    """``value`` with what JSON cannot hold made plain: times as ISO strings, decimals as
    floats, bytes as hex; NaN and infinities as MLflow's JSON writes them (``"NaN"``), or kept
    as floats with ``special_floats`` (for YAML, which has ``.nan`` and ``.inf``)."""
    if isinstance(value, float):
        return value if special_floats else json_float(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): json_value(v, special_floats=special_floats) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v, special_floats=special_floats) for v in value]
    return value


def to_json(value: Any) -> str:
    """Indented JSON of ``value`` (see :func:`json_value`), non-ASCII characters as they are."""
    return json.dumps(json_value(value), indent=2, ensure_ascii=False, allow_nan=False)


def _cell(value: Any) -> str:
    """A cell's text: JSON for maps, lists and structs."""
    if _nested(value):
        return json.dumps(json_value(value), ensure_ascii=False, allow_nan=False)
    return _text(value)


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return repr(value) if not (math.isnan(value) or math.isinf(value)) else str(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _maps_as_dicts(value: Any, arrow_type: pa.DataType) -> Any:
    """A cell with its map values as dicts (Arrow gives a map as a list of (key, value) pairs),
    inside lists and structs too."""
    if value is None:
        return None
    if pa.types.is_map(arrow_type):
        return {k: _maps_as_dicts(v, arrow_type.item_type) for k, v in value}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return [_maps_as_dicts(v, arrow_type.value_type) for v in value]
    if pa.types.is_struct(arrow_type):
        return {f.name: _maps_as_dicts(value[f.name], f.type) for f in arrow_type}
    return value


def _nested(value: Any) -> bool:
    return isinstance(value, (dict, list))


def format_rows(table: pa.Table, fmt: str = "table", max_width: int = 60) -> str:
    """Render an Arrow table in one of :data:`FORMATS`: maps, lists and structs as JSON objects
    and arrays (in a table or CSV cell, as their JSON text)."""
    names = table.column_names
    nested = [n for n in names if pa.types.is_nested(table.schema.field(n).type)]
    rows = table.to_pylist()
    for r in rows:
        for n in nested:
            r[n] = _maps_as_dicts(r[n], table.schema.field(n).type)
    if fmt == "json":
        return to_json([{k: r[k] for k in names} for r in rows])
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        for r in rows:
            writer.writerow(["" if r[k] is None else _cell(r[k]) for k in names])
        return buffer.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    return render_table(names, [[_cell(r[k]) for k in names] for r in rows], max_width) + (
        f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})"
    )


def printable(text: str) -> str:
    r"""``text`` with every control, format and separator character written as its escape
    (``\x1b``, ``\u202e``, ``\n``): run names and values of a shared experiment reach the
    terminal through tables, and an escape sequence in them would move the cursor, rewrite
    the lines above or set the window's title; a bidirectional override would reorder the
    rows as they are shown."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char == " " else
                   char.encode("unicode_escape").decode("ascii") if unicodedata.category(char) == "Cc" else
                   f"\\u{ord(char):04x}" for char in text)


def render_table(names: Sequence[str], rows: Sequence[Sequence[str]], max_width: int = 60) -> str:
    """A plain-text grid with aligned columns; long cells are cut with an ellipsis; what is
    not printable is shown escaped (:func:`printable`)."""

    def cut(text: str) -> str:
        text = printable(text)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cut(n) for n in names]] + [[cut(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(names))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line]
    for i, row in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)
