"""The backend database reader: URIs, the schema revisions it reads, the pivot of long-form
entries into columns, cut histories, and credentials kept out of messages."""

from __future__ import annotations

import math
import re
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest

from mlflow_spark_tools.backend_store.connection import (
    BackendDatabase,
    DatabaseError,
    _libpq_uri,
    dialect_of,
    sql_literal,
    sqlite_path,
)
from mlflow_spark_tools.backend_store.history_reader import DatabaseHistoryReader
from mlflow_spark_tools.backend_store.run_columns import pivot
from mlflow_spark_tools.backend_store.schema import KNOWN_REVISIONS
from mlflow_spark_tools.core.redaction import redact
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.runs.run_batches import raw_name


def test_dialects_and_sqlite_paths():
    assert dialect_of("postgresql+psycopg2://u:p@h/db") == "postgresql"
    assert dialect_of("postgres://h/db") == "postgresql"
    assert dialect_of("mysql+pymysql://h/db") == "mysql"
    assert sqlite_path("sqlite:////abs/my%20dir/mlflow.db") == "/abs/my dir/mlflow.db"
    assert sqlite_path("sqlite:///rel/mlflow.db") == "rel/mlflow.db"
    for bad in ("", "mlflow.db", "sqlite:///:memory:", "sqlite://host/x.db"):
        with pytest.raises(UsageError):
            dialect_of(bad) if ":" not in bad else sqlite_path(bad)


def test_postgresql_sessions_are_read_only_and_keep_their_options():
    uri = _libpq_uri("postgresql+psycopg2://me:s%40cret@db:5432/mlflow?sslmode=require&options=-c%20search_path%3Dml")
    assert uri.startswith("postgresql://me:s%40cret@db:5432/mlflow?")
    assert "sslmode=require" in uri
    options = re.search(r"options=([^&]*)", uri).group(1)
    assert "search_path" in options.replace("%3D", "=") and "default_transaction_read_only" in options.replace(
        "%3D", "=")
    assert options.replace("%3D", "=").endswith("standard_conforming_strings=on")  # after the user's options


def test_sql_literals_quote_strings_and_refuse_what_they_cannot_write():
    assert sql_literal(None) == "NULL" and sql_literal(True) == "TRUE" and sql_literal(-12) == "-12"
    assert sql_literal("it's") == "'it''s'" and sql_literal("a\\b") == "'a\\b'"
    with pytest.raises(UsageError, match="NUL"):
        sql_literal("a\x00b")
    with pytest.raises(TypeError):
        sql_literal(1.5)


def test_known_revisions_follow_the_installed_mlflow_migrations():
    """Every migration of the installed MLflow from the first known revision on is listed, in
    order: an MLflow upgrade that adds migrations fails here until they are checked."""
    import mlflow.store.db_migrations.versions as versions

    installed = {}
    for path in Path(versions.__file__).parent.glob("*.py"):
        text = path.read_text()
        found = re.search(r'^revision\s*=\s*"([0-9a-f]+)"', text, re.M)
        down = re.search(r'^down_revision\s*=\s*"?([0-9a-f]+|None)"?', text, re.M)
        if found and down:
            installed[down.group(1)] = found.group(1)
    chain, revision = [], KNOWN_REVISIONS[0][0]
    while revision is not None:
        chain.append(revision)
        revision = installed.get(revision)
    known = [r for r, _ in KNOWN_REVISIONS]
    assert chain == known[:len(chain)], "the installed MLflow has migrations this package has not checked"


def test_pivot_aligns_values_with_runs_whatever_the_order_and_ignores_other_runs():
    runs = pa.array(["r1", "r2", "r3"])
    entries = pa.table({"run_id": ["r3", "r1", "zz", "r3", "r2"], "key": ["b", "a", "a", "a", "b"],
                        "value": [1.5, 2.0, 9.0, math.nan, -0.0]})
    out = pivot(runs, entries, "metric")
    assert sorted(out) == [raw_name("metric", "a"), raw_name("metric", "b")]
    a = out[raw_name("metric", "a")].to_pylist()
    assert a[0] == 2.0 and a[1] is None and math.isnan(a[2])
    assert out[raw_name("metric", "b")].to_pylist() == [None, -0.0, 1.5]
    wide = pa.table({"run_id": [f"r{i % 1000}" for i in range(3000)], "key": [f"k{i // 1000}" for i in range(3000)],
                     "value": [str(i) for i in range(3000)]})
    out = pivot(pa.array([f"r{i}" for i in range(1000)]), wide, "param")
    assert len(out) == 3 and out[raw_name("param", "k2")].to_pylist()[7] == "2007"
    assert pivot(runs, wide.slice(0, 0), "tag") == {}


def _metrics_db(path: Path, points: list[tuple]) -> str:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE metrics (key TEXT, value REAL, timestamp INTEGER, step INTEGER, is_nan INTEGER, "
                     "run_uuid TEXT)")
        conn.executemany("INSERT INTO metrics VALUES (?,?,?,?,?,?)", points)
    return f"sqlite:///{path}"


def test_histories_longer_than_the_limit_are_cut_across_batches_and_named_once(tmp_path):
    points = [("loss", float(s), 1000 + s, s, 0, "r1") for s in range(7)]
    points += [("loss", 0.0, 5, 0, 1, "r2"), ("acc", 1.0, 5, 0, 0, "r2")]
    points += [("loss", float(s), 1000 + s, s, 0, "r3") for s in range(4)]
    with BackendDatabase(_metrics_db(tmp_path / "m.db", points), batch_rows=3) as db:
        reader = DatabaseHistoryReader(db, max_points=4)
        parts = list(reader.read_tables(["r1", "r2", "r3"], None))
        assert all(p.num_rows <= 3 for p in parts)
        got = pa.concat_tables(parts)
        per_run = {}
        for row in got.to_pylist():
            per_run.setdefault((row["run_id"], row["key"]), []).append(row["step"])
        assert per_run[("r1", "loss")] == [0, 1, 2, 3]  # the first four, in step order
        assert per_run[("r3", "loss")] == [0, 1, 2, 3]  # exactly at the limit: not cut
        assert math.isnan([r for r in got.to_pylist() if r["run_id"] == "r2" and r["key"] == "loss"][0]["value"])
        assert reader.counts.truncated == [("r1", "loss", 4)]
        assert list(DatabaseHistoryReader(db).read_tables(["r2"], ["acc"]))[0]["value"].to_pylist() == [1.0]


def test_a_password_never_reaches_a_message(tmp_path):
    secret = "Pa55-w0rd-never-shown"
    with pytest.raises(DatabaseError) as caught:
        BackendDatabase(f"postgresql://reader:{secret}@127.0.0.1:1/mlflow")
    message = str(caught.value)
    assert secret not in message and "127.0.0.1" in message
    assert secret not in redact(f"driver said: password={secret} for postgresql://reader:{secret}@h/db")
    with pytest.raises(UsageError, match="no database file"):
        BackendDatabase(f"sqlite:///{tmp_path}/missing.db")


@pytest.mark.parametrize(("uri", "module", "install"), [
    ("mysql://reader:secret@127.0.0.1:1/mlflow", "MySQLdb", "pip install 'mysqlclient'"),
    ("mysql+pymysql://reader:secret@127.0.0.1:1/mlflow", "pymysql", "pip install 'pymysql'"),
    ("mssql+pyodbc://reader:secret@127.0.0.1:1/mlflow", "pyodbc", "pip install 'pyodbc'"),
])
def test_a_missing_database_driver_names_the_package_to_install(uri, module, install):
    """A driver that is not installed: the error names the package, in one line, without the
    password."""
    import importlib.util

    from mlflow_spark_tools.backend_store.connection import BackendDatabase
    from mlflow_spark_tools.errors import MissingDependencyError

    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")

    with pytest.raises(MissingDependencyError) as raised:
        BackendDatabase(uri)
    message = str(raised.value)
    assert install in message and "secret" not in message and "\n" not in message
    assert ("mysql+pymysql://" in message) == uri.startswith("mysql://")
