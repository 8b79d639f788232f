"""What an opened source gives the table build job: the experiments asked for, in groups that
each share one table builder (:class:`ExperimentGroup`), and the tracking server of the registry
tables. Every source of :mod:`~mlflow_spark_tools.tables.source_registry` implements
:class:`TableSource`; the helpers here are what the sources share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mlflow_spark_tools.config import Settings
from mlflow_spark_tools.core.identifiers import validate_experiment_id
from mlflow_spark_tools.errors import ExperimentNotFoundError, UsageError
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.spark.engine import Engine
from mlflow_spark_tools.tables.arrow_refresh import ArrowRunRefresh
from mlflow_spark_tools.tables.builder import ExperimentTableBuilder
from mlflow_spark_tools.tables.inputs_table import InputsTable
from mlflow_spark_tools.tables.metric_history import HistorySelection, MetricHistoryWriter
from mlflow_spark_tools.tables.models_table import ModelsTable
from mlflow_spark_tools.tables.refresh_summary import RefreshSummary
from mlflow_spark_tools.tables.source_interface import ExperimentLookup, SourceReaders
from mlflow_spark_tools.tracking.source import ExperimentInfo, TrackingSource


@dataclass(frozen=True)
class AskedExperiments:
    """The experiments a build was asked for."""

    ids: Sequence[str] = ()
    names: Sequence[str] = ()
    all: bool = False


@dataclass(frozen=True)
class BuildTarget:
    """Where the tables go and how they are built: what a builder is made for."""

    engine: Engine
    db: Database
    settings: Settings
    selection: HistorySelection | None


@dataclass
class ExperimentGroup:
    """Experiments built by one builder, made by ``builder`` once the engine runs."""

    experiments: list[ExperimentInfo]
    builder: Callable[[BuildTarget], ExperimentTableBuilder]


class TableSource(Protocol):
    """One source of a table build, opened for the build's duration (its name is its entry's in
    :mod:`~mlflow_spark_tools.tables.source_registry`)."""

    def experiment_groups(self, asked: AskedExperiments, failed: list[RefreshSummary],
                          engine: Callable[[], Engine]) -> list[ExperimentGroup]:
        """The experiments asked for, each once; one that cannot be found becomes a failed
        summary in ``failed``. ``engine`` starts the engine, for a source that needs it to look."""
        ...

    def tracking(self) -> TrackingSource:
        """The tracking server, for the registry tables."""
        ...


def resolve(lookup: ExperimentLookup, asked: AskedExperiments, failed: list[RefreshSummary],
            elsewhere: tuple[list[str], list[str]] | None = None) -> list[Any]:
    """The experiments asked for, as ``lookup`` answers them (once each). One it does not know
    (or an invalid id) becomes a failed summary; one it answers None for (not held there) goes
    to ``elsewhere`` (ids, names), for another source."""
    found: list[Any] = []
    if asked.all:
        found.extend(lookup.all_experiments())
    wanted = [(str(i), None) for i in asked.ids] + [(None, name) for name in asked.names]
    for experiment_id, name in wanted:
        try:
            hit = (lookup.experiment_by_id(validate_experiment_id(experiment_id)) if experiment_id is not None
                   else lookup.experiment_by_name(str(name)))
        except (ExperimentNotFoundError, UsageError) as exc:
            failed.append(RefreshSummary.failed(experiment_id or "?", name, exc))
            continue
        if hit is not None:
            found.append(hit)
        elif elsewhere is not None:
            elsewhere[0 if experiment_id is not None else 1].append(experiment_id or str(name))
    unique: dict[str, Any] = {}
    for experiment in found:
        unique.setdefault(str(experiment.experiment_id), experiment)
    return list(unique.values())


def arrow_builder(readers: SourceReaders, target: BuildTarget) -> ExperimentTableBuilder:
    """The builder of a source whose readers answer Arrow tables: runs, metric history, dataset
    inputs and logged models from the same source."""
    tables = target.settings.tables
    history = MetricHistoryWriter(target.db, readers.history) if target.selection is not None else None
    runs = ArrowRunRefresh(readers.runs, history=history, selection=target.selection,
                           watermark_margin_seconds=tables.watermark_margin_seconds, chunk_runs=tables.chunk_runs)
    return ExperimentTableBuilder(target.db, runs, selection=target.selection,
                                  companions=[InputsTable(target.db), ModelsTable(target.db, readers.models)],
                                  refresh_by_cost=tables.refresh_by_cost)
