"""A read-only connection to a backend database that answers queries as Arrow record batches.

The URI is the one ``mlflow server --backend-store-uri`` takes (SQLAlchemy's form):
``sqlite:////abs/path/mlflow.db``, ``postgresql://user:password@host:5432/mlflow``,
``mysql+pymysql://...``. The reader is chosen for speed:

- **sqlite** and **PostgreSQL** go through ADBC (``adbc-driver-sqlite``,
  ``adbc-driver-postgresql``): the driver hands over Arrow columns, no Python object per value.
  sqlite is opened with ``mode=ro``; PostgreSQL sessions start with
  ``default_transaction_read_only=on``, so a write is refused by the database itself.
- every other SQLAlchemy dialect (MySQL, SQL Server), and PostgreSQL where the ADBC driver is
  not installed, goes through SQLAlchemy with streamed results, one batch of rows at a time;
  its sessions are set read-only where the dialect can (MySQL, PostgreSQL).

Queries are written with ``?`` placeholders. Every reader binds them as parameters, except
ADBC's PostgreSQL driver: it answers a query with bound parameters in one piece (3,000,000
rows took it from 158 to 792 MB), and streams one without them through ``COPY`` (208 MB, and
faster). There the values are written into the query as literals (:func:`sql_literal`):
integers, and strings quoted in the session's ``standard_conforming_strings=on``. The
password of the URI is never printed: it is registered with the package's redaction, so a
driver's error that quotes it is masked too.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from mlflow_spark_tools.core.redaction import redact, redact_uri, register_secret
from mlflow_spark_tools.errors import MissingDependencyError, TrackingServerError, UsageError

log = logging.getLogger(__name__)

BATCH_ROWS = 100_000
SQLITE, POSTGRESQL = "sqlite", "postgresql"
_PLACEHOLDER = re.compile(r"\?")
EXTRA_HINT = "pip install 'mlflow-spark-tools[database]'"
# what makes a session read-only, per SQLAlchemy dialect
_READ_ONLY_SESSION = {"mysql": "SET SESSION TRANSACTION READ ONLY",
                      POSTGRESQL: "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"}


class DatabaseError(TrackingServerError):
    """The backend database could not be read (connection refused, a query failed)."""


def dialect_of(uri: str) -> str:
    """``sqlite``, ``postgresql``, ``mysql``, ... of a SQLAlchemy URI (the driver part dropped)."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    dialect = scheme.split("+", 1)[0]
    if dialect == "postgres":
        dialect = POSTGRESQL
    if not dialect or not re.fullmatch(r"[a-z][a-z0-9]*", dialect):
        raise UsageError(
            f"--backend-store-uri must be a SQLAlchemy database URI such as sqlite:////path/mlflow.db or "
            f"postgresql://user@host:5432/mlflow, got {redact_uri(uri)!r}.")
    return dialect


def sqlite_path(uri: str) -> str:
    """The file of a ``sqlite:///`` URI (``sqlite:///rel/path``, ``sqlite:////abs/path``)."""
    rest = uri.split(":", 1)[1]
    if not rest.startswith("///"):
        raise UsageError(f"A sqlite backend store URI is sqlite:///<path>, got {redact_uri(uri)!r}.")
    path = urllib.parse.unquote(rest[3:].split("?", 1)[0])
    if not path or path == ":memory:":
        raise UsageError("A sqlite backend store must be a database file, not :memory:.")
    return path


def _libpq_uri(uri: str) -> str:
    """A libpq connection URI from a SQLAlchemy PostgreSQL URI, with read-only sessions in
    which a backslash in a string literal is an ordinary character (what :func:`sql_literal`
    writes for)."""
    parts = urllib.parse.urlsplit(uri)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    options = " ".join([v for k, v in query if k == "options"]
                       + ["-c default_transaction_read_only=on", "-c standard_conforming_strings=on"])
    query = [(k, v) for k, v in query if k != "options"] + [("options", options)]
    # spaces as %20: libpq does not read "+" as a space
    return urllib.parse.urlunsplit(("postgresql", parts.netloc, parts.path,
                                    urllib.parse.urlencode(query, quote_via=urllib.parse.quote),
                                    parts.fragment))


class BackendDatabase:
    """A read-only connection to an MLflow backend database.

    Args:
        uri: the SQLAlchemy URI (credentials included; never shown).
        batch_rows: rows per Arrow record batch of a query's answer.
    """

    def __init__(self, uri: str, batch_rows: int = BATCH_ROWS) -> None:
        if not isinstance(uri, str) or not uri.strip():
            raise UsageError("--source database needs --backend-store-uri (tables.backend_store_uri).")
        self.uri = uri.strip()
        self.dialect = dialect_of(self.uri)
        self.batch_rows = batch_rows
        parts = urllib.parse.urlsplit(self.uri)
        try:
            register_secret(urllib.parse.unquote(parts.password) if parts.password else None)
        except ValueError:
            pass
        self.description = redact_uri(self.uri)
        self._adbc: Any = None
        self._engine: Any = None
        self._connect()

    # ---- connecting ------------------------------------------------------------------------

    def _connect(self) -> None:
        try:
            if self.dialect == SQLITE:
                self._connect_sqlite()
            elif self.dialect == POSTGRESQL:
                self._connect_postgresql()
            else:
                self._connect_sqlalchemy()
        except (UsageError, MissingDependencyError):
            raise
        except Exception as exc:
            raise DatabaseError(f"Backend store {self.description} could not be opened: {_one_line(exc)}") from None

    def _connect_sqlite(self) -> None:
        from pathlib import Path

        path = sqlite_path(self.uri)
        if not Path(path).is_file():
            raise UsageError(f"Backend store {self.description}: no database file at {path!r}.")
        try:
            import adbc_driver_sqlite.dbapi as adbc_sqlite
        except ImportError:
            raise MissingDependencyError(
                f"Reading a sqlite backend store needs adbc-driver-sqlite: {EXTRA_HINT}.") from None
        self._adbc = adbc_sqlite.connect(f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=ro")

    def _connect_postgresql(self) -> None:
        try:
            import adbc_driver_postgresql.dbapi as adbc_postgresql
        except ImportError:
            self._connect_sqlalchemy()
            return
        self._adbc = adbc_postgresql.connect(_libpq_uri(self.uri))

    def _connect_sqlalchemy(self) -> None:
        try:
            import sqlalchemy
        except ImportError:
            raise MissingDependencyError(
                f"Reading a {self.dialect} backend store needs SQLAlchemy and the dialect's driver: "
                f"{EXTRA_HINT}, or pip install sqlalchemy with the driver.") from None
        try:
            self._engine = sqlalchemy.create_engine(self.uri, pool_pre_ping=False)
        except ImportError as exc:
            raise MissingDependencyError(_missing_driver(self.dialect, exc)) from None
        read_only = _READ_ONLY_SESSION.get(self.dialect)
        if read_only is not None:
            @sqlalchemy.event.listens_for(self._engine, "connect")
            def _read_only(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute(read_only)
                cursor.close()
                dbapi_connection.commit()
        with self._engine.connect():
            pass

    def close(self) -> None:
        if self._adbc is not None:
            try:
                self._adbc.close()
            except Exception:
                log.debug("Closing the backend store connection failed", exc_info=True)
            self._adbc = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> BackendDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- querying ----------------------------------------------------------------------------

    @property
    def reader(self) -> str:
        """Which reader answers queries: ``adbc`` or ``sqlalchemy``."""
        return "adbc" if self._adbc is not None else "sqlalchemy"

    def batches(self, sql: str, params: Sequence[Any] = (), schema: pa.Schema | None = None
                ) -> Iterator[pa.RecordBatch]:
        """The answer of a query in record batches of at most ``batch_rows`` rows, cast to
        ``schema`` (by column order) when given."""
        try:
            source = self._adbc_batches(sql, params) if self._adbc is not None else self._rows_batches(sql, params)
            for batch in source:
                yield _cast(batch, schema) if schema is not None else batch
        except (UsageError, MissingDependencyError):
            raise
        except Exception as exc:
            raise DatabaseError(f"Backend store {self.description}: a query failed: {_one_line(exc)}") from None

    def table(self, sql: str, params: Sequence[Any] = (), schema: pa.Schema | None = None) -> pa.Table:
        """The whole answer of a query as one table."""
        found = list(self.batches(sql, params, schema))
        if not found:
            if schema is None:
                raise DatabaseError(f"Backend store {self.description}: a query returned no schema.")
            return schema.empty_table()
        return pa.Table.from_batches(found)

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row (None when there is no row)."""
        for batch in self.batches(sql, params):
            if batch.num_rows:
                return batch.column(0)[0].as_py()
        return None

    def _adbc_batches(self, sql: str, params: Sequence[Any]) -> Iterator[pa.RecordBatch]:
        if self.dialect == POSTGRESQL:  # unbound, so that the answer streams (see the module's doc)
            values = iter(params)
            sql, params = _PLACEHOLDER.sub(lambda _: sql_literal(next(values)), sql), ()
        cursor = self._adbc.cursor()
        try:
            if self.dialect == SQLITE:
                cursor.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(self.batch_rows)})
            cursor.execute(sql, tuple(params) if params else None)
            reader = cursor.fetch_record_batch()
            for batch in reader:
                for start in range(0, batch.num_rows, self.batch_rows):
                    yield batch.slice(start, self.batch_rows)
        finally:
            cursor.close()
            self._adbc.rollback()  # the read-only transaction the query ran in

    def _rows_batches(self, sql: str, params: Sequence[Any]) -> Iterator[pa.RecordBatch]:
        import sqlalchemy

        names = {f"p{i}": value for i, value in enumerate(params)}
        counter = iter(range(len(params)))
        text = _PLACEHOLDER.sub(lambda _: f":p{next(counter)}", sql)
        with self._engine.connect().execution_options(stream_results=True) as conn:
            result = conn.execute(sqlalchemy.text(text), names)
            columns = list(result.keys())
            while True:
                rows = result.fetchmany(self.batch_rows)
                if not rows:
                    break
                yield pa.RecordBatch.from_arrays([pa.array([r[i] for r in rows]) for i in range(len(columns))],
                                                 names=columns)


def sql_literal(value: object) -> str:
    """``value`` as a PostgreSQL literal: NULL, an integer, or a string in single quotes with
    its quotes doubled (read as written where ``standard_conforming_strings`` is on, as
    :func:`_libpq_uri` sets it). Other types, and strings holding a NUL character, are refused."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        if "\x00" in value:
            raise UsageError("A query value holds a NUL character, which a database string cannot hold.")
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"No SQL literal for a {type(value).__name__}")


def _cast(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with ``schema``'s names and types (columns matched by position)."""
    if batch.schema.equals(schema):
        return batch
    arrays = []
    for column, field in zip(batch.columns, schema):
        if pa.types.is_null(column.type):
            arrays.append(pa.nulls(len(column), field.type))
        elif pa.types.is_boolean(field.type) and not pa.types.is_boolean(column.type):
            arrays.append(column.cast(pa.int64()).cast(pa.bool_()))
        else:
            arrays.append(column.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# The package to install for each database driver module SQLAlchemy imports.
DRIVER_PACKAGES = {
    "MySQLdb": "mysqlclient", "pymysql": "pymysql", "mysql": "mysql-connector-python",
    "mariadb": "mariadb", "pyodbc": "pyodbc", "pymssql": "pymssql", "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg[binary]", "pg8000": "pg8000", "asyncpg": "asyncpg", "oracledb": "oracledb",
    "cx_Oracle": "cx_Oracle",
}


def _missing_driver(dialect: str, exc: ImportError) -> str:
    """One line naming the driver module that is missing and the package that brings it."""
    module = (exc.name or "").split(".")[0]
    package = DRIVER_PACKAGES.get(module)
    if package is None:
        return f"Reading a {dialect} backend store needs its database driver: {_one_line(exc)}"
    alternative = " (or write the URI as mysql+pymysql://... and pip install pymysql)" if module == "MySQLdb" else ""
    return (f"Reading a {dialect} backend store needs the driver {module}: pip install '{package}' "
            f"where the job runs{alternative}.")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact(text[:500])
