"""MLflow 3 logged models read from the backend database, in the REST API's JSON shape.

:meth:`DatabaseModelSearch.search` answers what
:class:`~mlflow_spark_tools.tracking.model_search.LoggedModelSearch` answers for one experiment:
every logged model that is not deleted, with its params, tags and metrics (dataset name and
digest included), as ``{"info": ..., "data": ...}`` objects; None for a database older than
MLflow's logged-model tables.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from mlflow_spark_tools.backend_store.connection import BackendDatabase
from mlflow_spark_tools.backend_store.schema import KNOWN_REVISIONS, schema_revision

LOGGED_MODELS_REVISION = "400f98739977"  # add_logged_model_tables (MLflow 3.0)
# logged_models.status as MLflow stores it, and as the API names it
STATUS_NAMES = {0: "LOGGED_MODEL_STATUS_UNSPECIFIED", 1: "LOGGED_MODEL_PENDING", 2: "LOGGED_MODEL_READY",
                3: "LOGGED_MODEL_UPLOAD_FAILED"}
MODEL_ROW = pa.schema([
    ("model_id", pa.string()), ("experiment_id", pa.int64()), ("name", pa.string()),
    ("artifact_location", pa.string()), ("creation_timestamp_ms", pa.int64()),
    ("last_updated_timestamp_ms", pa.int64()), ("status", pa.int64()), ("model_type", pa.string()),
    ("source_run_id", pa.string()), ("status_message", pa.string()),
])
KEY_VALUE_ROW = pa.schema([("model_id", pa.string()), ("key", pa.string()), ("value", pa.string())])
METRIC_ROW = pa.schema([
    ("model_id", pa.string()), ("key", pa.string()), ("value", pa.float64()), ("timestamp", pa.int64()),
    ("step", pa.int64()), ("run_id", pa.string()), ("dataset_name", pa.string()), ("dataset_digest", pa.string()),
])


class DatabaseModelSearch:
    """The logged models of experiments in an MLflow backend database."""

    def __init__(self, db: BackendDatabase) -> None:
        self.db = db
        revisions = [revision for revision, _ in KNOWN_REVISIONS]
        revision = schema_revision(db)
        self._available = revisions.index(revision) >= revisions.index(LOGGED_MODELS_REVISION)

    def search(self, experiment_id: str) -> list[dict[str, Any]] | None:
        """Every logged model of the experiment that is not deleted, oldest first; None when
        the database has no logged-model tables."""
        if not self._available:
            return None
        where = "m.experiment_id = ? AND (m.lifecycle_stage IS NULL OR m.lifecycle_stage <> 'deleted')"
        params = (int(experiment_id),)
        rows = self.db.table(
            "SELECT m.model_id, m.experiment_id, m.name, m.artifact_location, m.creation_timestamp_ms, "
            "m.last_updated_timestamp_ms, m.status, m.model_type, m.source_run_id, m.status_message "
            f"FROM logged_models m WHERE {where} ORDER BY m.creation_timestamp_ms, m.model_id", params, MODEL_ROW)
        if rows.num_rows == 0:
            return []
        joined = f"JOIN logged_models m ON m.model_id = x.model_id WHERE {where}"
        model_params = self._group(self.db.table(
            "SELECT x.model_id, x.param_key, x.param_value FROM logged_model_params x " + joined,
            params, KEY_VALUE_ROW))
        tags = self._group(self.db.table(
            "SELECT x.model_id, x.tag_key, x.tag_value FROM logged_model_tags x " + joined, params, KEY_VALUE_ROW))
        metrics = self._group(self.db.table(
            "SELECT x.model_id, x.metric_name, x.metric_value, x.metric_timestamp_ms, x.metric_step, x.run_id, "
            "x.dataset_name, x.dataset_digest FROM logged_model_metrics x " + joined, params, METRIC_ROW))
        models = []
        for row in rows.to_pylist():
            model_id = row["model_id"]
            info: dict[str, Any] = {
                "model_id": model_id, "experiment_id": str(row["experiment_id"]), "name": row["name"],
                "artifact_uri": row["artifact_location"],
                "creation_timestamp_ms": row["creation_timestamp_ms"],
                "last_updated_timestamp_ms": row["last_updated_timestamp_ms"],
                "status": STATUS_NAMES.get(row["status"], str(row["status"])),
                "model_type": row["model_type"], "source_run_id": row["source_run_id"],
                "status_message": row["status_message"],
                "tags": sorted(({"key": t["key"], "value": t["value"]} for t in tags.get(model_id, [])),
                               key=lambda t: t["key"]),
            }
            data = {
                "params": sorted(({"key": p["key"], "value": p["value"]} for p in model_params.get(model_id, [])),
                                 key=lambda p: p["key"]),
                "metrics": sorted(({k: v for k, v in m.items() if k != "model_id"} for m in metrics.get(model_id, [])),
                                  key=lambda m: (m["key"], m["step"], m["timestamp"], str(m["run_id"]))),
            }
            models.append({"info": info, "data": data})
        return models

    @staticmethod
    def _group(table: pa.Table) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in table.to_pylist():
            grouped.setdefault(row["model_id"], []).append(row)
        return grouped
