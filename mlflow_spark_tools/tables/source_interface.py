"""What a table build reads, whatever the source: the interface every source implements.

A source answers experiments (:class:`ExperimentLookup`), runs (:class:`RunReader`), metric
histories (:class:`HistoryReader`) and logged models (:class:`ModelReader`), all as Arrow tables
(runs and points streamed a part at a time; an experiment's few models in one table), in the
shapes named here:

- runs: page tables of :func:`~mlflow_spark_tools.runs.run_batches.runs_to_table` (the run info
  columns, one raw column per param, latest metric and tag, the dataset inputs);
- metric points: :data:`POINTS`, any number of runs and keys per part;
- logged models: :data:`~mlflow_spark_tools.tables.models_table.MODELS_SCHEMA`.

A source whose runs stay in Spark (the Databricks system tables) answers DataFrames instead and
is built by its own refresh strategy; it still resolves experiments through :class:`ExperimentLookup`.
Each source is one module with one entry in :mod:`~mlflow_spark_tools.tables.source_registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from mlflow_spark_tools.tracking.source import ExperimentInfo

# One metric point per row, as every history reader answers them; the link fields are null where
# the source has none (MLflow 2 servers, the backend database).
POINTS = pa.schema([
    ("run_id", pa.string()),
    ("key", pa.string()),
    ("step", pa.int64()),
    ("timestamp", pa.timestamp("ms", tz="UTC")),
    ("value", pa.float64()),
    ("model_id", pa.string()),
    ("dataset_name", pa.string()),
    ("dataset_digest", pa.string()),
])


class ExperimentLookup(Protocol):
    """Where experiments are found. An answer has ``experiment_id``, ``name``,
    ``lifecycle_stage`` and ``artifact_location``; None (system tables) means "not held here"."""

    def experiment_by_id(self, experiment_id: str) -> Any: ...
    def experiment_by_name(self, name: str) -> Any: ...
    def all_experiments(self) -> list[Any]: ...


class RunReader(Protocol):
    """The runs of one experiment as page tables."""

    on_runs: Callable[[int], None] | None

    def iter_all(self, experiment_id: str, *, include_deleted: bool = False,
                 chunk_runs: int | None = None) -> Iterator[pa.Table]:
        """Every run, in tables of about ``chunk_runs`` runs (at least one table)."""
        ...

    def fetch_recent(self, experiment_id: str, since_ms: int, *, include_deleted: bool = False) -> pa.Table:
        """Runs that started or ended at or after ``since_ms``, and every deleted run."""
        ...

    def fetch_by_ids(self, experiment_id: str, run_ids: Iterable[str]) -> pa.Table:
        """The current state of these runs (deleted ones included)."""
        ...

    def count_runs(self, experiment_id: str, *, include_deleted: bool = False) -> int | None:
        """How many runs the store holds; None where counting means reading them all."""
        ...


class HistoryCounts(Protocol):
    """What reading histories cost: requests (or queries) sent, histories cut at the limit."""

    @property
    def requests(self) -> int: ...
    @property
    def truncated(self) -> list[tuple[str, str, int]]: ...


class HistoryReader(Protocol):
    """Metric points of many runs and keys."""

    @property
    def counts(self) -> HistoryCounts: ...

    def points(self, tasks: Sequence[tuple[str, list[str]]],
               keys: Sequence[str] | None) -> Iterator[tuple[int, pa.Table]]:
        """Every point of each task (a key and the runs whose latest metrics have it), as
        (run-key pairs finished since the previous part, :data:`POINTS` table). ``keys`` are the
        selected keys (None: every key), for readers that read many keys at once."""
        ...


class ModelReader(Protocol):
    """The logged models of an experiment."""

    def logged_models(self, experiment_id: str) -> pa.Table | None:
        """Every logged model that is not deleted, as a models table; None when the source has
        no logged models (an MLflow 2 server or database)."""
        ...


@dataclass(frozen=True)
class SourceReaders:
    """The readers of one source that answer Arrow tables."""

    runs: RunReader
    history: HistoryReader
    models: ModelReader


def experiment_info(found: Any) -> ExperimentInfo:
    """An experiment as the tables record it, from any lookup's answer."""
    return ExperimentInfo(str(found.experiment_id), found.name, found.lifecycle_stage, found.artifact_location)


def with_link_fields(points: pa.Table) -> pa.Table:
    """Points without the link fields (``run_id`` .. ``value``) as :data:`POINTS` rows."""
    n = points.num_rows
    return pa.table({**{name: points[name] for name in POINTS.names[:5]},
                     **{name: pa.nulls(n, pa.string()) for name in POINTS.names[5:]}}, schema=POINTS)
