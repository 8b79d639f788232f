import json
import math
from datetime import datetime, timezone

import pyarrow as pa

from mlflow_spark_tools.tools.output import format_rows


def _table():
    return pa.table({
        "run_id": ["a", "b"],
        "v": [1.5, math.nan],
        "t": pa.array([datetime(2026, 1, 2, tzinfo=timezone.utc), None], pa.timestamp("ms", tz="UTC")),
    })


def test_json_is_a_strict_list_of_objects():
    data = json.loads(format_rows(_table(), "json"), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert data[0]["run_id"] == "a" and data[0]["v"] == 1.5
    assert data[1]["v"] == "NaN" and data[1]["t"] is None
    assert data[0]["t"].startswith("2026-01-02T00:00:00")


def test_csv_has_a_header_and_empty_nulls():
    lines = format_rows(_table(), "csv").splitlines()
    assert lines[0] == "run_id,v,t"
    assert lines[1].startswith("a,1.5,2026-01-02")
    assert lines[2] == "b,nan,"


def test_table_is_aligned_and_counts_rows():
    text = format_rows(_table(), "table")
    lines = text.splitlines()
    assert lines[1].startswith("| run_id")
    assert len({len(line) for line in lines[:-1]}) == 1
    assert lines[-1] == "(2 rows)"


def test_json_keeps_non_ascii_text_as_it_is():
    text = format_rows(pa.table({"name": ["précision", "学习率"]}), "json")
    assert "précision" in text and "学习率" in text and "\\u" not in text


def test_maps_lists_and_structs_print_as_json():
    import json

    import pyarrow as pa

    from mlflow_spark_tools.tools.output import format_rows

    table = pa.table({
        "tags": pa.array([[("team", "ranking"), ("ü", "ö")], None], pa.map_(pa.string(), pa.string())),
        "aliases": pa.array([["champion"], []]),
        "metrics": pa.array([[{"key": "rmse", "value": float("nan")}], []]),
    })
    rows = json.loads(format_rows(table, "json"))
    assert rows[0] == {"tags": {"team": "ranking", "ü": "ö"}, "aliases": ["champion"],
                       "metrics": [{"key": "rmse", "value": "NaN"}]}
    assert rows[1] == {"tags": None, "aliases": [], "metrics": []}
    csv_text = format_rows(table, "csv").splitlines()
    assert csv_text[1] == '"{""team"": ""ranking"", ""ü"": ""ö""}","[""champion""]","[{""key"": ""rmse"", ""value"": ""NaN""}]"'
    assert '{"team": "ranking", "ü": "ö"}' in format_rows(table)


def test_terminal_control_sequences_in_cells_are_shown_escaped():
    hostile = "ok\x1b]0;owned\x07\x1b[2J\x1b[1A\u202etxt.exe\nnext"
    table = format_rows(pa.table({"run_name": [hostile, "学习率 é"]}))
    assert "\x1b" not in table and "\x07" not in table and "\u202e" not in table
    assert "ok\\x1b]0;owned\\x07\\x1b[2J\\x1b[1A\\u202etxt.exe\\nnext" in table
    assert "学习率 é" in table  # printable text stays as it is
    assert len(table.splitlines()) == 7  # the grid, one line per row, and the row count
