"""Source ``rest``: runs, metric histories and logged models from the tracking server's REST API,
every request paced by the rate limiter (:class:`~mlflow_spark_tools.tracking.source.TrackingSource`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack

import pyarrow as pa

from mlflow_spark_tools.config import Settings
from mlflow_spark_tools.spark.engine import Engine
from mlflow_spark_tools.tables.builder import ExperimentTableBuilder
from mlflow_spark_tools.tables.fetch import RunFetcher
from mlflow_spark_tools.tables.models_table import ModelsFromSearch
from mlflow_spark_tools.tables.refresh_summary import RefreshSummary
from mlflow_spark_tools.tables.source_interface import POINTS, HistoryCounts, SourceReaders, experiment_info
from mlflow_spark_tools.tables.source_plans import (
    AskedExperiments,
    BuildTarget,
    ExperimentGroup,
    arrow_builder,
    resolve,
)
from mlflow_spark_tools.tracking.metric_history import MetricHistoryReader, Points
from mlflow_spark_tools.tracking.model_search import LoggedModelSearch
from mlflow_spark_tools.tracking.source import TrackingSource


class RestHistory:
    """Metric points from the tracking server: each task's requests (many runs per request
    where the server has the bulk endpoint) run in ``workers`` threads, a few tasks ahead.

    Args:
        reader: the REST reader of one key's histories.
        workers: requests in flight at once (the rate limiter still paces them).
    """

    def __init__(self, reader: MetricHistoryReader, workers: int = 4) -> None:
        self.reader = reader
        self.workers = max(1, workers)

    @property
    def counts(self) -> HistoryCounts:
        return self.reader.counts

    def points(self, tasks: Sequence[tuple[str, list[str]]],
               keys: Sequence[str] | None) -> Iterator[tuple[int, pa.Table]]:
        for key, points in self._read_all(tasks):
            yield len({p["run_id"] for p in points}), points_table(points, key)

    def _read_all(self, tasks: Sequence[tuple[str, list[str]]]) -> Iterator[tuple[str, Points]]:
        """Every answer of every task, with at most a few tasks' answers held at once."""
        def run(task: tuple[str, list[str]]) -> tuple[str, list[Points]]:
            key, ids = task
            return key, list(self.reader.read(key, ids))

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            window: list[Future[tuple[str, list[Points]]]] = []
            queue = iter(tasks)
            for task in queue:
                window.append(pool.submit(run, task))
                if len(window) >= self.workers * 2:
                    break
            while window:
                key, answers = window.pop(0).result()
                following = next(queue, None)
                if following is not None:
                    window.append(pool.submit(run, following))
                for points in answers:
                    yield key, points


def points_table(points: Points, key: str) -> pa.Table:
    """One answer's points of ``key`` as :data:`~mlflow_spark_tools.tables.source_interface.POINTS` rows."""
    return pa.table({
        "run_id": pa.array([p["run_id"] for p in points], pa.string()),
        "key": pa.array([key] * len(points), pa.string()),
        "step": pa.array([p["step"] for p in points], pa.int64()),
        "timestamp": pa.array([p["timestamp"] for p in points], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "value": pa.array([p["value"] for p in points], pa.float64()),
        "model_id": pa.array([p.get("model_id") for p in points], pa.string()),
        "dataset_name": pa.array([p.get("dataset_name") for p in points], pa.string()),
        "dataset_digest": pa.array([p.get("dataset_digest") for p in points], pa.string()),
    }, schema=POINTS)


class RestSource:
    """The tracking server's REST API."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tracking = TrackingSource.from_settings(settings)

    @classmethod
    def open(cls, settings: Settings, stack: ExitStack) -> RestSource:
        return cls(settings)

    def tracking(self) -> TrackingSource:
        return self._tracking

    def experiment_groups(self, asked: AskedExperiments, failed: list[RefreshSummary],
                          engine: Callable[[], Engine]) -> list[ExperimentGroup]:
        experiments = [experiment_info(e) for e in resolve(self._tracking, asked, failed)]
        return [ExperimentGroup(experiments, self.builder)] if experiments else []

    def readers(self) -> SourceReaders:
        tables, client = self.settings.tables, self._tracking.client
        return SourceReaders(RunFetcher(self._tracking, tables.page_size, tables.fetch_workers),
                             RestHistory(MetricHistoryReader(client, tables.max_history_points), tables.history_workers),
                             ModelsFromSearch(LoggedModelSearch(client).search))

    def builder(self, target: BuildTarget) -> ExperimentTableBuilder:
        return arrow_builder(self.readers(), target)
