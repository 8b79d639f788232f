"""The logged models table ``<database>.exp_<id>_models``: one row per MLflow 3 logged model.

Columns: ``model_id``, ``name``, ``source_run_id`` (the run that logged it, joins
``exp_<id>.run_id``), ``status`` (``READY``, ``PENDING``, ``FAILED``), ``model_type``,
``creation_time`` and ``last_updated_time`` (UTC), ``artifact_location``, ``params``
(``map<string,string>``), ``metrics`` (the model's metrics, one element per key, dataset and
step: ``array<struct<key, value, step, timestamp, dataset_name, dataset_digest, run_id>>``, in
that order of key, step, time, dataset name and digest, and run, from every source) and
``tags`` (``map<string,string>``). Empty strings the server sends for absent values are NULL.

Every build rewrites the table in one overwrite (an experiment holds few models, and a model's
status, metrics and tags change without its run changing). A server without logged models (an
MLflow 2 server) or an MLflow 2 client means no table, and no error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa

from mlflow_spark_tools.core.json_values import json_millis
from mlflow_spark_tools.errors import TrackingServerError
from mlflow_spark_tools.spark.arrow import frame_with_maps
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.tables.run_table import Refresh
from mlflow_spark_tools.tables.source_interface import ModelReader

log = logging.getLogger(__name__)

METRICS_TYPE = ("array<struct<key:string,value:double,step:bigint,timestamp:timestamp,"
                "dataset_name:string,dataset_digest:string,run_id:string>>")
MODEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("model_id", "string"),
    ("name", "string"),
    ("source_run_id", "string"),
    ("status", "string"),
    ("model_type", "string"),
    ("creation_time", "timestamp"),
    ("last_updated_time", "timestamp"),
    ("artifact_location", "string"),
    ("params", "map<string,string>"),
    ("metrics", METRICS_TYPE),
    ("tags", "map<string,string>"),
)
MODEL_STATS_COLUMNS = ("model_id", "source_run_id", "creation_time")
STATUS_PREFIX = "LOGGED_MODEL_"

_TIMESTAMP = pa.timestamp("ms", tz="UTC")
_KEY_VALUES = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
_METRIC = pa.struct([
    ("key", pa.string()), ("value", pa.float64()), ("step", pa.int64()), ("timestamp", _TIMESTAMP),
    ("dataset_name", pa.string()), ("dataset_digest", pa.string()), ("run_id", pa.string()),
])
MODELS_SCHEMA = pa.schema([
    ("model_id", pa.string()), ("name", pa.string()), ("source_run_id", pa.string()), ("status", pa.string()),
    ("model_type", pa.string()), ("creation_time", _TIMESTAMP), ("last_updated_time", _TIMESTAMP),
    ("artifact_location", pa.string()), ("params", _KEY_VALUES), ("metrics", pa.list_(_METRIC)),
    ("tags", _KEY_VALUES),
])


def models_table_name(table: str) -> str:
    return table + "_models"


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _key_values(entries: Iterable[Mapping[str, Any]] | None) -> list[dict[str, str]]:
    return [{"key": e["key"], "value": e.get("value", "")} for e in entries or ()]


def _metric_order(metric: Mapping[str, Any]) -> tuple[Any, ...]:
    """A model's metrics by key, step, time, dataset and run (None first)."""
    return tuple((value is not None, value if value is not None else 0 if field in ("step", "timestamp") else "")
                 for field in ("key", "step", "timestamp", "dataset_name", "dataset_digest", "run_id")
                 for value in (metric.get(field),))


def _metric(entry: Mapping[str, Any]) -> dict[str, Any]:
    value = entry.get("value")
    return {
        "key": entry.get("key"),
        # the REST API writes NaN and infinities as "NaN", "Infinity", "-Infinity"
        "value": float(value) if value is not None else None,
        "step": int(entry.get("step") or 0),
        "timestamp": json_millis(entry.get("timestamp")),
        "dataset_name": _text(entry.get("dataset_name")),
        "dataset_digest": _text(entry.get("dataset_digest")),
        "run_id": _text(entry.get("run_id")),
    }


def models_arrow(models: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Logged models in the REST API's JSON shape as an Arrow table of :data:`MODELS_SCHEMA`
    (maps as lists of key/value structs)."""
    rows = []
    for model in models:
        info, data = model.get("info") or {}, model.get("data") or {}
        status = _text(info.get("status"))
        rows.append({
            "model_id": _text(info.get("model_id")),
            "name": _text(info.get("name")),
            "source_run_id": _text(info.get("source_run_id")),
            "status": status[len(STATUS_PREFIX):] if status and status.startswith(STATUS_PREFIX) else status,
            "model_type": _text(info.get("model_type")),
            "creation_time": json_millis(info.get("creation_timestamp_ms")),
            "last_updated_time": json_millis(info.get("last_updated_timestamp_ms")),
            "artifact_location": _text(info.get("artifact_uri")),
            "params": _key_values(data.get("params")),
            # one order whatever the source: the API answers in its store's order
            "metrics": sorted((_metric(m) for m in data.get("metrics") or ()), key=_metric_order),
            "tags": _key_values(info.get("tags")),
        })
    return pa.Table.from_pylist(rows, schema=MODELS_SCHEMA)


class ModelsFromSearch:
    """A :class:`~mlflow_spark_tools.tables.source_interface.ModelReader` over a search that answers
    logged models in the REST API's JSON shape (None: the source has no logged models)."""

    def __init__(self, search: Callable[[str], list[dict[str, Any]] | None]) -> None:
        self.search = search

    def logged_models(self, experiment_id: str) -> pa.Table | None:
        models = self.search(experiment_id)
        return None if models is None else models_arrow(models)


class ModelsWriter:
    """Writes the logged models of an experiment into ``<table>_models``.

    Args:
        db: the database of the tables.
        reader: reads the logged models (the tracking server's API, or its backend database).
    """

    def __init__(self, db: Database, reader: ModelReader) -> None:
        self.db = db
        self.reader = reader

    def write(self, table: str, experiment_id: str) -> tuple[str | None, int]:
        """Rewrite the table from the source's logged models; returns its quoted name and its
        row count, or (None, 0) when the source has no logged models (nothing is written)."""
        data = self.reader.logged_models(experiment_id)
        if data is None:
            return None, 0
        target = models_table_name(table)
        if data.num_rows == 0 and self.db.exists(target) and not self.db.has_rows(target):
            return self.db.shown(target), 0  # empty before and after: no commit
        self.db.overwrite(frame_with_maps(self.db.spark, data, MODEL_COLUMNS), target, MODEL_STATS_COLUMNS)
        return self.db.shown(target), data.num_rows


class ModelsTable:
    """``exp_<id>_models`` as a companion table of each refresh (:mod:`companion_tables`).

    Args:
        keep_on_server_error: a tracking server that fails to answer leaves the previous table as
            it is, with a warning (for sources whose runs do not come from the server).
    """

    index_column = "models_table"

    def __init__(self, db: Database, reader: ModelReader, *, keep_on_server_error: bool = False) -> None:
        self.db = db
        self.writer = ModelsWriter(db, reader)
        self.keep_on_server_error = keep_on_server_error

    def missing_reason(self, table: str) -> str | None:
        return None  # rewritten by every refresh

    def begin(self, job: Refresh, *, full: bool) -> ModelsRefresh:
        return ModelsRefresh(self, job.table)


class ModelsRefresh:
    """The models table of one refresh: rewritten after the run table, whatever runs changed."""

    def __init__(self, models: ModelsTable, table: str) -> None:
        self.models = models
        self.table = table
        self.written = False

    def add(self, runs: pa.Table) -> None:
        pass  # the models are read by experiment, not by run

    def finish(self, job: Refresh) -> None:
        summary = job.summary
        try:
            summary.models_table, summary.models = self.models.writer.write(self.table, job.experiment.experiment_id)
            self.written = summary.models_table is not None
        except TrackingServerError as exc:
            if not self.models.keep_on_server_error:
                raise
            log.warning("Experiment %s: the logged models table was not refreshed: %s",
                        job.experiment.experiment_id, exc)
            db, target = self.models.db, models_table_name(self.table)
            self.written = db.exists(target)
            summary.models_table = db.shown(target) if self.written else None

    def indexed(self) -> str | None:
        return models_table_name(self.table) if self.written else None

    def close(self) -> None:
        pass
