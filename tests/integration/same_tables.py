"""One experiment built through REST and through another source, compared cell by cell."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from mlflow_spark_tools.spark.arrow import to_arrow
from mlflow_spark_tools.tables.build import build_experiment_tables
from tests.conftest import cells_equal


def build_pair(rest_settings, other_settings, experiment_id, engine, **kwargs):
    """Build the experiment with each settings (REST first); returns both summaries."""
    rest = build_experiment_tables(rest_settings, experiment_ids=[experiment_id], engine=engine, **kwargs)
    other = build_experiment_tables(other_settings, experiment_ids=[experiment_id], engine=engine, **kwargs)
    assert rest.exit_code == 0 and other.exit_code == 0, [s.error for s in rest.summaries + other.summaries]
    return rest.summaries[0], other.summaries[0]


def table_rows(engine, database, table, order):
    """The table's rows ordered by the columns ``order``, or None when it does not exist."""
    if not engine.spark.catalog.tableExists(f"{database}.{table}"):
        return None
    columns = ", ".join(f"`{c}`" for c in order)
    return to_arrow(engine.spark.sql(f"SELECT * FROM {database}.{table} ORDER BY {columns}")).to_pylist()


def normalized(value):
    """Map columns collect as lists of pairs in an order of their own: compare them as dicts;
    lists of structs (model metrics) in a stable order."""
    if isinstance(value, list) and value and isinstance(value[0], tuple) and len(value[0]) == 2:
        return dict(value)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return sorted(value, key=repr)
    return value


def assert_same_tables(engine, experiment_id, rest_db: str, other_db: str, tables: Mapping[str, tuple[str, ...]],
                       absent: Collection[str] = ()) -> None:
    """Every table of ``tables`` (suffix -> columns that order its rows) holds the same rows,
    columns and cells in both databases; the run table's columns in ``absent`` are NULL in
    ``other_db`` (what its source does not hold)."""
    for suffix, order in tables.items():
        table = f"exp_{experiment_id}{suffix}"
        via_rest, other = table_rows(engine, rest_db, table, order), table_rows(engine, other_db, table, order)
        assert (via_rest is None) == (other is None), table
        if via_rest is None:
            continue
        assert len(via_rest) == len(other), table
        assert not via_rest or list(via_rest[0]) == list(other[0]), table  # same columns, same order
        for a, b in zip(via_rest, other):
            for column in a:
                if suffix == "" and column in absent:
                    assert b[column] is None, (table, column)
                    continue
                x, y = normalized(a[column]), normalized(b[column])
                assert cells_equal(x, y) or x == y, (table, column, a.get("run_id"), x, y)
