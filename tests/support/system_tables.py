"""Delta tables in the layout of Databricks' MLflow system tables, filled from a real MLflow server.

``experiments_latest``, ``runs_latest`` and ``run_metrics_history`` are written into one schema
of the embedded engine with the columns of Databricks' "MLflow system tables reference" (the
layout ``mlflow_spark_tools.tables.system_tables`` reads), from what ``MlflowClient`` returns for
the experiments: every run (deleted ones with ``delete_time``), its params and tags as maps, its
metrics' min, max and latest values in ``aggregated_metrics``, and every logged point.
"""

from __future__ import annotations

import uuid

import pyarrow as pa
from mlflow.entities import ViewType

from mlflow_spark_tools.spark.arrow import frame_with_maps

ACCOUNT = "00000000-0000-0000-0000-000000000000"
WORKSPACE = "1234567890123456"
MS = pa.timestamp("ms", tz="UTC")
EXPERIMENTS = (("account_id", "string"), ("update_time", "timestamp"), ("delete_time", "timestamp"),
               ("experiment_id", "string"), ("workspace_id", "string"), ("name", "string"),
               ("create_time", "timestamp"))
RUNS = (("account_id", "string"), ("update_time", "timestamp"), ("delete_time", "timestamp"),
        ("workspace_id", "string"), ("run_id", "string"), ("experiment_id", "string"), ("created_by", "string"),
        ("start_time", "timestamp"), ("end_time", "timestamp"), ("run_name", "string"), ("status", "string"),
        ("params", "map<string,string>"), ("tags", "map<string,string>"),
        ("aggregated_metrics",
         "array<struct<metric_name:string,latest_value:double,min_value:double,max_value:double>>"))
HISTORY = (("account_id", "string"), ("insert_time", "timestamp"), ("record_id", "string"),
           ("workspace_id", "string"), ("experiment_id", "string"), ("run_id", "string"), ("metric_name", "string"),
           ("metric_time", "timestamp"), ("metric_step", "bigint"), ("metric_value", "double"))


def _entries(mapping: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in sorted(mapping.items())]


def fill(engine, client, experiment_ids, schema: str = "sysml", updated: dict[str, int] | None = None,
         workspace_id: str = WORKSPACE, step_column: str = "metric_step", created_ms: int | None = None) -> None:
    """(Re)write the three tables with the current state of the experiments.

    Args:
        updated: ``update_time`` (epoch ms) of given runs; the others get their end time (else
            their start time), as if nothing happened to them after.
        step_column: ``metric_step`` as the reference documents it, or ``step``.
        created_ms: the experiments' ``create_time`` instead of their own.
    """
    updated = updated or {}
    experiments, runs, points = [], [], []
    for experiment_id in experiment_ids:
        exp = client.get_experiment(experiment_id)
        experiments.append({
            "account_id": ACCOUNT, "update_time": exp.last_update_time, "experiment_id": str(experiment_id),
            "delete_time": exp.last_update_time if exp.lifecycle_stage == "deleted" else None,
            "workspace_id": workspace_id, "name": exp.name,
            "create_time": exp.creation_time if created_ms is None else created_ms})
        # a twin in another workspace of the region, which the build must not read
        experiments.append({**experiments[-1], "workspace_id": "999", "name": exp.name + " (elsewhere)"})
        for run in client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=50000):
            info, data = run.info, run.data
            update = updated.get(info.run_id, info.end_time or info.start_time)
            aggregated = []
            for key, latest in sorted(data.metrics.items()):
                history = client.get_metric_history(info.run_id, key)
                values = [m.value for m in history]
                aggregated.append({"metric_name": key, "latest_value": latest, "min_value": min(values),
                                   "max_value": max(values)})
                for m in history:
                    points.append({"account_id": ACCOUNT, "insert_time": update, "record_id": uuid.uuid4().hex,
                                   "workspace_id": workspace_id, "experiment_id": str(experiment_id),
                                   "run_id": info.run_id, "metric_name": key, "metric_time": m.timestamp,
                                   "metric_step": m.step, "metric_value": m.value})
            runs.append({
                "account_id": ACCOUNT, "update_time": update,
                "delete_time": update if info.lifecycle_stage == "deleted" else None,
                "workspace_id": workspace_id, "run_id": info.run_id, "experiment_id": str(experiment_id),
                "created_by": info.user_id, "start_time": info.start_time, "end_time": info.end_time,
                "run_name": info.run_name, "status": info.status, "params": _entries(data.params),
                "tags": _entries(data.tags), "aggregated_metrics": aggregated})
    history = HISTORY if step_column == "metric_step" else tuple(
        ("step" if n == "metric_step" else n, t) for n, t in HISTORY)
    if step_column != "metric_step":
        points = [{("step" if k == "metric_step" else k): v for k, v in p.items()} for p in points]
    engine.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}").collect()
    for name, columns, rows in (("experiments_latest", EXPERIMENTS, experiments), ("runs_latest", RUNS, runs),
                                ("run_metrics_history", history, points)):
        data = pa.Table.from_pylist(rows, schema=_arrow_schema(columns))
        frame = frame_with_maps(engine.spark, data, columns)
        location = engine.table_location(schema, name)
        writer = frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        if location is not None:
            writer = writer.option("path", location)
        writer.saveAsTable(f"{schema}.{name}")


def _arrow_schema(columns) -> pa.Schema:
    entries = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
    aggregated = pa.list_(pa.struct([("metric_name", pa.string()), ("latest_value", pa.float64()),
                                     ("min_value", pa.float64()), ("max_value", pa.float64())]))
    types = {"string": pa.string(), "timestamp": MS, "bigint": pa.int64(), "double": pa.float64(),
             "map<string,string>": entries}
    return pa.schema([(n, aggregated if t.startswith("array") else types[t]) for n, t in columns])
