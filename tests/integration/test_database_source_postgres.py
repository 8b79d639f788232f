"""build-tables --source database against a real PostgreSQL backend store: an ``mlflow server``
on a PostgreSQL database this machine's binaries start, the same experiment built through REST
and straight from PostgreSQL, every table compared cell by cell, through a full build and an
incremental refresh; the role's password never printed."""

from __future__ import annotations

import sys
import uuid

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from mlflow_spark_tools.backend_store.connection import BackendDatabase
from mlflow_spark_tools.backend_store.schema import schema_revision

from .helpers import log_run
from .test_database_source import assert_same_tables, build_both, log_rich_runs, same_summary
from .test_postgres_fixture import pg_server, postgres  # noqa: F401 - the module's fixtures


@pytest.fixture(scope="module")
def backend_uri(postgres):  # noqa: F811
    return postgres.url("mlflow", driver=None)


@pytest.fixture(params=[pytest.param("adbc", marks=pytest.mark.jvm), "sqlalchemy"])
def reader_uri(request, postgres, pg_server, monkeypatch):  # noqa: F811
    """The store's URI, read through ADBC, or through SQLAlchemy and psycopg2 as where the ADBC
    driver is not installed."""
    if request.param == "sqlalchemy":
        monkeypatch.setitem(sys.modules, "adbc_driver_postgresql.dbapi", None)  # its import fails
        return postgres.url("mlflow", driver="psycopg2")
    return postgres.url("mlflow", driver=None)


def test_postgres_backend_store_builds_the_same_tables_as_rest(settings, engine, pg_server, reader_uri,  # noqa: F811
                                                                postgres, capfd):  # noqa: F811
    backend_uri = reader_uri
    with BackendDatabase(backend_uri) as db:
        assert db.reader == ("adbc" if "+" not in backend_uri else "sqlalchemy")
    client = MlflowClient(pg_server.url)
    experiment = client.create_experiment(f"pg-{uuid.uuid4().hex[:8]}")
    runs = log_rich_runs(client, pg_server.url, experiment)
    on_pg = settings.with_overrides(tracking_uri=pg_server.url)

    rest, direct = build_both(on_pg, backend_uri, experiment, engine, metric_history="all")
    assert direct.mode == "full" and same_summary(rest, direct), (rest, direct)
    assert_same_tables(engine, experiment)

    client.log_batch(runs["running"], metrics=[Metric("loss", 2.5, 1_900_000_000_000, 1)])
    client.set_terminated(runs["running"])
    log_run(client, experiment, params={"lr": 0.3, "new key": "x"}, metrics={"loss": [(4.0, 0), (3.5, 7)]})
    client.delete_run(runs["child"])
    rest, direct = build_both(on_pg, backend_uri, experiment, engine, metric_history="all")
    assert direct.mode == "incremental" and same_summary(rest, direct), (rest, direct)
    assert_same_tables(engine, experiment)
    assert postgres.password not in capfd.readouterr().out + capfd.readouterr().err


def test_a_staged_postgres_build_streams_each_entry_table_once(settings, engine, pg_server, backend_uri,  # noqa: F811
                                                                  monkeypatch):
    """An experiment bigger than a chunk is read in one streamed query per entry table, spilled
    per chunk (chunks of 3 runs here), and makes the tables REST makes."""
    from mlflow_spark_tools.backend_store import run_reader

    monkeypatch.setattr(run_reader, "BY_ID_SHARE", 0.0)
    client = MlflowClient(pg_server.url)
    experiment = client.create_experiment(f"pg-staged-{uuid.uuid4().hex[:8]}")
    log_rich_runs(client, pg_server.url, experiment)
    for i in range(5):
        log_run(client, experiment, params={"i": i}, metrics={"m": i / 3}, tags={"t": f"it's \\ {i}"})
    on_pg = settings.with_overrides(tracking_uri=pg_server.url, tables__chunk_runs=3)
    rest, direct = build_both(on_pg, backend_uri, experiment, engine)
    assert same_summary(rest, direct) and direct.row_count > 6, (rest, direct)
    assert_same_tables(engine, experiment)


@pytest.mark.parametrize("options", ["", "?options=-c%20standard_conforming_strings%3Doff"],
                         ids=["default", "user-turns-standard-strings-off"])
def test_postgres_query_values_arrive_as_written(backend_uri, options):
    """Values go into PostgreSQL queries as literals (so that answers stream): quotes,
    backslashes, placeholders and dollar signs arrive unchanged, whatever the URI's options."""
    hostile = "it's \\' OR 1=1 -- ? $1 $$x$$ \n"
    with BackendDatabase(backend_uri + options) as db:
        assert db.scalar("SELECT ? || ''", (hostile,)) == hostile
        assert db.scalar("SELECT count(*) FROM experiments WHERE name = ?", (hostile,)) == 0


def test_postgres_sessions_are_read_only(reader_uri):
    with BackendDatabase(reader_uri) as db:
        assert schema_revision(db)
        assert db.scalar("SELECT current_setting('transaction_read_only')") == "on"
        assert db.scalar("SELECT count(*) FROM runs") >= 0  # a later query's session too
        assert db.scalar("SELECT current_setting('transaction_read_only')") == "on"
        if db.reader == "adbc":  # SQLAlchemy reads through a cursor, which takes no DELETE
            with pytest.raises(Exception, match="read-only"):
                db.scalar("DELETE FROM runs")
