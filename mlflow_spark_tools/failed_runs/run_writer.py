"""The one executor of a run's planned requests, shared by the collector and the replayer.

:func:`~mlflow_spark_tools.runs.run_data.plan` turns a run into operations (create, log_batch
chunks, artifacts, models, terminate); :class:`RunWriter` sends one operation at a time. The
collector writes a run it holds in memory, the replayer one read from a payload; they differ
only in where artifacts and models come from and in what they check first, which they say by
overriding the hooks of this class.
"""

from __future__ import annotations

import time
from typing import Any

from mlflow_spark_tools.runs.run_data import (
    ARTIFACT,
    BATCH,
    CREATE,
    MODEL,
    TERMINATE,
    RunData,
    batches,
    tags_at_create,
)
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests


class RunWriter:
    """Sends the operations of one run's plan.

    Args:
        requests: the tracking requests (paced, with their retry policy).
        run: what the run holds.
        run_id: the run, when it was created before (a resumed payload).
        artifact_uri: the run's artifact root, when known.
    """

    def __init__(self, requests: TrackingRequests, run: RunData, run_id: str | None = None,
                 artifact_uri: str | None = None) -> None:
        self.requests = requests
        self.run = run
        self.chunks = batches(run)
        self.run_id = run_id
        self.artifact_uri = artifact_uri

    def send(self, kind: str, index: int, *, uncertain: bool = False) -> None:
        """Send operation ``(kind, index)``; ``uncertain``: it may have reached the server
        already (a replay resuming after a crash), so check before repeating it."""
        if kind == CREATE:
            self.create(uncertain)
        elif kind == BATCH:
            self.log_batch(index, uncertain)
        elif kind == ARTIFACT:
            self.log_artifact(index)
        elif kind == MODEL:
            self.log_model(index)
        elif kind == TERMINATE:
            self.requests.update_run(self.created_run_id, self.run.status,
                                     self.run.end_time or int(time.time() * 1000))
        else:
            raise ValueError(f"unknown operation {kind!r}")

    @property
    def created_run_id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the run was not created before an operation that needs it")
        return self.run_id

    def create_tags(self) -> dict[str, str]:
        """The tags the run is created with."""
        return tags_at_create(self.run)

    def create(self, uncertain: bool) -> None:
        info = self.requests.create_run(self._experiment_id(), self.run.run_name, self.run.start_time,
                                        self.create_tags())
        self.run_id, self.artifact_uri = info["run_id"], info.get("artifact_uri")

    def log_batch(self, index: int, uncertain: bool) -> None:
        chunk = self.chunks[index]
        self.requests.log_batch(self.created_run_id, chunk.params, chunk.metrics, chunk.tags)

    def log_artifact(self, index: int) -> None:
        raise NotImplementedError

    def log_model(self, index: int) -> None:
        raise NotImplementedError

    def known_artifact_uri(self) -> str | None:
        """The run's artifact root: the one the create answered with, else the server's."""
        if self.artifact_uri is None:
            info: dict[str, Any] = self.requests.get_run(self.created_run_id)["info"]
            self.artifact_uri = info.get("artifact_uri")
        return self.artifact_uri

    def _experiment_id(self) -> str:
        if self.run.experiment_id is None:
            raise RuntimeError("the run's experiment is not resolved")
        return self.run.experiment_id
