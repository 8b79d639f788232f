"""Helpers for integration tests: logging runs and reading tables back."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow.entities import Metric, Param

from mlflow_spark_tools.spark.arrow import to_arrow
from mlflow_spark_tools.tables.build import build_experiment_tables


def log_run(client, experiment_id, params=None, metrics=None, tags=None, finish=True,
            run_name=None, parent_run_id=None):
    """Create a run with params, metrics (value or list of (value, step)) and tags."""
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metric_entities = []
    for key, value in (metrics or {}).items():
        points = value if isinstance(value, list) else [(value, 0)]
        metric_entities += [Metric(key, float(v), now + i, step) for i, (v, step) in enumerate(points)]
    client.log_batch(
        run_id,
        metrics=metric_entities,
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
    )
    if finish:
        client.set_terminated(run_id)
    return run_id


def build(settings, experiment_id, engine, **kwargs):
    result = build_experiment_tables(settings, experiment_ids=[experiment_id], engine=engine, **kwargs)
    assert result.exit_code == 0, [s.error for s in result.summaries]
    return result.summaries[0]


def read_table(engine, database, experiment_id):
    """The experiment table as a list of row dicts sorted by run_id."""
    table = to_arrow(engine.spark.sql(f"SELECT * FROM {database}.exp_{experiment_id} ORDER BY run_id"))
    return table.to_pylist()


def column_types(engine, database, experiment_id):
    return {f.name: f.dataType.simpleString()
            for f in engine.spark.table(f"{database}.exp_{experiment_id}").schema.fields}


def column_map(engine, database, experiment_id):
    rows = engine.spark.table(f"{database}.exp_{experiment_id}_columns").collect()
    return {(r["kind"], r["key"]): (r["column_name"], r["data_type"]) for r in rows}


def warehouse_dir(engine) -> Path:
    """The directory holding the tables' files: the engine's warehouse, or the directory where
    a classic session's catalog puts managed tables (``spark.sql.warehouse.dir``)."""
    if engine.warehouse is not None:
        return engine.warehouse
    return Path(unquote(urlparse(engine.spark.conf.get("spark.sql.warehouse.dir")).path))


def table_dir(engine, database, table) -> Path:
    """Where a table's files are: ``<warehouse>/<database>/<table>`` under the engine's warehouse,
    else where the catalog put it (``<database>.db/<table>`` for managed tables)."""
    location = engine.table_location(database, table)
    return Path(location) if location is not None else warehouse_dir(engine) / f"{database}.db" / table
