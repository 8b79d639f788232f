"""The replay ledger: one Delta row per payload a replay handled, and the store's state.

``<database>.replay_log`` maps each payload id to the run it became (or the reason it could
not), so the run id a Spark task returned for a deferred run can always be looked up::

    SELECT run_id FROM mlflow_exp.replay_log WHERE payload_id = '...'

``<database>.replay_store_log`` has a row per replay pass that handled payloads or left some
pending or quarantined: how many payloads the store held in each state after the pass, and what
the pass did. The dashboard's backlog and the attention alert read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
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


STORE_LOG_TABLE = "replay_store_log"
STORE_LOG_SCHEMA = pa.schema([
    ("recorded_at", pa.timestamp("ms", tz="UTC")),
    ("replay_dir", pa.string()),
    ("pending", pa.int64()),
    ("claimed", pa.int64()),
    ("quarantined", pa.int64()),
    ("replayed", pa.int64()),
    ("failed", pa.int64()),
    ("throttled", pa.int64()),
    ("seconds", pa.float64()),
])
STORE_LOG_DDL = ("recorded_at TIMESTAMP, replay_dir STRING, pending BIGINT, claimed BIGINT, quarantined BIGINT, "
                 "replayed BIGINT, failed BIGINT, throttled BIGINT, seconds DOUBLE")


def write_store_state(engine: Engine, database: str, row: dict[str, Any]) -> None:
    """Append one row (the columns of ``STORE_LOG_SCHEMA``) to ``<database>.replay_store_log``."""
    _append(engine, database, STORE_LOG_TABLE, [row], STORE_LOG_SCHEMA, STORE_LOG_DDL)


def write_ledger(engine: Engine, database: str, rows: Sequence[dict[str, Any]]) -> int:
    """Append the rows of one replay to ``<database>.replay_log``; returns how many."""
    if not rows:
        return 0
    _append(engine, database, LEDGER_TABLE, rows, LEDGER_SCHEMA, LEDGER_DDL)
    return len(rows)


def logged_payloads(engine: Engine, database: str, payload_ids: Sequence[str]) -> set[str]:
    """Which of ``payload_ids`` have a row in ``<database>.replay_log`` (one semi-join)."""
    db = Database(engine, database)
    if not payload_ids or not db.exists(LEDGER_TABLE):
        return set()
    wanted = to_dataframe(engine.spark, pa.table({"payload_id": pa.array(list(payload_ids), pa.string())}),
                          "payload_id STRING")
    found = engine.spark.table(db.name(LEDGER_TABLE)).select("payload_id").join(wanted, "payload_id", "left_semi")
    return {row["payload_id"] for row in found.distinct().collect()}


def _append(engine: Engine, database: str, table: str, rows: Sequence[dict[str, Any]], schema: pa.Schema,
            ddl: str) -> None:
    """Append ``rows`` (the columns of ``schema``; a missing one is null) to ``<database>.<table>``.

    Every value is made one its column takes (:func:`_cell`), so one bad value never costs the
    other rows theirs.
    """
    data = pa.Table.from_pylist([{f.name: _cell(row.get(f.name), f.type) for f in schema} for row in rows],
                                schema=schema)
    db = Database(engine, database)
    db.ensure()
    db.append(to_dataframe(engine.spark, data, ddl), table)


def _cell(value: Any, kind: pa.DataType) -> Any:
    """``value`` as a value of an Arrow column of ``kind``: text as valid UTF-8 (a lone surrogate,
    from a file name or a document's bytes, escaped), numbers within the column's range, and
    null for anything else."""
    if value is None:
        return None
    if pa.types.is_string(kind):
        text = value if isinstance(value, str) else str(value)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")[:10_000]
    if isinstance(value, bool):
        return None
    if pa.types.is_integer(kind):
        bound = 2 ** (kind.bit_width - 1)
        return value if isinstance(value, int) and -bound <= value < bound else None
    if pa.types.is_floating(kind):
        return float(value) if isinstance(value, (int, float)) else None
    if pa.types.is_timestamp(kind):
        return value if isinstance(value, datetime) or (isinstance(value, int) and 0 <= value < 2**53) else None
    return value


def existing_ledger(engine: Engine, database: str) -> str | None:
    """The qualified name of ``<database>.replay_log`` when it exists on ``engine``, else None
    (nothing has been replayed into that database yet)."""
    if not Database(engine, database).exists(LEDGER_TABLE):
        return None
    return qualified_name(database, LEDGER_TABLE)
