"""Delta tables of one database on an engine: existence, schema, writes and MERGE (an upsert
by key, and the replacement of every row of given keys).

On the embedded engine every table lives at ``<warehouse>/<database>/<table>`` so that a new
process can register it again; on other engines the catalog (Unity Catalog, Hive metastore,
a Spark Connect server's own) decides where tables live.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from mlflow_spark_tools.core.identifiers import qualified_name, quote, sql_strings, validate_database
from mlflow_spark_tools.errors import EngineError
from mlflow_spark_tools.spark.arrow import byte_slices, to_dataframe
from mlflow_spark_tools.spark.engine import SAIL, Engine

log = logging.getLogger(__name__)

# Up to this many keys of a row replacement are named in the MERGE condition.
MAX_KEYS_NAMED = 2000
# Arrow data larger than this goes to Spark in slices through a staging table: a Spark Connect
# message holds at most 128 MiB, and servers without cached local relations (the embedded
# engine) take a DataFrame's rows inline in one message.
MAX_INLINE_BYTES = 48 << 20


# The Delta Lake release for each Spark minor version (docs.delta.io/releases: 3.2.x for 3.5.x,
# 4.0.x for 4.0.x; Delta 4.1.0 is built on Spark 4.1.0), as Maven coordinates for the Scala that
# pip's pyspark ships (2.12 for 3.5, 2.13 for Spark 4). The 3.5 and 4.1 ones are those the tests run.
DELTA_PACKAGES = {
    "3.5": "io.delta:delta-spark_2.12:3.2.0",
    "4.0": "io.delta:delta-spark_2.13:4.0.0",
    "4.1": "io.delta:delta-spark_2.13:4.1.0",
}
DELTA_SETTINGS = ("spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
                  "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog")


def delta_package(spark_version: str) -> str | None:
    """The Maven coordinates of the delta-spark release for a Spark version, if one is known."""
    return DELTA_PACKAGES.get(".".join(spark_version.split(".")[:2]))


def delta_missing(exc: BaseException, spark_version: str | None = None) -> EngineError | None:
    """The one-line error for a Spark session without Delta Lake, when ``exc`` says so: the two
    settings, and the jars that match the running Spark (``spark_version``)."""
    text = str(exc)
    if "DATA_SOURCE_NOT_FOUND" not in text and "Failed to find data source: delta" not in text:
        return None
    package = delta_package(spark_version) if spark_version else None
    jars = (f"--packages {package}" if package else
            f"--packages io.delta:delta-spark_<scala>:<version> (the release for Spark {spark_version}, "
            "docs.delta.io/releases)" if spark_version else "--packages io.delta:delta-spark_2.13:<version>")
    running = f"Spark {spark_version}" if spark_version else "local Spark"
    return EngineError(
        "This Spark session cannot write Delta tables. On Databricks Delta is built in; for "
        f"{running} add Delta's jars and its two settings: {jars} "
        + " ".join(f"--conf {setting}" for setting in DELTA_SETTINGS)
        + " (or configure_spark_with_delta_pip), or use the embedded engine or --remote."
    )


@dataclass(frozen=True)
class MergeCounts:
    """What one MERGE changed, as Delta Lake answers it."""

    updated: int
    deleted: int
    inserted: int

    @classmethod
    def of(cls, answer: Sequence[Any]) -> MergeCounts | None:
        """The counts in a MERGE's answer (one row of ``num_*_rows``), or None without them."""
        if len(answer) != 1:
            return None
        row = answer[0].asDict()
        names = ("num_updated_rows", "num_deleted_rows", "num_inserted_rows")
        if not all(isinstance(row.get(name), int) for name in names):
            return None
        return cls(*(int(row[name]) for name in names))


def spark_version(spark: Any) -> str | None:
    """The session's Spark version, or None when it cannot say."""
    try:
        return str(spark.version)
    except Exception:  # a session that is gone: the error is about something else anyway
        return None


class Database:
    """The Delta tables of one database (``schema`` or ``catalog.schema``) on an engine.

    ``deletion_vectors``: tables this object creates or overwrites on Spark with Delta Lake get
    ``delta.enableDeletionVectors`` set to it, so that a MERGE marks the rows it replaces
    instead of rewriting their files; None leaves the platform's default (on Databricks the
    workspace's "auto-enable deletion vectors" setting). The embedded engine writes none.
    """

    def __init__(self, engine: Engine, database: str, deletion_vectors: bool | None = None) -> None:
        validate_database(database)
        self.engine = engine
        self.spark = engine.spark
        self.database = database
        self.deletion_vectors = deletion_vectors

    def name(self, table: str) -> str:
        """The quoted, qualified name of a table for SQL."""
        return qualified_name(self.database, table)

    def shown(self, table: str) -> str:
        """The qualified name of a table as summaries and messages show it: without the
        backticks of :meth:`name` (database and table names are checked identifiers, so it
        is also valid SQL as written)."""
        self.name(table)  # validates
        return f"{self.database}.{table}"

    def ensure(self) -> None:
        """Create the database if it does not exist."""
        db_sql = ".".join(quote(p) for p in validate_database(self.database))
        self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {db_sql}")

    def exists(self, table: str) -> bool:
        self.name(table)  # validates
        return bool(self.spark.catalog.tableExists(f"{self.database}.{table}"))

    def has_rows(self, table: str, where: str | None = None) -> bool:
        """Whether ``table`` holds a row (matching the SQL condition ``where``): one read that
        stops at the first row and that statistics narrow, cheaper than a commit."""
        condition = f" WHERE {where}" if where is not None else ""
        return bool(self.spark.sql(f"SELECT 1 FROM {self.name(table)}{condition} LIMIT 1").collect())

    def columns(self, table: str) -> dict[str, str]:
        """Column name -> Spark SQL type name, in table order."""
        schema = self.spark.table(self.name(table)).schema
        return {f.name: f.dataType.simpleString() for f in schema.fields}

    @contextmanager
    def arrow_frame(self, data: pa.Table, ddl_schema: str, staging: str,
                    stats_columns: Sequence[str]) -> Iterator[Any]:
        """A DataFrame of ``data`` (NaN kept), for the length of the ``with`` block.

        Up to :data:`MAX_INLINE_BYTES` the rows go inline; a larger table is appended to the
        staging table ``staging`` in slices of that size, the DataFrame reads it, and it is
        dropped afterwards.
        """
        if data.nbytes <= MAX_INLINE_BYTES:
            yield to_dataframe(self.spark, data, ddl_schema)
            return
        try:
            self.write_arrow(data, ddl_schema, staging, stats_columns)
            yield self.spark.table(self.name(staging))
        finally:
            self.drop(staging)

    def write_arrow(self, data: pa.Table, ddl_schema: str, table: str, stats_columns: Sequence[str], *,
                    append: bool = False, merge_schema: bool = False) -> None:
        """Overwrite ``table`` with ``data`` (or append it), in slices of at most
        :data:`MAX_INLINE_BYTES` (one commit per slice), cut by the rows' own sizes
        (:func:`~mlflow_spark_tools.spark.arrow.byte_slices`): a few huge values among small
        ones (a dataset profile of 8 MB repeated in 40 inputs rows) stay under the limit.

        Args:
            merge_schema: an append may add columns the table does not have yet.
        """
        slices = byte_slices(data, MAX_INLINE_BYTES)
        for number, part in enumerate(slices):
            frame = to_dataframe(self.spark, part, ddl_schema)
            if number == 0 and not append:
                self.overwrite(frame, table, stats_columns)
            else:
                self.append(frame, table, merge_schema=merge_schema)
        if len(slices) > 1:
            log.debug("%d rows written to %s in %d slices", data.num_rows, table, len(slices))

    def drop(self, table: str) -> None:
        """Remove a table and, on the embedded engine, its files (nothing if absent)."""
        try:
            if self.exists(table):
                self.spark.sql(f"DROP TABLE IF EXISTS {self.name(table)}").collect()
        except Exception:  # a staging table is rewritten in full the next time anyway
            log.debug("Could not drop %s", table, exc_info=True)
        location = self.engine.table_location(self.database, table)
        if location is not None and Path(location).is_dir():
            shutil.rmtree(location, ignore_errors=True)

    def _writer(self, df: Any, table: str, mode: str) -> Any:
        writer = df.write.format("delta").mode(mode)
        location = self.engine.table_location(self.database, table)
        if location is not None:
            writer = writer.option("path", location)
        return writer

    def overwrite(self, df: Any, table: str, stats_columns: Sequence[str]) -> None:
        """Replace the table's content and schema in one Delta commit (create it if missing).

        Args:
            stats_columns: the only columns Delta keeps min/max statistics for
                (``delta.dataSkippingStatsColumns``). Statistics ignore NaN, and a reader that
                trusts them (the embedded engine does) returns a column whose min equals its
                max as that constant, turning NaN metric values into numbers. Key and time
                columns hold no NaN and are the ones worth skipping on.
        """
        writer = (
            self._writer(df, table, "overwrite")
            .option("overwriteSchema", "true")
            .option("delta.dataSkippingStatsColumns", ",".join(stats_columns))
        )
        if self.deletion_vectors is not None and self.engine.executor != SAIL:
            writer = writer.option("delta.enableDeletionVectors", str(self.deletion_vectors).lower())
        self._save(writer, table)

    def append(self, df: Any, table: str, *, merge_schema: bool = False) -> None:
        """Append rows (create the table if it does not exist); with ``merge_schema`` the rows
        may bring columns the table does not have yet (nullable, added at its end)."""
        writer = self._writer(df, table, "append")
        if merge_schema:
            writer = writer.option("mergeSchema", "true")
        self._save(writer, table)

    def add_columns(self, table: str, ddl: Sequence[tuple[str, str]]) -> None:
        """Add columns with a zero-row ``mergeSchema`` append.

        ``ALTER TABLE ADD COLUMNS`` is not available on every engine; an empty append that
        merges the schema is, and it is one Delta commit that rewrites no data.
        """
        if not ddl:
            return
        schema = ", ".join(f"{quote(name)} {data_type}" for name, data_type in ddl)
        # every column of the table, not only the new ones: an engine may refuse an append that
        # lacks a column the table declares NOT NULL, even with no row
        columns = [(n, t) for n, t in self.columns(table).items() if n not in dict(ddl)] + list(ddl)
        empty = self.spark.sql(
            "SELECT "
            + ", ".join(f"CAST(NULL AS {data_type}) AS {quote(name)}" for name, data_type in columns)
        ).limit(0)
        log.debug("Adding columns to %s: %s", table, schema)
        writer = self._writer(empty, table, "append").option("mergeSchema", "true")
        self._save(writer, table)

    def _save(self, writer: Any, table: str) -> None:
        try:
            writer.saveAsTable(f"{self.database}.{table}")
        except Exception as exc:
            missing = delta_missing(exc, spark_version(self.spark))
            if missing is not None:
                raise missing from exc
            raise

    def merge(
        self,
        source_view: str,
        table: str,
        columns: Sequence[str],
        delete_condition: str | None = None,
        insert_condition: str | None = None,
        key: str = "run_id",
        update_condition: str | None = None,
    ) -> MergeCounts | None:
        """Upsert rows of a temporary view into ``table`` by ``key`` in one MERGE.

        Args:
            source_view: temporary view with every column in ``columns``.
            columns: the table's columns; every matched row is replaced whole.
            delete_condition: SQL condition on ``s`` for matched rows to delete instead.
            insert_condition: SQL condition on ``s`` for unmatched rows to insert.
            update_condition: SQL condition on ``s`` and ``t`` for matched rows to replace;
                the others are left as they are.

        Returns:
            The rows the MERGE updated, deleted and inserted, when the engine says (Delta
            Lake's MERGE answers them; the embedded engine's does not), else None.
        """
        sets = ", ".join(f"t.{quote(c)} = s.{quote(c)}" for c in columns)
        cols = ", ".join(quote(c) for c in columns)
        vals = ", ".join(f"s.{quote(c)}" for c in columns)
        clauses = []
        if delete_condition is not None:
            clauses.append(f"WHEN MATCHED AND {delete_condition} THEN DELETE")
        matched = "WHEN MATCHED" if update_condition is None else f"WHEN MATCHED AND {update_condition}"
        clauses.append(f"{matched} THEN UPDATE SET {sets}")
        not_matched = "WHEN NOT MATCHED"
        if insert_condition is not None:
            not_matched += f" AND {insert_condition}"
        clauses.append(f"{not_matched} THEN INSERT ({cols}) VALUES ({vals})")
        answer = self.spark.sql(
            f"MERGE INTO {self.name(table)} t USING {quote(source_view)} s "
            f"ON t.{quote(key)} = s.{quote(key)} " + " ".join(clauses)
        ).collect()
        return MergeCounts.of(answer)

    def replace_rows(
        self,
        source_view: str,
        table: str,
        columns: Sequence[tuple[str, str]],
        key: str,
        keys: Sequence[str],
    ) -> None:
        """Replace every row of ``table`` whose ``key`` is one of ``keys`` by the rows of
        ``source_view``, in one MERGE (one Delta commit).

        For tables with several rows per key (a run's dataset inputs), which an upsert by key
        cannot replace: the MERGE's source is the new rows plus one marker row per key; a
        marker matches every row of its key, which is deleted, and a new row matches nothing
        and is inserted. A key with no new rows loses its rows; rows of other keys stay.

        Args:
            source_view: temporary view with every column of ``columns``; its rows' keys
                should all be in ``keys``.
            columns: the table's (name, SQL type), every column.
            key: the string column naming the group of rows (``run_id``).
            keys: the groups to replace; nothing happens when there are none.
        """
        target = self.name(table)  # validates
        if not keys:
            return
        if key not in dict(columns):
            raise ValueError(f"replace_rows: {key!r} is not one of the columns of {table!r}.")
        markers = f"__mst_markers_{table}"
        self.spark.createDataFrame([(k,) for k in sorted(set(keys))], f"{quote(key)} string") \
            .createOrReplaceTempView(markers)
        names = ", ".join(quote(n) for n, _ in columns)
        marker_row = ", ".join(quote(n) if n == key else f"CAST(NULL AS {t}) AS {quote(n)}" for n, t in columns)
        source = (f"SELECT {names}, false AS __marker FROM {quote(source_view)} "
                  f"UNION ALL SELECT {marker_row}, true AS __marker FROM {quote(markers)}")
        values = ", ".join(f"s.{quote(n)}" for n, _ in columns)
        # Naming the keys lets the engine skip the files that hold none of them (their
        # statistics of the key column rule them out) instead of rewriting the whole table.
        named = (f"t.{quote(key)} IN ({sql_strings(sorted(set(keys)))}) AND "
                 if len(set(keys)) <= MAX_KEYS_NAMED else "")
        try:
            self.spark.sql(
                f"MERGE INTO {target} t USING ({source}) s "
                f"ON s.__marker AND {named}t.{quote(key)} = s.{quote(key)} "
                f"WHEN MATCHED THEN DELETE "
                f"WHEN NOT MATCHED AND NOT s.__marker THEN INSERT ({names}) VALUES ({values})"
            ).collect()
        finally:
            self.spark.catalog.dropTempView(markers)
