"""The model registry as tables: ``<database>.registered_models`` and ``<database>.model_versions``.

``registered_models``: ``name``, ``description``, ``creation_time``, ``last_updated_time``
(UTC), ``aliases`` (``map<string,bigint>``: alias -> version) and ``tags``
(``map<string,string>``).

``model_versions``: ``name``, ``version`` (bigint), ``aliases`` (``array<string>``),
``current_stage`` (the workspace registry's stage, ``None`` for no stage; NULL on Unity
Catalog, which has no stages), ``status``, ``source_run_id`` (the run the version came from:
joins ``exp_<id>.run_id``), ``model_id`` (the MLflow 3 logged model it was registered from,
else NULL), ``source``, ``creation_time``, ``last_updated_time``, ``description`` and ``tags``.

Both are read whole (:class:`~mlflow_spark_tools.tracking.model_search.RegistryReader`) and
each is rewritten in one overwrite per refresh: registries are small, and versions change
(aliases move, stages change) without any run changing.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mlflow_spark_tools.core.redaction import redact_uri
from mlflow_spark_tools.errors import EXIT_FAILURE, MlflowSparkToolsError
from mlflow_spark_tools.spark.arrow import frame_with_maps
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.tracking.model_search import RegistryReader

REGISTERED_MODELS_TABLE = "registered_models"
MODEL_VERSIONS_TABLE = "model_versions"
REGISTERED_MODEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "string"),
    ("description", "string"),
    ("creation_time", "timestamp"),
    ("last_updated_time", "timestamp"),
    ("aliases", "map<string,bigint>"),
    ("tags", "map<string,string>"),
)
MODEL_VERSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "string"),
    ("version", "bigint"),
    ("aliases", "array<string>"),
    ("current_stage", "string"),
    ("status", "string"),
    ("source_run_id", "string"),
    ("model_id", "string"),
    ("source", "string"),
    ("creation_time", "timestamp"),
    ("last_updated_time", "timestamp"),
    ("description", "string"),
    ("tags", "map<string,string>"),
)

_TIMESTAMP = pa.timestamp("ms", tz="UTC")


def _entries(value_type: pa.DataType) -> pa.DataType:
    return pa.list_(pa.struct([("key", pa.string()), ("value", value_type)]))


REGISTERED_MODELS_SCHEMA = pa.schema([
    ("name", pa.string()), ("description", pa.string()), ("creation_time", _TIMESTAMP),
    ("last_updated_time", _TIMESTAMP), ("aliases", _entries(pa.int64())), ("tags", _entries(pa.string())),
])
MODEL_VERSIONS_SCHEMA = pa.schema([
    ("name", pa.string()), ("version", pa.int64()), ("aliases", pa.list_(pa.string())),
    ("current_stage", pa.string()), ("status", pa.string()), ("source_run_id", pa.string()),
    ("model_id", pa.string()), ("source", pa.string()), ("creation_time", _TIMESTAMP),
    ("last_updated_time", _TIMESTAMP), ("description", pa.string()), ("tags", _entries(pa.string())),
])


@dataclass
class RegistrySummary:
    """What one refresh of the registry tables did."""

    registry_uri: str | None = None
    unity_catalog: bool = False
    registered_models_table: str | None = None
    model_versions_table: str | None = None
    registered_models: int = 0
    model_versions: int = 0
    seconds: float = 0.0
    error: str | None = None
    error_exit_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ok": self.ok}


def _pairs(pairs: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    return [{"key": key, "value": value} for key, value in pairs]


def registered_models_arrow(models: list[dict[str, Any]]) -> pa.Table:
    """Registry records (:meth:`RegistryReader.registered_models`) as an Arrow table."""
    rows = [{
        "name": m["name"], "description": m["description"], "creation_time": m["creation_timestamp"],
        "last_updated_time": m["last_updated_timestamp"], "aliases": _pairs(m["aliases"]), "tags": _pairs(m["tags"]),
    } for m in models]
    return pa.Table.from_pylist(rows, schema=REGISTERED_MODELS_SCHEMA)


def model_versions_arrow(versions: list[dict[str, Any]]) -> pa.Table:
    """Version records (:meth:`RegistryReader.model_versions`) as an Arrow table."""
    rows = [{
        **{name: v[name] for name in ("name", "version", "aliases", "current_stage", "status", "source_run_id",
                                      "model_id", "source", "description")},
        "creation_time": v["creation_timestamp"], "last_updated_time": v["last_updated_timestamp"],
        "tags": _pairs(v["tags"]),
    } for v in versions]
    return pa.Table.from_pylist(rows, schema=MODEL_VERSIONS_SCHEMA)


def refresh_registry_tables(db: Database, reader: RegistryReader) -> RegistrySummary:
    """Read the whole registry, then overwrite ``registered_models`` and ``model_versions``
    (one Delta commit each); nothing is written when reading fails.

    An error of ours (the registry failed to answer) becomes the summary's ``error``; others
    propagate.
    """
    started = time.perf_counter()
    summary = RegistrySummary(redact_uri(reader.registry_uri), reader.unity_catalog)
    try:
        models, versions = reader.read()
    except MlflowSparkToolsError as exc:
        summary.error, summary.error_exit_code = str(exc), exc.exit_code or EXIT_FAILURE
        summary.seconds = round(time.perf_counter() - started, 3)
        return summary
    db.ensure()
    model_data, version_data = registered_models_arrow(models), model_versions_arrow(versions)
    db.overwrite(frame_with_maps(db.spark, model_data, REGISTERED_MODEL_COLUMNS), REGISTERED_MODELS_TABLE, ["name"])
    db.overwrite(frame_with_maps(db.spark, version_data, MODEL_VERSION_COLUMNS), MODEL_VERSIONS_TABLE,
                 ["name", "version", "source_run_id"])
    summary.registered_models_table = db.shown(REGISTERED_MODELS_TABLE)
    summary.model_versions_table = db.shown(MODEL_VERSIONS_TABLE)
    summary.registered_models, summary.model_versions = model_data.num_rows, version_data.num_rows
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary
