"""A table source added the way docs/ARCHITECTURE.md says: one module and one registry entry.

It reads an experiment's runs from an Arrow file that holds them as the REST pages' tables
(``runs_to_table``), written beforehand (:func:`write_snapshot`); the file's folder comes from
``MLFLOW_SPARK_TOOLS_SNAPSHOT_DIR``. It has no metric history and no logged models.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.compute as pc

from mlflow_spark_tools.errors import ExperimentNotFoundError
from mlflow_spark_tools.tables.source_interface import POINTS, SourceReaders, experiment_info
from mlflow_spark_tools.tables.source_plans import arrow_builder, resolve
from mlflow_spark_tools.tracking.metric_history import HistoryCounts

SNAPSHOT_DIR = "MLFLOW_SPARK_TOOLS_SNAPSHOT_DIR"


def write_snapshot(folder: Path, experiment_id: str, name: str, runs: pa.Table) -> None:
    """The runs of one experiment, as a file the source reads."""
    table = runs.replace_schema_metadata({"experiment_name": name})
    with pa.OSFile(str(folder / f"{experiment_id}.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
        out.write_table(table)


class SnapshotRuns:
    """RunReader and ExperimentLookup over the snapshot files of one folder."""

    on_runs: Callable[[int], None] | None = None

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _runs(self, experiment_id: str) -> pa.Table:
        with pa.memory_map(str(self.folder / f"{experiment_id}.arrow")) as source:
            return pa.ipc.open_file(source).read_all()

    def experiment_by_id(self, experiment_id: str) -> SimpleNamespace:
        if not (self.folder / f"{experiment_id}.arrow").exists():
            raise ExperimentNotFoundError(f"No snapshot of experiment {experiment_id}.")
        name = self._runs(experiment_id).schema.metadata[b"experiment_name"].decode()
        return SimpleNamespace(experiment_id=experiment_id, name=name, lifecycle_stage="active",
                               artifact_location=None)

    def experiment_by_name(self, name: str) -> SimpleNamespace:
        raise ExperimentNotFoundError("The snapshot source finds experiments by id.")

    def all_experiments(self) -> list[SimpleNamespace]:
        return [self.experiment_by_id(path.stem) for path in sorted(self.folder.glob("*.arrow"))]

    def iter_all(self, experiment_id: str, *, include_deleted: bool = False,
                 chunk_runs: int | None = None) -> Iterator[pa.Table]:
        runs = self._runs(experiment_id)
        yield runs if include_deleted else runs.filter(pc.equal(runs["lifecycle_stage"], "active"))

    def fetch_recent(self, experiment_id: str, since_ms: int, *, include_deleted: bool = False) -> pa.Table:
        runs = self._runs(experiment_id)
        since = pa.scalar(since_ms, pa.timestamp("ms", tz="UTC"))
        recent = pc.or_(pc.fill_null(pc.greater_equal(runs["start_time"], since), False),
                        pc.fill_null(pc.greater_equal(runs["end_time"], since), False))
        return runs.filter(pc.or_(recent, pc.equal(runs["lifecycle_stage"], "deleted")))

    def fetch_by_ids(self, experiment_id: str, run_ids: Iterable[str]) -> pa.Table:
        runs = self._runs(experiment_id)
        return runs.filter(pc.is_in(runs["run_id"], value_set=pa.array(list(run_ids), pa.string())))

    def count_runs(self, experiment_id: str, *, include_deleted: bool = False) -> int | None:
        return None


class NoHistory:
    counts = HistoryCounts()

    def points(self, tasks: Sequence[tuple[str, list[str]]],
               keys: Sequence[str] | None) -> Iterator[tuple[int, pa.Table]]:
        yield sum(len(ids) for _, ids in tasks), POINTS.empty_table()


class NoModels:
    def logged_models(self, experiment_id: str) -> pa.Table | None:
        return None


class SnapshotSource:
    def __init__(self, settings, folder: Path) -> None:
        self.settings = settings
        self.runs = SnapshotRuns(folder)

    @classmethod
    def open(cls, settings, stack: ExitStack) -> SnapshotSource:
        return cls(settings, Path(os.environ[SNAPSHOT_DIR]))

    def experiment_groups(self, asked, failed, engine):
        from mlflow_spark_tools.tables.source_plans import ExperimentGroup

        experiments = [experiment_info(e) for e in resolve(self.runs, asked, failed)]
        return [ExperimentGroup(experiments, self.builder)] if experiments else []

    def tracking(self):
        from mlflow_spark_tools.tracking.source import TrackingSource

        return TrackingSource.from_settings(self.settings)  # the registry tables: the tracking server's

    def builder(self, target):
        return arrow_builder(SourceReaders(self.runs, NoHistory(), NoModels()), target)
