"""Best run and last run of an experiment, from its table when it exists, else from the server.

From the table it is one SQL query. From the tracking server the runs are paged in the order
asked for until the first one that qualifies. NaN metric values never make a run "best", and
only active runs count.

The best run by a metric's history (``aggregate`` ``min`` or ``max``: each run's lowest or
highest value at any step) comes from the ``_mmin_`` / ``_mmax_`` columns of a table built with
its metric history; without them, from the histories read from the server (every run that
logged the metric, many runs per request where the server allows).
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from mlflow_spark_tools.config import load_settings
from mlflow_spark_tools.core.identifiers import (
    experiment_table_name,
    quote,
    sql_string,
    validate_experiment_id,
)
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.runs.columns import METRIC, METRIC_MAX, METRIC_MAX_STEP, METRIC_MIN, METRIC_MIN_STEP
from mlflow_spark_tools.runs.run_batches import PARENT_RUN_TAG, run_name_of, run_tags
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.spark.engine import Engine
from mlflow_spark_tools.tables.index_table import INDEX_TABLE
from mlflow_spark_tools.tracking.pages import ACTIVE_ONLY
from mlflow_spark_tools.tracking.source import TrackingSource

TABLE, TRACKING_SERVER = "table", "tracking server"
LATEST, MIN, MAX = "latest", "min", "max"
AGGREGATES = (LATEST, MIN, MAX)
_AGGREGATE_KINDS = {LATEST: (METRIC, None), MIN: (METRIC_MIN, METRIC_MIN_STEP), MAX: (METRIC_MAX, METRIC_MAX_STEP)}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunChoice:
    """The run a query chose, and where the answer came from; an answer from a table says when
    the table was last refreshed (runs logged since are not in it)."""

    run_id: str
    run_name: str | None
    start_time: datetime | None
    metric: str | None
    value: float | None
    source: str
    table_refreshed_at: datetime | None = None
    aggregate: str = LATEST
    step: int | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.metric is None:
            del data["aggregate"], data["step"]
        for key in ("start_time", "table_refreshed_at"):
            data[key] = data[key].isoformat() if data[key] else None
        if self.source != TABLE:
            del data["table_refreshed_at"]
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


def refreshed_at(db: Database, experiment_id: str) -> datetime | None:
    """When the experiment's table was last refreshed (from ``<database>.experiments``)."""
    if not db.exists(INDEX_TABLE):
        return None
    rows = db.spark.sql(
        f"SELECT unix_millis(last_refreshed_at) AS at FROM {db.name(INDEX_TABLE)} "
        f"WHERE experiment_id = {sql_string(experiment_id)}"
    ).collect()
    return _from_millis(rows[0]["at"]) if rows else None


def table_column(db: Database, experiment_id: str, metric: str, kind: str = METRIC) -> str | None:
    """The column of the experiment's table holding ``metric`` (of ``kind``), if it has one."""
    rows = db.spark.sql(
        f"SELECT column_name FROM {db.name(experiment_table_name(experiment_id) + '_columns')} "
        f"WHERE kind = {sql_string(kind)} AND key = {sql_string(metric)}"
    ).collect()
    if not rows:
        return None
    column = rows[0]["column_name"]
    # a name reserved in the mapping for a key no run has any more is not in the table
    return column if column in db.columns(experiment_table_name(experiment_id)) else None


def best_run(
    experiment_id: str,
    metric: str,
    *,
    ascending: bool = True,
    ignore_nested: bool = False,
    aggregate: str = LATEST,
    engine: Engine | None = None,
    database: str = "mlflow_exp",
    source: TrackingSource | None = None,
) -> RunChoice | None:
    """The active run with the lowest (``ascending``) or highest value of ``metric``.

    Answered from ``<database>.exp_<id>`` when the table exists on ``engine``, else from the
    tracking ``source`` (default: the configured server, ``MLFLOW_TRACKING_URI``). Runs whose
    value is missing or NaN do not count; with ``ignore_nested`` neither do child runs. Returns
    None when no run qualifies; an unknown experiment is an ``ExperimentNotFoundError``.

    Args:
        aggregate: which value of each run counts: ``latest`` (MLflow's meaning of a run's
            metric), ``min`` or ``max`` (its lowest or highest value at any step; the choice
            names the step where the run first reached it).
    """
    if aggregate not in AGGREGATES:
        raise UsageError(f"Unknown aggregate {aggregate!r}: use one of {', '.join(AGGREGATES)}.")
    value_kind, step_kind = _AGGREGATE_KINDS[aggregate]
    db = _table_if_built(engine, database, experiment_id)
    column = None if db is None else table_column(db, experiment_id, metric, value_kind)
    step_column = None if db is None or step_kind is None else table_column(db, experiment_id, metric, step_kind)
    if db is not None and column is not None:
        nested = " AND parent_run_id IS NULL" if ignore_nested else ""
        order = "ASC" if ascending else "DESC"
        step = f"{quote(step_column)}" if step_column else "CAST(NULL AS BIGINT)"
        rows = db.spark.sql(
            f"SELECT run_id, run_name, unix_millis(start_time) AS start_ms, {quote(column)} AS value, "
            f"{step} AS step FROM {db.name(experiment_table_name(experiment_id))} "
            f"WHERE lifecycle_stage = 'active' AND {quote(column)} IS NOT NULL "
            f"AND NOT isnan({quote(column)}){nested} "
            f"ORDER BY value {order}, start_time DESC, run_id LIMIT 1"
        ).collect()
        if rows:
            r = rows[0]
            return RunChoice(r["run_id"], r["run_name"], _from_millis(r["start_ms"]), metric, r["value"], TABLE,
                             refreshed_at(db, experiment_id), aggregate, r["step"])
    if db is not None and column is None and aggregate != LATEST:
        log.info("The table %s has no metric history of %r (build-tables --metric-history); reading "
                 "the runs' histories from the tracking server.", db.shown(experiment_table_name(experiment_id)),
                 metric)
    elif db is not None and log.isEnabledFor(logging.INFO):
        # logged after the table's last refresh, or by no run at all: the server knows
        log.info("No run of the table %s has a value for %r (refreshed %s); asking the tracking server. "
                 "Refresh it with build-tables.", db.shown(experiment_table_name(experiment_id)), metric,
                 refreshed_at(db, experiment_id))
    source = source if source is not None else _default_source()
    if aggregate != LATEST:
        return _best_by_history(source, experiment_id, metric, ascending, ignore_nested, aggregate)
    order = "ASC" if ascending else "DESC"
    logged: set[str] = set()
    any_run = False
    for runs in _server_pages(source, experiment_id,
                              [f"metrics.{_quote_key(metric)} {order}", "attributes.start_time DESC"]):
        for run in runs:
            choice = _choice_from_json(run, metric, ignore_nested)
            if choice is not None:
                return choice
            logged.update(m["key"] for m in run.get("data", {}).get("metrics", ()))
            any_run = True
    if any_run:
        _refuse_unknown_metric(experiment_id, metric, logged)
    return None


def _refuse_unknown_metric(experiment_id: str, metric: str, logged: set[str]) -> None:
    """A metric no active run of the experiment logged is a usage error (a mistyped name),
    naming the metrics that are there; a metric whose values are all NaN, or only on runs
    left out (nested), is no run qualifying, and so is an experiment without runs."""
    if metric in logged:
        return
    close = difflib.get_close_matches(metric, sorted(logged), n=2)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else (
        f" Its runs' metrics: {', '.join(sorted(logged)[:20])}." if logged else " Its runs log no metric.")
    raise UsageError(f"No active run of experiment {experiment_id} logged the metric {metric!r}.{hint}")


def _best_by_history(source: TrackingSource, experiment_id: str, metric: str, ascending: bool,
                     ignore_nested: bool, aggregate: str) -> RunChoice | None:
    """The best run by each run's lowest or highest value, from histories read from the server."""
    from mlflow_spark_tools.tables.metric_history import summarize
    from mlflow_spark_tools.tables.rest_source import points_table
    from mlflow_spark_tools.tracking.metric_history import MetricHistoryReader

    candidates: dict[str, RunChoice] = {}
    logged: set[str] = set()
    any_run = False
    for runs in _server_pages(source, experiment_id, ["attributes.start_time DESC"]):
        for run in runs:
            keys = {m["key"] for m in run.get("data", {}).get("metrics", ())}
            logged |= keys
            any_run = True
            if metric in keys:
                choice = _choice_from_json(run, None, ignore_nested)
                if choice is not None:
                    candidates[choice.run_id] = choice
    if not candidates:
        if any_run:
            _refuse_unknown_metric(experiment_id, metric, logged)
        return None
    reader = MetricHistoryReader(source.client)
    best: tuple[Any, ...] | None = None
    for points in reader.read(metric, list(candidates)):
        if not points:
            continue
        found = summarize(points_table(points, metric))
        for row in found.to_pylist():
            value, step = (row["min"], row["min_step"]) if aggregate == MIN else (row["max"], row["max_step"])
            choice = candidates[row["run_id"]]
            start = choice.start_time.timestamp() if choice.start_time else float("-inf")
            # the same order as the table query: value, then the later start, then run id
            rank = (value if ascending else -value, -start, choice.run_id)
            if best is None or rank < best[0]:
                best = (rank, choice, value, step)
    if best is None:
        return None
    _, choice, value, step = best
    return RunChoice(choice.run_id, choice.run_name, choice.start_time, metric, value, TRACKING_SERVER,
                     aggregate=aggregate, step=step)


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
            f"SELECT run_id, run_name, unix_millis(start_time) AS start_ms "
            f"FROM {db.name(experiment_table_name(experiment_id))} "
            f"WHERE lifecycle_stage = 'active'{nested} ORDER BY start_time DESC, run_id LIMIT 1"
        ).collect()
        if not rows:
            return None
        r = rows[0]
        return RunChoice(r["run_id"], r["run_name"], _from_millis(r["start_ms"]), None, None, TABLE,
                         refreshed_at(db, experiment_id))
    source = source if source is not None else _default_source()
    for runs in _server_pages(source, experiment_id, ["attributes.start_time DESC"]):
        for run in runs:
            choice = _choice_from_json(run, None, ignore_nested)
            if choice is not None:
                return choice
    return None


def _default_source() -> TrackingSource:
    """The tracking server of the package configuration (``MLFLOW_TRACKING_URI`` ...)."""
    return TrackingSource.from_settings(load_settings())


def _server_pages(source: TrackingSource, experiment_id: str, order_by: list[str]) -> Iterator[list[dict[str, Any]]]:
    """Pages of the experiment's active runs from the server; an unknown or malformed id is
    a usage error naming it (a search of an unknown id would answer with no runs)."""
    source.experiment_by_id(validate_experiment_id(experiment_id))
    return source.iter_pages(experiment_id, "", ACTIVE_ONLY, page_size=200, order_by=order_by)


def _from_millis(millis: int | None) -> datetime | None:
    """A start time read from a table, in UTC. The query asks for epoch milliseconds: a
    timestamp collected as is arrives as a naive wall-clock time of the session's time zone
    (the user's, for the embedded engine), while the server path answers in UTC."""
    return None if millis is None else datetime.fromtimestamp(int(millis) / 1000, tz=timezone.utc)


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
