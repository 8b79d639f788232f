"""The index table ``<database>.experiments``: one row per experiment table, with its run count,
its companion tables and its refresh state (the watermark, the last refresh's mode and cost)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mlflow_spark_tools.core.identifiers import quote, sql_string
from mlflow_spark_tools.spark.arrow import to_dataframe
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.tables.refresh_cost import COST_COLUMNS, measurements
from mlflow_spark_tools.tables.run_table import ARROW_TYPES, Refresh

INDEX_TABLE = "experiments"
INDEX_COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiment_id", "string"),
    ("name", "string"),
    ("lifecycle_stage", "string"),
    ("table_name", "string"),
    ("columns_table", "string"),
    ("run_count", "bigint"),
    ("column_count", "bigint"),
    ("include_deleted", "boolean"),
    ("watermark_ms", "bigint"),
    ("last_refresh_mode", "string"),
    ("last_refreshed_at", "timestamp"),
    ("metric_history", "string"),
    ("metrics_table", "string"),
    ("inputs_table", "string"),
    ("models_table", "string"),
    *COST_COLUMNS,
)
_VIEW = "__mst_index_row"


@dataclass
class Measure:
    """What the index row records about the refresh under way: when it started, the row it
    found, and whether it is a full build chosen because it is cheaper (refresh_cost)."""

    started: float
    previous: dict[str, Any] | None
    by_cost: bool


class IndexTable:
    """The index table of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.spark = db.spark

    def row(self, experiment_id: str) -> dict[str, Any] | None:
        if not self.db.exists(INDEX_TABLE):
            return None
        rows = self.spark.sql(
            f"SELECT * FROM {self.db.name(INDEX_TABLE)} WHERE experiment_id = {sql_string(experiment_id)}").collect()
        return rows[0].asDict() if rows else None

    def write(self, job: Refresh, mode: str, measure: Measure, now_ms: int,
              companion_tables: dict[str, str | None]) -> None:
        """Record the refresh ``job`` just finished; ``companion_tables`` gives the index columns
        naming the companion tables (``metrics_table``, ``inputs_table``, ``models_table``,
        ``metric_history``), None where there is none."""
        cost = measurements(measure.previous, mode, time.perf_counter() - measure.started, job.summary.row_count,
                            measure.by_cost)
        database = self.db.database
        values: dict[str, Any] = {
            "experiment_id": job.experiment.experiment_id,
            "name": job.experiment.name,
            "lifecycle_stage": job.experiment.lifecycle_stage,
            "table_name": f"{database}.{job.table}",
            "columns_table": f"{database}.{job.table}_columns",
            "run_count": job.summary.row_count,
            "column_count": job.column_count,
            "include_deleted": job.include_deleted,
            "watermark_ms": job.watermark_ms,
            "last_refresh_mode": mode,
            "last_refreshed_at": now_ms,
            **{name: f"{database}.{table}" if table is not None and name.endswith("_table") else table
               for name, table in companion_tables.items()},
            **cost,
        }
        row = pa.table({name: pa.array([values.get(name)], ARROW_TYPES[data_type])
                        for name, data_type in INDEX_COLUMNS})
        df = to_dataframe(self.spark, row, ", ".join(f"{quote(n)} {t}" for n, t in INDEX_COLUMNS))
        if not self.db.exists(INDEX_TABLE):
            self.db.overwrite(df, INDEX_TABLE, ["experiment_id"])
            return
        missing = [(n, t) for n, t in INDEX_COLUMNS if n not in self.db.columns(INDEX_TABLE)]
        self.db.add_columns(INDEX_TABLE, missing)  # an index table written by an older version
        df.createOrReplaceTempView(_VIEW)
        self.db.merge(_VIEW, INDEX_TABLE, [n for n, _ in INDEX_COLUMNS], key="experiment_id")
        self.spark.catalog.dropTempView(_VIEW)
