"""One way to get a Spark session, whatever runs the code.

In order of precedence:

1. a session passed in by the caller;
2. a Spark Connect session when a remote URL is given (``--remote`` or ``SPARK_REMOTE``):
   Spark Connect servers, Databricks Connect;
3. the session of the surrounding runtime: a Databricks notebook or job, or a classic
   ``spark-submit`` application;
4. otherwise the embedded engine: an in-process Spark Connect server from ``pysail`` that
   writes and reads Delta tables under a local warehouse directory.

Job code only uses DataFrame and SQL APIs, so it runs unchanged on all of them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_spark_tools.core.identifiers import quote, validate_database, validate_table_name
from mlflow_spark_tools.errors import EngineError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


log = logging.getLogger(__name__)

EMBEDDED = "embedded"
REMOTE = "remote"
ACTIVE = "active"
# What executes the SQL and writes the Delta tables, whoever holds the session: Sail (the embedded
# engine, or a Sail server reached with --remote) or Spark with Delta Lake's JVM writer
# (Databricks, classic spark-submit, a Spark Connect server of Spark).
SAIL = "sail"
SPARK = "spark"
DEFAULT_WAREHOUSE = "spark-warehouse"
# Paths the embedded engine writes Delta tables under as given. Sail 0.7 percent-encodes
# other characters (a space, a non-ASCII letter) in the Delta log's path and encodes the data
# files' path twice: "my wh" gets its log under "my%20wh" and its files under "my%2520wh".
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._/+-]+")


@dataclass
class Engine:
    """A Spark session and what kind of engine it belongs to.

    Attributes:
        spark: the session.
        kind: ``embedded``, ``remote`` or ``active``.
        warehouse: the directory holding the tables' files; None when the catalog manages
            them (Unity Catalog, a metastore).
        engine_warehouse: the same directory as the engine is told it (a private link to it
            when its path has characters the embedded engine would percent-encode).
    """

    spark: SparkSession
    kind: str
    warehouse: Path | None = None
    _server: Any = None
    engine_warehouse: Path | None = None
    _remove_link: Any = None

    def __post_init__(self) -> None:
        if self.engine_warehouse is None:
            self.engine_warehouse = self.warehouse

    @property
    def executor(self) -> str:
        """:data:`SAIL` or :data:`SPARK` (:func:`executor_of`)."""
        return executor_of(self.spark)

    def table_location(self, database: str, table: str) -> str | None:
        """Where a table's files go: a path for the embedded engine, else the catalog's choice."""
        if self.engine_warehouse is None:
            return None
        parts = (*validate_database(database), validate_table_name(table))
        return str(self.engine_warehouse.joinpath(*parts))

    def stop(self) -> None:
        """Stop what this engine started (only the embedded server); leave others running."""
        if self._server is not None:
            try:
                self.spark.stop()
            finally:
                self._server.stop()
                self._server = None
                if self._remove_link is not None:
                    self._remove_link()


_EXECUTOR_ATTRIBUTE = "_mlflow_spark_tools_executor"


def executor_of(spark: Any) -> str:
    """:data:`SAIL` when the session's SQL runs on Sail, else :data:`SPARK`; asked once per
    session. SQL ``version()`` is Spark's version and build on Spark (``4.1.1 c0690c7...``) and
    Sail's release on Sail (``0.7.2``); an engine that cannot answer is taken for Spark."""
    known = getattr(spark, _EXECUTOR_ATTRIBUTE, None)
    if known is not None:
        return str(known)
    try:
        version = str(spark.sql("SELECT version() AS v").collect()[0][0])
    except Exception:  # an engine without version(): not Sail, which has it
        log.debug("version() failed; taking the engine for Spark", exc_info=True)
        version = ""
    major = re.match(r"(\d+)\.", version)
    executor = SAIL if major is not None and int(major.group(1)) < 3 else SPARK
    try:
        setattr(spark, _EXECUTOR_ATTRIBUTE, executor)
    except AttributeError:  # a session object that takes no attributes: ask again next time
        pass
    return executor


def _runtime_session() -> Any | None:
    """The session of a Databricks runtime or a classic spark-submit application, if any."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        return None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if os.environ.get("DATABRICKS_RUNTIME_VERSION") or os.environ.get("PYSPARK_GATEWAY_PORT"):
        return SparkSession.builder.getOrCreate()
    return None


def _connect(url: str) -> SparkSession:
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise EngineError(
            "pyspark with Spark Connect support is not installed: pip install "
            "'mlflow-spark-tools[local]' (or pyspark[connect])."
        ) from exc
    try:
        # a new session of that server, never an active session of another one
        return SparkSession.builder.remote(url).create()
    except Exception as exc:  # pyspark raises several unrelated types here
        raise EngineError(f"Could not connect to the Spark Connect server {url}: {exc}") from exc


def start_embedded(warehouse: Path | str) -> Engine:
    """Start the embedded engine (Sail) and register the tables found under ``warehouse``."""
    try:
        from pysail.spark import SparkConnectServer
    except ImportError as exc:
        raise EngineError(
            "No Spark session is active and the embedded engine is not installed: "
            "pip install 'mlflow-spark-tools[local]', or pass --remote sc://host:port."
        ) from exc
    warehouse = Path(warehouse).expanduser().resolve()
    warehouse.mkdir(parents=True, exist_ok=True)
    engine_warehouse, link_dir = _plain_path_to(warehouse)
    # Sail logs every session at INFO to stderr; keep the console for what users asked for.
    os.environ.setdefault("RUST_LOG", "error")
    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    host, port = server.listening_address
    spark = _connect(f"sc://{host}:{port}")
    # The server stops when it is garbage-collected; a caller may keep only the session
    # (get_engine(...).spark), so the session holds the server as long as it lives.
    setattr(spark, "_mlflow_spark_tools_server", server)  # noqa: B010 - an attribute of our own
    setattr(spark, _EXECUTOR_ATTRIBUTE, SAIL)
    # the link lives as long as the session that writes through it, or until stop()
    remove_link = weakref.finalize(spark, shutil.rmtree, link_dir, ignore_errors=True) if link_dir else None
    engine = Engine(spark=spark, kind=EMBEDDED, warehouse=warehouse, _server=server,
                    engine_warehouse=engine_warehouse, _remove_link=remove_link)
    register_warehouse_tables(engine)
    return engine


def _plain_path_to(directory: Path) -> tuple[Path, Path | None]:
    """A path to ``directory`` that the embedded engine writes under as given, and the private
    directory holding the link made for it (None when ``directory``'s own path is plain).

    The link sits in a new directory only its owner can enter, and goes when the session does.
    """
    if _PLAIN_PATH.fullmatch(str(directory)):
        return directory, None
    link_dir = Path(tempfile.mkdtemp(prefix="mlflow-spark-tools-"))
    link = link_dir / "warehouse"
    if not _PLAIN_PATH.fullmatch(str(link)):
        link_dir.rmdir()
        raise EngineError(
            f"The embedded engine cannot write tables under {directory}: it percent-encodes spaces "
            f"and non-ASCII characters in paths, and the temporary directory {link_dir.parent} has "
            "such characters too. Use a --warehouse path of letters, digits and . _ - / only, "
            "or set TMPDIR to one."
        )
    link.symlink_to(directory, target_is_directory=True)
    return link, link_dir


def register_warehouse_tables(engine: Engine) -> list[str]:
    """Register every Delta table under the warehouse in the engine's catalog.

    The embedded engine's catalog lives in its server process, so a new process sees no
    tables until they are registered again. Layout: ``<warehouse>/<database parts>/<table>``.

    Returns:
        The qualified names registered.
    """
    root = engine.engine_warehouse
    if root is None:
        return []
    registered = []
    for log_dir in sorted(root.glob("**/_delta_log")):
        table_dir = log_dir.parent
        parts = table_dir.relative_to(root).parts
        if len(parts) not in (2, 3) or not any(log_dir.glob("*.json")):
            continue
        database, table = ".".join(parts[:-1]), parts[-1]
        try:
            validate_database(database)
            validate_table_name(table)
        except Exception:  # a foreign directory in the warehouse: not ours to register
            log.debug("Skipping %s: not a <database>/<table> directory", table_dir)
            continue
        db_sql = ".".join(quote(p) for p in parts[:-1])
        engine.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {db_sql}")
        location = str(table_dir).replace("'", "\\'")
        engine.spark.sql(
            f"CREATE TABLE IF NOT EXISTS {db_sql}.{quote(table)} USING delta LOCATION '{location}'"
        )
        registered.append(f"{database}.{table}")
    log.debug("Registered %d tables from %s", len(registered), engine.warehouse)
    return registered


def get_engine(
    spark: SparkSession | None = None,
    remote: str | None = None,
    warehouse: Path | str | None = None,
) -> Engine:
    """Return the engine to run on; see the module docstring for the order of precedence.

    Args:
        spark: a session to use as is.
        remote: a Spark Connect URL (``sc://host:port``).
        warehouse: a directory for the tables' files. The embedded engine always has one
            (default ``./spark-warehouse``). On other engines tables are managed by the catalog
            unless a warehouse is given; then they are external tables under it, registered
            again at start (a Sail server, for one, forgets tables between sessions).
    """
    if spark is not None:
        engine = Engine(spark=spark, kind=ACTIVE)
    elif remote is not None:
        engine = Engine(spark=_connect(remote), kind=REMOTE)
    else:
        runtime = _runtime_session()
        if runtime is None:
            return start_embedded(warehouse if warehouse is not None else DEFAULT_WAREHOUSE)
        engine = Engine(spark=runtime, kind=ACTIVE)
    if warehouse is not None:
        engine.warehouse = engine.engine_warehouse = Path(warehouse).expanduser().resolve()
        register_warehouse_tables(engine)
    return engine


class EngineHandle:
    """The engine a job or command runs on: the one it was given (or the session it was
    given), else one obtained on first use; :meth:`close` stops only an engine obtained here.

    Args:
        engine: an engine to use as is (left running at the end).
        spark: a session to use as is (left running at the end).
    """

    def __init__(self, engine: Engine | None = None, spark: SparkSession | None = None) -> None:
        self.given = engine
        self._spark = spark
        self._engine = engine
        self._owned = False

    def get(self, remote: str | None = None, warehouse: Path | str | None = None) -> Engine:
        """The engine; the first call without a given one starts or connects it
        (:func:`get_engine` with ``remote`` and ``warehouse``)."""
        if self._engine is None:
            self._engine = get_engine(self._spark, remote, warehouse)
            self._owned = self._spark is None
        return self._engine

    def close(self) -> None:
        if self._owned and self._engine is not None:
            self._engine.stop()
            self._engine = None
            self._owned = False

    def __enter__(self) -> EngineHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
