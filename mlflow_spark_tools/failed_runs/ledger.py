"""The replay ledger: one Delta row per payload a replay handled.

``<database>.replay_log`` maps each payload id to the run it became (or the reason it could
not), so the run id a Spark task returned for a deferred run can always be looked up::

    SELECT run_id FROM mlflow_exp.replay_log WHERE payload_id = '...'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from mlflow_spark_tools.core.identifiers import qualified_name
from mlflow_spark_tools.spark.arrow import to_dataframe
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.spark.engine import Engine

LEDGER_TABLE = "replay_log"
LEDGER_SCHEMA = pa.schema([
    ("payload_id", pa.string()),
    ("run_id", pa.string()),
    ("experiment_id", pa.string()),
    ("status", pa.string()),
    ("attempts", pa.int32()),
    ("error", pa.string()),
    ("replayed_at", pa.timestamp("ms", tz="UTC")),
])
LEDGER_DDL = ("payload_id STRING, run_id STRING, experiment_id STRING, status STRING, attempts INT, "
              "error STRING, replayed_at TIMESTAMP")


def write_ledger(engine: Engine, database: str, rows: Sequence[dict[str, Any]]) -> int:
    """Append the rows of one replay to ``<database>.replay_log``; returns how many."""
    if not rows:
        return 0
    columns = {name: [row.get(name) for row in rows] for name in LEDGER_SCHEMA.names}
    table = pa.Table.from_pydict(columns, schema=LEDGER_SCHEMA)
    db = Database(engine, database)
    db.ensure()
    db.append(to_dataframe(engine.spark, table, LEDGER_DDL), LEDGER_TABLE)
    return len(rows)


def existing_ledger(engine: Engine, database: str) -> str | None:
    """The qualified name of ``<database>.replay_log`` when it exists on ``engine``, else None
    (nothing has been replayed into that database yet)."""
    if not Database(engine, database).exists(LEDGER_TABLE):
        return None
    return qualified_name(database, LEDGER_TABLE)
