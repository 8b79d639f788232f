"""The table build job: resolve the experiments asked for, then build or refresh each table,
and the registry tables when asked for.

An experiment that cannot be built (unknown id or name, a tracking server error) is reported
and the others are still built; a registry that cannot be read is reported likewise. The exit
code says whether everything succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlflow_spark_tools.config import Settings
from mlflow_spark_tools.core.identifiers import validate_database
from mlflow_spark_tools.core.progress import Progress
from mlflow_spark_tools.errors import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, UsageError
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.spark.engine import Engine, EngineHandle
from mlflow_spark_tools.tables.builder import ExperimentTableBuilder
from mlflow_spark_tools.tables.metric_history import HistorySelection
from mlflow_spark_tools.tables.refresh_summary import RefreshSummary
from mlflow_spark_tools.tables.registry_tables import RegistrySummary, refresh_registry_tables
from mlflow_spark_tools.tables.source_plans import AskedExperiments, BuildTarget
from mlflow_spark_tools.tables.source_registry import open_source
from mlflow_spark_tools.tracking.model_search import RegistryReader
from mlflow_spark_tools.tracking.source import ExperimentInfo, TrackingSource

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """Summaries of every experiment asked for and of the registry tables (when asked for),
    and the exit code they add up to."""

    summaries: list[RefreshSummary] = field(default_factory=list)
    registry: RegistrySummary | None = None

    @property
    def exit_code(self) -> int:
        outcomes: list[RefreshSummary | RegistrySummary] = list(self.summaries)
        if self.registry is not None:
            outcomes.append(self.registry)
        failed = [s for s in outcomes if not s.ok]
        if not failed:
            return EXIT_OK
        if len(failed) < len(outcomes):
            return EXIT_PARTIAL
        if all(s.error_exit_code == EXIT_USAGE for s in failed):
            return EXIT_USAGE
        return EXIT_FAILURE


def build_experiment_tables(
    settings: Settings,
    *,
    experiment_ids: Sequence[str] = (),
    experiment_names: Sequence[str] = (),
    all_experiments: bool = False,
    full_refresh: bool = False,
    include_deleted: bool = False,
    metric_history: str | list[str] | None = None,
    registry: bool = False,
    engine: Engine | None = None,
    spark: SparkSession | None = None,
) -> BuildResult:
    """Build or refresh the tables of the experiments asked for, and the registry tables.

    Args:
        settings: configuration (tracking URI, database, page size, rate limits, engine).
        experiment_ids: experiments by id.
        experiment_names: experiments by name.
        all_experiments: every active experiment.
        full_refresh: rebuild instead of refreshing incrementally.
        include_deleted: keep deleted runs (``lifecycle_stage = 'deleted'``).
        metric_history: ``all`` or metric keys whose every point goes to
            ``exp_<id>_metrics``; None takes ``tables.metric_history`` of the settings, and
            ``none`` builds no history.
        registry: also refresh ``registered_models`` and ``model_versions`` from the model
            registry (``tables.registry_uri``, else MLflow's registry URI); with no experiment
            asked for, only those.
        engine: an engine to use; else one is obtained from ``spark`` or the settings.
        spark: a Spark session to use.

    Raises:
        UsageError: when nothing was asked for or the database name is invalid (before
            anything is written).
    """
    if not (experiment_ids or experiment_names or all_experiments or registry):
        raise UsageError("Say which experiments: --experiment-ids, --experiment-names or --all "
                         "(or --registry for the registry tables).")
    validate_database(settings.tables.database)
    selection = HistorySelection.parse(
        settings.tables.metric_history if metric_history is None else metric_history)
    result = BuildResult()
    with ExitStack() as stack:
        source = open_source(settings, stack)
        tracking = source.tracking() if registry else None  # set up before anything is built
        handle = stack.enter_context(EngineHandle(engine, spark))

        def run_on() -> Engine:
            return handle.get(settings.engine.remote, settings.engine.warehouse)

        asked = AskedExperiments(experiment_ids, experiment_names, all_experiments)
        groups = source.experiment_groups(asked, result.summaries, run_on)
        if not groups and not registry:
            return result
        running = run_on()
        db = Database(running, settings.tables.database, settings.tables.deletion_vectors)
        target = BuildTarget(running, db, settings, selection)
        total = sum(len(group.experiments) for group in groups)
        first = 1
        for group in groups:
            _build_all(group.builder(target), group.experiments, result, full_refresh, include_deleted,
                       (first, total))
            first += len(group.experiments)
        if tracking is not None:
            result.registry = _build_registry(db, tracking, settings.tables.registry_uri)
    return result


def _build_all(builder: ExperimentTableBuilder, experiments: list[ExperimentInfo], result: BuildResult,
               full_refresh: bool, include_deleted: bool, numbering: tuple[int, int]) -> None:
    first, total = numbering
    for number, exp in enumerate(experiments, first):
        result.summaries.append(_build_one(builder, exp, f"{number}/{total}", full_refresh=full_refresh,
                                           include_deleted=include_deleted))


def _build_registry(db: Database, source: TrackingSource, registry_uri: str | None) -> RegistrySummary:
    """The registry tables; a registry that cannot be read becomes the summary's error."""
    summary = refresh_registry_tables(db, RegistryReader(source.client, registry_uri))
    if summary.ok:
        log.info("Registry %s: %d registered models into %s, %d versions into %s, %.1f s",
                 summary.registry_uri, summary.registered_models, summary.registered_models_table,
                 summary.model_versions, summary.model_versions_table, summary.seconds)
    else:
        log.warning("Registry %s failed: %s", summary.registry_uri, summary.error)
    return summary


def _build_one(builder: ExperimentTableBuilder, exp: ExperimentInfo, position: str, *, full_refresh: bool,
               include_deleted: bool) -> RefreshSummary:
    """One experiment's table; a failure becomes its summary, so the others are still built."""
    try:
        with Progress(f"Experiment {position} ({exp.experiment_id}): runs fetched", "runs") as progress:
            builder.on_runs = progress.update
            try:
                summary = builder.refresh(exp, full_refresh=full_refresh, include_deleted=include_deleted)
            finally:
                builder.on_runs = None
    except Exception as exc:
        # the package's own errors, and any other (the engine's, a library's): this experiment
        # fails with one line, the others are still built
        summary = RefreshSummary.failed(exp.experiment_id, exp.name, exc)
        log.debug("Experiment %s (%s) failed", exp.experiment_id, exp.name, exc_info=True)
        log.warning("Experiment %s %s failed: %s", position, exp.experiment_id, summary.error)
        return summary
    log.info("Experiment %s %s: %s refresh of %s%s, %d runs fetched, %d rows, %.1f s",
             position, exp.experiment_id, summary.mode, summary.table,
             f" ({summary.reason})" if summary.reason else "", summary.runs_fetched, summary.row_count,
             summary.seconds)
    if summary.metrics_table:
        log.info("Experiment %s %s: metric history of %d runs, %d points in %d requests into %s",
                 position, exp.experiment_id, summary.history_runs, summary.history_points,
                 summary.history_requests, summary.metrics_table)
    log.info("Experiment %s %s: %d dataset inputs into %s; %s", position, exp.experiment_id, summary.inputs,
             summary.inputs_table, f"{summary.models} logged models into {summary.models_table}"
             if summary.models_table else "no logged models on this server")
    if summary.history_truncated:
        log.warning("Experiment %s %s: %d metric histories were longer than tables.max_history_points "
                    "and were cut there: %s", position, exp.experiment_id, len(summary.history_truncated),
                    ", ".join(summary.history_truncated[:10]))
    return summary
