"""The table build job: resolve the experiments asked for, then build or refresh each table,
and the registry tables when asked for.

An experiment that cannot be built (unknown id or name, a tracking server error) is reported
and the others are still built; a registry that cannot be read is reported likewise. The exit
code says whether everything succeeded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from mlflow_spark_tools.backend_store.connection import BackendDatabase
from mlflow_spark_tools.backend_store.history_reader import DatabaseHistoryReader
from mlflow_spark_tools.backend_store.model_reader import DatabaseModelSearch
from mlflow_spark_tools.backend_store.run_reader import DatabaseRunReader
from mlflow_spark_tools.config import Settings
from mlflow_spark_tools.core.identifiers import validate_database, validate_experiment_id
from mlflow_spark_tools.core.progress import Progress
from mlflow_spark_tools.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    ExperimentNotFoundError,
    UsageError,
)
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.spark.engine import Engine, EngineHandle
from mlflow_spark_tools.tables.builder import ExperimentTableBuilder, RefreshSummary
from mlflow_spark_tools.tables.fetch import RunFetcher
from mlflow_spark_tools.tables.metric_history import HistorySelection, MetricHistoryWriter
from mlflow_spark_tools.tables.models_table import ModelsWriter
from mlflow_spark_tools.tables.registry_tables import RegistrySummary, refresh_registry_tables
from mlflow_spark_tools.tables.system_tables import (
    RETENTION_DAYS,
    SystemExperiment,
    SystemTables,
    SystemTablesUnavailable,
)
from mlflow_spark_tools.tables.system_tables_builder import SystemTablesBuilder
from mlflow_spark_tools.tracking.metric_history import MetricHistoryReader
from mlflow_spark_tools.tracking.model_search import LoggedModelSearch, RegistryReader
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


class _ExperimentLookup(Protocol):
    """Where experiments are looked up: the tracking server, or its backend database."""

    def experiment_by_id(self, experiment_id: str) -> Any: ...
    def experiment_by_name(self, name: str) -> Any: ...
    def all_experiments(self) -> list[Any]: ...


def _experiment_info(found: Any) -> ExperimentInfo:
    return ExperimentInfo(str(found.experiment_id), found.name, found.lifecycle_stage, found.artifact_location)


def _resolve(
    source: _ExperimentLookup,
    experiment_ids: Sequence[str],
    experiment_names: Sequence[str],
    all_experiments: bool,
    result: BuildResult,
    elsewhere: tuple[list[str], list[str]] | None = None,
) -> list[Any]:
    """The experiments asked for, as ``source`` answers them (once each). One it does not know
    (or an invalid id) becomes a failed summary in ``result``; one it answers None for (the
    system tables: not held there) goes to ``elsewhere`` (ids, names), for another source."""
    found: list[Any] = []
    if all_experiments:
        found.extend(source.all_experiments())
    asked = [(str(i), None) for i in experiment_ids] + [(None, name) for name in experiment_names]
    for experiment_id, name in asked:
        try:
            hit = (source.experiment_by_id(validate_experiment_id(experiment_id)) if experiment_id is not None
                   else source.experiment_by_name(str(name)))
        except (ExperimentNotFoundError, UsageError) as exc:
            result.summaries.append(RefreshSummary.failed(experiment_id or "?", name, exc))
            continue
        if hit is not None:
            found.append(hit)
        elif elsewhere is not None:
            elsewhere[0 if experiment_id is not None else 1].append(experiment_id or str(name))
    unique: dict[str, Any] = {}
    for experiment in found:
        unique.setdefault(str(experiment.experiment_id), experiment)
    return list(unique.values())


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
    if settings.tables.source == "system-tables":
        return _build_from_system_tables(settings, selection, result, experiment_ids, experiment_names,
                                         all_experiments, full_refresh, include_deleted, registry, engine, spark)
    with ExitStack() as stack:
        backend = _backend_database(settings, stack)
        run_reader = DatabaseRunReader(backend) if backend is not None else None
        source = TrackingSource.from_settings(settings) if backend is None or registry else None
        lookup: _ExperimentLookup = run_reader if run_reader is not None else source  # type: ignore[assignment]
        experiments = [_experiment_info(e) for e in _resolve(lookup, experiment_ids, experiment_names,
                                                             all_experiments, result)]
        if not experiments and not registry:
            return result
        handle = stack.enter_context(EngineHandle(engine, spark))
        run_on = handle.get(settings.engine.remote, settings.engine.warehouse)
        db = Database(run_on, settings.tables.database, settings.tables.deletion_vectors)
        if experiments:
            builder = _builder(settings, run_on, db, selection, source, backend, run_reader)
            _build_all(builder, experiments, result, full_refresh, include_deleted)
        if registry:
            assert source is not None
            result.registry = _build_registry(db, source, settings.tables.registry_uri)
    return result


def _build_all(builder: ExperimentTableBuilder, experiments: list[ExperimentInfo], result: BuildResult,
               full_refresh: bool, include_deleted: bool, numbering: tuple[int, int] | None = None) -> None:
    first, total = numbering or (1, len(experiments))
    for number, exp in enumerate(experiments, first):
        result.summaries.append(_build_one(builder, exp, f"{number}/{total}", full_refresh=full_refresh,
                                           include_deleted=include_deleted))


def _build_from_system_tables(settings: Settings, selection: HistorySelection | None, result: BuildResult,
                              experiment_ids: Sequence[str], experiment_names: Sequence[str],
                              all_experiments: bool, full_refresh: bool, include_deleted: bool, registry: bool,
                              engine: Engine | None, spark: SparkSession | None) -> BuildResult:
    """Source ``system-tables``: the experiments the system tables hold are built from them inside
    Spark; any other experiment asked for (not in them: created and unchanged before they began,
    in another region) from the tracking server's REST API, with a warning. When the system
    tables cannot be read at all, every experiment is built through REST."""
    source = TrackingSource.from_settings(settings)
    with EngineHandle(engine, spark) as handle:
        run_on = handle.get(settings.engine.remote, settings.engine.warehouse)
        db = Database(run_on, settings.tables.database, settings.tables.deletion_vectors)
        tables = SystemTables(run_on.spark, settings.tables.system_schema, settings.tables.system_workspace_id)
        system: SystemTables | None = tables
        try:
            tables.check()
        except SystemTablesUnavailable as exc:
            log.warning("%s Building every experiment through the REST API.", exc)
            system = None
        found_in_system: list[SystemExperiment] = []
        by_id, by_name = list(experiment_ids), list(experiment_names)
        if system is not None:
            by_id, by_name = [], []
            found_in_system = _resolve(system, experiment_ids, experiment_names, all_experiments, result,
                                       elsewhere=(by_id, by_name))
            old = [e.experiment_id for e in found_in_system if e.may_miss_runs(int(time.time() * 1000))]
            if old:
                log.warning("Experiments %s are older than what the system tables surely hold (they record MLflow "
                            "data from 2025-09-02 on and keep %d days): runs not updated since may be missing "
                            "from their tables; build them once with --source rest or database to compare",
                            ", ".join(old), RETENTION_DAYS)
            if by_id or by_name:
                log.warning("Not in the system tables %s (they hold MLflow data from 2025-09-02 on): %s; "
                            "built through the REST API", settings.tables.system_schema,
                            ", ".join([*by_id, *by_name]))
        from_system = [_experiment_info(e) for e in found_in_system]
        through_rest = [_experiment_info(e) for e in _resolve(source, by_id, by_name, all_experiments and system is None,
                                                                result)]
        seen = {e.experiment_id for e in from_system}
        through_rest = [e for e in through_rest if e.experiment_id not in seen]
        total = len(from_system) + len(through_rest)
        models = ModelsWriter(db, LoggedModelSearch(source.client))
        if from_system:
            assert system is not None
            builder: ExperimentTableBuilder = SystemTablesBuilder(
                run_on, system, settings.tables.database, settings.tables.watermark_margin_seconds,
                selection=selection, models=models, refresh_by_cost=settings.tables.refresh_by_cost,
                deletion_vectors=settings.tables.deletion_vectors)
            _build_all(builder, from_system, result, full_refresh, include_deleted, (1, total))
        if through_rest:
            rest = _builder(settings, run_on, db, selection, source, None, None)
            _build_all(rest, through_rest, result, full_refresh, include_deleted, (len(from_system) + 1, total))
        if registry:
            result.registry = _build_registry(db, source, settings.tables.registry_uri)
    return result


def _backend_database(settings: Settings, stack: ExitStack) -> BackendDatabase | None:
    """The backend database of source ``database`` (closed with ``stack``), else None."""
    if settings.tables.source != "database":
        return None
    if not settings.tables.backend_store_uri:
        raise UsageError("--source database needs --backend-store-uri (or MLFLOW_SPARK_TOOLS_BACKEND_STORE_URI, "
                         "tables.backend_store_uri): the SQLAlchemy URI of the tracking server's database.")
    backend = stack.enter_context(BackendDatabase(settings.tables.backend_store_uri))
    log.info("Reading runs from backend store %s (%s reader)", backend.description, backend.reader)
    return backend


def _builder(settings: Settings, run_on: Engine, db: Database, selection: HistorySelection | None,
             source: TrackingSource | None, backend: BackendDatabase | None,
             run_reader: DatabaseRunReader | None) -> ExperimentTableBuilder:
    """The table builder of the configured source: the tracking server's API, or its backend
    database for runs, histories and logged models alike."""
    tables = settings.tables
    fetcher: RunFetcher | DatabaseRunReader
    history_reader: MetricHistoryReader | DatabaseHistoryReader
    models: LoggedModelSearch | DatabaseModelSearch
    if backend is not None and run_reader is not None:
        fetcher = run_reader
        history_reader = DatabaseHistoryReader(backend, tables.max_history_points)
        models = DatabaseModelSearch(backend)
    else:
        assert source is not None
        fetcher = RunFetcher(source, tables.page_size, tables.fetch_workers)
        history_reader = MetricHistoryReader(source.client, tables.max_history_points)
        models = LoggedModelSearch(source.client)
    history = MetricHistoryWriter(db, history_reader, tables.history_workers) if selection is not None else None
    return ExperimentTableBuilder(run_on, fetcher, tables.database, tables.watermark_margin_seconds,
                                  history=history, selection=selection, models=ModelsWriter(db, models),
                                  chunk_runs=tables.chunk_runs, refresh_by_cost=tables.refresh_by_cost,
                                  deletion_vectors=tables.deletion_vectors)


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
            fetcher = builder.fetcher
            if fetcher is not None:
                fetcher.on_runs = progress.update
            try:
                summary = builder.refresh(exp, full_refresh=full_refresh, include_deleted=include_deleted)
            finally:
                if fetcher is not None:
                    fetcher.on_runs = None
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
