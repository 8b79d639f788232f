"""Source ``system-tables``: the experiments the Databricks MLflow system tables hold are built
from them inside Spark (:mod:`~mlflow_spark_tools.tables.spark_refresh`); any other experiment
asked for (not in them: created and unchanged before they began, in another region) from the
tracking server's REST API, with a warning. When the system tables cannot be read at all, every
experiment is built through REST. The logged models table comes from the REST API."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack

from mlflow_spark_tools.config import Settings
from mlflow_spark_tools.spark.engine import Engine
from mlflow_spark_tools.tables.builder import ExperimentTableBuilder
from mlflow_spark_tools.tables.models_table import ModelsFromSearch, ModelsTable
from mlflow_spark_tools.tables.refresh_summary import RefreshSummary
from mlflow_spark_tools.tables.rest_source import RestSource
from mlflow_spark_tools.tables.source_interface import experiment_info
from mlflow_spark_tools.tables.source_plans import AskedExperiments, BuildTarget, ExperimentGroup, resolve
from mlflow_spark_tools.tables.spark_refresh import SparkRunRefresh
from mlflow_spark_tools.tables.system_tables import (
    RETENTION_DAYS,
    SystemExperiment,
    SystemTables,
    SystemTablesUnavailable,
)
from mlflow_spark_tools.tracking.model_search import LoggedModelSearch
from mlflow_spark_tools.tracking.source import TrackingSource

log = logging.getLogger(__name__)


class SystemTablesSource:
    """Databricks' MLflow system tables, with the tracking server for what they do not hold."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rest = RestSource(settings)
        self.system: SystemTables | None = None

    @classmethod
    def open(cls, settings: Settings, stack: ExitStack) -> SystemTablesSource:
        return cls(settings)

    def tracking(self) -> TrackingSource:
        return self.rest.tracking()

    def experiment_groups(self, asked: AskedExperiments, failed: list[RefreshSummary],
                          engine: Callable[[], Engine]) -> list[ExperimentGroup]:
        tables = self.settings.tables
        system: SystemTables | None = None
        try:
            reachable = SystemTables(engine().spark, tables.system_schema, tables.system_workspace_id)
            reachable.check()
            system = reachable
        except SystemTablesUnavailable as exc:
            log.warning("%s Building every experiment through the REST API.", exc)
        self.system = system
        found: list[SystemExperiment] = []
        by_id, by_name = list(asked.ids), list(asked.names)
        if system is not None:
            by_id, by_name = [], []
            found = resolve(system, asked, failed, elsewhere=(by_id, by_name))
            self._warn_missing(found, by_id, by_name)
        from_system = [experiment_info(e) for e in found]
        seen = {e.experiment_id for e in from_system}
        rest_asked = AskedExperiments(by_id, by_name, asked.all and system is None)
        through_rest = [e for e in (experiment_info(x) for x in resolve(self.rest.tracking(), rest_asked, failed))
                        if e.experiment_id not in seen]
        groups = [ExperimentGroup(from_system, self.builder)] if from_system else []
        if through_rest:
            groups.append(ExperimentGroup(through_rest, self.rest.builder))
        return groups

    def _warn_missing(self, found: list[SystemExperiment], by_id: list[str], by_name: list[str]) -> None:
        """Warnings for experiments the system tables may hold only in part, or not at all."""
        old = [e.experiment_id for e in found if e.may_miss_runs(int(time.time() * 1000))]
        if old:
            log.warning("Experiments %s are older than what the system tables surely hold (they record MLflow "
                        "data from 2025-09-02 on and keep %d days): runs not updated since may be missing "
                        "from their tables; build them once with --source rest or database to compare",
                        ", ".join(old), RETENTION_DAYS)
        if by_id or by_name:
            log.warning("Not in the system tables %s (they hold MLflow data from 2025-09-02 on): %s; "
                        "built through the REST API", self.settings.tables.system_schema, ", ".join([*by_id, *by_name]))

    def builder(self, target: BuildTarget) -> ExperimentTableBuilder:
        assert self.system is not None
        tables = target.settings.tables
        runs = SparkRunRefresh(self.system, selection=target.selection,
                               watermark_margin_seconds=tables.watermark_margin_seconds)
        models = ModelsTable(target.db, ModelsFromSearch(LoggedModelSearch(self.rest.tracking().client).search),
                             keep_on_server_error=True)
        return ExperimentTableBuilder(target.db, runs, selection=target.selection, companions=[models],
                                      refresh_by_cost=tables.refresh_by_cost)
