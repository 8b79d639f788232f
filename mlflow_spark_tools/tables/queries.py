"""Best run and last run of an experiment, from its table when it exists, else from the server.

From the table it is one SQL query. From the tracking server the runs are paged in the order
asked for until the first one that qualifies. NaN metric values never make a run "best", and
only active runs count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from mlflow_spark_tools.core.identifiers import experiment_table_name, quote, sql_string
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.runs.columns import METRIC
from mlflow_spark_tools.runs.run_batches import PARENT_RUN_TAG, run_name_of, run_tags
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.spark.engine import Engine
from mlflow_spark_tools.tracking.pages import ACTIVE_ONLY
from mlflow_spark_tools.tracking.source import TrackingSource

TABLE, TRACKING_SERVER = "table", "tracking server"


@dataclass(frozen=True)
class RunChoice:
    """The run a query chose, and where the answer came from."""

    run_id: str
    run_name: str | None
    start_time: datetime | None
    metric: str | None
    value: float | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["start_time"] = self.start_time.isoformat() if self.start_time else None
        return data


def _table_if_built(engine: Engine | None, database: str, experiment_id: str) -> Database | None:
    if engine is None:
        return None
    db = Database(engine, database)
    if db.exists(experiment_table_name(experiment_id)) and db.exists(
        experiment_table_name(experiment_id) + "_columns"
    ):
        return db
    return None


def _metric_column(db: Database, experiment_id: str, metric: str) -> str | None:
    rows = db.spark.sql(
        f"SELECT column_name FROM {db.name(experiment_table_name(experiment_id) + '_columns')} "
        f"WHERE kind = '{METRIC}' AND key = {sql_string(metric)}"
    ).collect()
    return rows[0]["column_name"] if rows else None


def best_run(
    experiment_id: str,
    metric: str,
    *,
    ascending: bool = True,
    ignore_nested: bool = False,
    engine: Engine | None = None,
    database: str = "mlflow_exp",
    source: TrackingSource | None = None,
) -> RunChoice | None:
    """The active run with the lowest (``ascending``) or highest value of ``metric``.

    Answered from ``<database>.exp_<id>`` when the table exists on ``engine``, else from the
    tracking ``source``. Runs whose value is missing or NaN do not count; with
    ``ignore_nested`` neither do child runs. Returns None when no run qualifies.
    """
    db = _table_if_built(engine, database, experiment_id)
    if db is not None:
        column = _metric_column(db, experiment_id, metric)
        if column is None:
            return None
        nested = " AND parent_run_id IS NULL" if ignore_nested else ""
        order = "ASC" if ascending else "DESC"
        rows = db.spark.sql(
            f"SELECT run_id, run_name, start_time, {quote(column)} AS value "
            f"FROM {db.name(experiment_table_name(experiment_id))} "
            f"WHERE lifecycle_stage = 'active' AND {quote(column)} IS NOT NULL "
            f"AND NOT isnan({quote(column)}){nested} "
            f"ORDER BY value {order}, start_time DESC, run_id LIMIT 1"
        ).collect()
        if not rows:
            return None
        r = rows[0]
        return RunChoice(r["run_id"], r["run_name"], r["start_time"], metric, r["value"], TABLE)
    if source is None:
        raise UsageError("best_run needs an engine with the table or a tracking source.")
    order = "ASC" if ascending else "DESC"
    for runs in source.iter_pages(
        experiment_id,
        "",
        ACTIVE_ONLY,
        page_size=200,
        order_by=[f"metrics.{_quote_key(metric)} {order}", "attributes.start_time DESC"],
    ):
        for run in runs:
            choice = _choice_from_json(run, metric, ignore_nested)
            if choice is not None:
                return choice
    return None


def last_run(
    experiment_id: str,
    *,
    ignore_nested: bool = False,
    engine: Engine | None = None,
    database: str = "mlflow_exp",
    source: TrackingSource | None = None,
) -> RunChoice | None:
    """The active run that started last; None for an experiment without runs."""
    db = _table_if_built(engine, database, experiment_id)
    if db is not None:
        nested = " AND parent_run_id IS NULL" if ignore_nested else ""
        rows = db.spark.sql(
            f"SELECT run_id, run_name, start_time "
            f"FROM {db.name(experiment_table_name(experiment_id))} "
            f"WHERE lifecycle_stage = 'active'{nested} ORDER BY start_time DESC, run_id LIMIT 1"
        ).collect()
        if not rows:
            return None
        r = rows[0]
        return RunChoice(r["run_id"], r["run_name"], r["start_time"], None, None, TABLE)
    if source is None:
        raise UsageError("last_run needs an engine with the table or a tracking source.")
    for runs in source.iter_pages(
        experiment_id, "", ACTIVE_ONLY, page_size=200, order_by=["attributes.start_time DESC"]
    ):
        for run in runs:
            choice = _choice_from_json(run, None, ignore_nested)
            if choice is not None:
                return choice
    return None


def _quote_key(key: str) -> str:
    return "`" + key.replace("`", "") + "`"


def _choice_from_json(run: dict[str, Any], metric: str | None, ignore_nested: bool) -> RunChoice | None:
    data = run.get("data", {})
    tags = run_tags(run)
    if ignore_nested and PARENT_RUN_TAG in tags:
        return None
    value = None
    if metric is not None:
        values = [float(m["value"]) for m in data.get("metrics", ()) if m["key"] == metric]
        if not values or math.isnan(values[0]):
            return None
        value = values[0]
    info = run["info"]
    start = info.get("start_time")
    return RunChoice(
        run_id=info.get("run_id") or info["run_uuid"],
        run_name=run_name_of(info, tags),
        start_time=datetime.fromtimestamp(int(start) / 1000, tz=timezone.utc) if start else None,
        metric=metric,
        value=value,
        source=TRACKING_SERVER,
    )
