"""Source ``database``: runs, metric histories and logged models read from the tracking server's
backend database (read-only, no API requests), :mod:`~mlflow_spark_tools.backend_store`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack

import pyarrow as pa

from mlflow_spark_tools.backend_store.connection import BackendDatabase
from mlflow_spark_tools.backend_store.history_reader import DatabaseHistoryReader
from mlflow_spark_tools.backend_store.model_reader import DatabaseModelSearch
from mlflow_spark_tools.backend_store.run_reader import DatabaseRunReader
from mlflow_spark_tools.config import Settings
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.spark.engine import Engine
from mlflow_spark_tools.tables.builder import ExperimentTableBuilder
from mlflow_spark_tools.tables.models_table import ModelsFromSearch
from mlflow_spark_tools.tables.refresh_summary import RefreshSummary
from mlflow_spark_tools.tables.source_interface import (
    POINTS,
    HistoryCounts,
    SourceReaders,
    experiment_info,
    with_link_fields,
)
from mlflow_spark_tools.tables.source_plans import (
    AskedExperiments,
    BuildTarget,
    ExperimentGroup,
    arrow_builder,
    resolve,
)
from mlflow_spark_tools.tracking.source import TrackingSource

log = logging.getLogger(__name__)


class DatabaseHistory:
    """Metric points from the backend database: every selected key of many runs per query."""

    def __init__(self, reader: DatabaseHistoryReader) -> None:
        self.reader = reader

    @property
    def counts(self) -> HistoryCounts:
        return self.reader.counts

    def points(self, tasks: Sequence[tuple[str, list[str]]],
               keys: Sequence[str] | None) -> Iterator[tuple[int, pa.Table]]:
        pairs_of: dict[str, int] = {}
        for _, ids in tasks:
            for run_id in ids:
                pairs_of[run_id] = pairs_of.get(run_id, 0) + 1
        run_ids = sorted(pairs_of)
        step = self.reader.runs_per_query
        for start in range(0, len(run_ids), step):
            chunk = run_ids[start:start + step]
            for part in self.reader.read_tables(chunk, keys):
                yield 0, with_link_fields(part)
            yield sum(pairs_of[r] for r in chunk), POINTS.empty_table()


class DatabaseSource:
    """The tracking server's backend database, opened read-only for the build."""

    def __init__(self, settings: Settings, backend: BackendDatabase) -> None:
        self.settings = settings
        self.backend = backend
        self.runs = DatabaseRunReader(backend)
        self._tracking: TrackingSource | None = None

    @classmethod
    def open(cls, settings: Settings, stack: ExitStack) -> DatabaseSource:
        uri = settings.tables.backend_store_uri
        if not uri:
            raise UsageError("--source database needs --backend-store-uri (or MLFLOW_SPARK_TOOLS_BACKEND_STORE_URI, "
                             "tables.backend_store_uri): the SQLAlchemy URI of the tracking server's database.")
        backend = stack.enter_context(BackendDatabase(uri))
        log.info("Reading runs from backend store %s (%s reader)", backend.description, backend.reader)
        return cls(settings, backend)

    def tracking(self) -> TrackingSource:
        if self._tracking is None:
            self._tracking = TrackingSource.from_settings(self.settings)
        return self._tracking

    def experiment_groups(self, asked: AskedExperiments, failed: list[RefreshSummary],
                          engine: Callable[[], Engine]) -> list[ExperimentGroup]:
        experiments = [experiment_info(e) for e in resolve(self.runs, asked, failed)]
        return [ExperimentGroup(experiments, self.builder)] if experiments else []

    def readers(self) -> SourceReaders:
        return SourceReaders(self.runs,
                             DatabaseHistory(DatabaseHistoryReader(self.backend, self.settings.tables.max_history_points)),
                             ModelsFromSearch(DatabaseModelSearch(self.backend).search))

    def builder(self, target: BuildTarget) -> ExperimentTableBuilder:
        return arrow_builder(self.readers(), target)
