"""The one executor of a run's planned requests, shared by the collector and the replayer.

:func:`~mlflow_spark_tools.runs.run_data.plan` turns a run into operations (create, log_batch
chunks, artifacts, models, terminate); :class:`RunWriter` sends one operation at a time. The
collector writes a run it holds in memory, the replayer one read from a payload; they differ
only in where artifacts and models come from and in what they check first, which they say by
overriding the hooks of this class.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from mlflow_spark_tools.runs.models import stamp_logged_model
from mlflow_spark_tools.runs.run_data import (
    ARTIFACT,
    BATCH,
    CREATE,
    INPUTS,
    LINKS,
    MODEL,
    TERMINATE,
    RunData,
    batches,
    link_batches,
    tags_at_create,
)
from mlflow_spark_tools.tracking.artifacts import upload_artifact
from mlflow_spark_tools.tracking.logged_models import (
    LoggedModelInfo,
    LoggedModels,
    client_has_logged_models,
    context_tags,
    write_logged_model,
)
from mlflow_spark_tools.tracking.rate_limit_errors import error_summary
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests

log = logging.getLogger(__name__)
_LINK_FIELDS = ("model_id", "dataset_name", "dataset_digest")


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
        self.link_chunks = link_batches(run.direct_links)
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        # model index -> the id of the logged model created for it (a deferred run keeps them)
        self.logged_model_ids: dict[int, str] = {}

    def send(self, kind: str, index: int, *, uncertain: bool = False) -> None:
        """Send operation ``(kind, index)``; ``uncertain``: it may have reached the server
        already (a replay resuming after a crash), so check before repeating it."""
        if kind == CREATE:
            self.create(uncertain)
        elif kind == BATCH:
            self.log_batch(index, uncertain)
        elif kind == INPUTS:
            self.requests.log_inputs(self.created_run_id, self.run.inputs)
        elif kind == LINKS:
            self.log_links(index)
        elif kind == ARTIFACT:
            self.log_artifact(index)
        elif kind == MODEL:
            self.log_model(index, uncertain)
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

    def log_links(self, index: int) -> None:
        """Send one group of linked points (to a dataset, or to a logged model by id): the run's
        history keeps each point once, the model and the dataset list it. Without MLflow 3
        (client or server) the points are in the run's history already and the links are left
        out, with a warning."""
        chunk = self.link_chunks[index]
        allowed = {m: self.linked_model_allowed(m) for m in {p[5] for p in chunk if p[5] is not None}}
        points = [(k, v, ts, step, model_id if model_id is None or allowed[model_id] else None,
                   dataset_name, dataset_digest)
                  for k, v, ts, step, _, model_id, dataset_name, dataset_digest in chunk]
        if not points:
            return
        if not client_has_logged_models():
            log.warning("Run %s: %d metric links to models or datasets are left out (MLflow 3 is needed "
                        "for them; the points are in the run's history)", self.created_run_id, len(points))
            return
        try:
            self.requests.log_batch(self.created_run_id, [], points, [])
        except Exception as exc:
            if getattr(exc, "error_code", None) != "INVALID_PARAMETER_VALUE" \
                    or not any(f in str(exc) for f in _LINK_FIELDS):
                raise
            log.warning("Run %s: the tracking server does not take metric links to models or datasets "
                        "(%s); the points are in the run's history without them", self.created_run_id,
                        error_summary(exc, 200))

    def log_artifact(self, index: int) -> None:
        raise NotImplementedError

    def log_model(self, index: int, uncertain: bool) -> None:
        raise NotImplementedError

    def write_model(self, index: int, name: str, save_to: Callable[[str], None], *, uncertain: bool = False,
                    known_id: str | None = None, earlier_same_name: int = 0) -> None:
        """Save model ``index`` with ``save_to(path)`` and upload it: as an MLflow 3 logged
        model where the client and the server have them (see
        :mod:`~mlflow_spark_tools.tracking.logged_models`), else into the run's artifacts
        under ``name``. ``uncertain`` and ``known_id`` say an earlier write of it may have
        begun (a crash; the id a deferred run recorded); ``earlier_same_name`` counts the
        models of the run written before this one under the same name."""
        with tempfile.TemporaryDirectory(prefix="mlflow-spark-tools-model-") as tmp:
            path = os.path.join(tmp, "model")
            save_to(path)  # first: a model that cannot be saved leaves nothing on the server
            models = LoggedModels(self.requests)
            if models.available(name):
                def upload(model: LoggedModelInfo) -> None:
                    self.check_destination(model.artifact_uri)
                    stamp_logged_model(path, model.model_id, self.created_run_id, model.artifact_uri)
                    upload_artifact(self.requests, self.created_run_id, model.artifact_uri, path, None,
                                    contents_only=True)

                def created(model_id: str) -> None:
                    self.logged_model_ids[index] = model_id

                model_id = write_logged_model(
                    models, experiment_id=self._experiment_id(), run_id=self.created_run_id, name=name,
                    params=self.run.params, tags=context_tags(self.run.tags), upload=upload,
                    known_id=known_id, look_up=uncertain, on_created=created,
                    metrics=self._model_metrics(name, earlier_same_name),
                    earlier_same_name=earlier_same_name)
                if model_id is not None:
                    self.logged_model_ids[index] = model_id
                    return
            if self._links_of_model(name, earlier_same_name):
                log.warning("Run %s: model %r is logged to the run's artifacts, not as a logged model; the "
                            "metric points linked to it stay in the run's history only", self.created_run_id, name)
            root = self.known_artifact_uri()
            self.check_destination(root)
            upload_artifact(self.requests, self.created_run_id, root, path, name, contents_only=True)

    def _model_metrics(self, name: str, earlier_same_name: int) -> list[tuple[Any, ...]]:
        """The points a logged model lists as its metrics: the run's points at the model's step
        (0), as MLflow's ``log_model`` links them, and the points linked to it (with their
        dataset); a point is sent once (the server keeps one row per model, key, time and step)."""
        linked = self._links_of_model(name, earlier_same_name)
        seen = {(p[0], p[2], p[3]) for p in linked}
        return [*(p for p in self.run.metrics if p[3] == 0 and (p[0], p[2], p[3]) not in seen), *linked]

    def _links_of_model(self, name: str, earlier_same_name: int) -> list[tuple[Any, ...]]:
        """The points linked to the run's model ``name`` (the first model of that name)."""
        if earlier_same_name:
            return []
        return [(k, v, ts, step, None, dataset_name, dataset_digest)
                for k, v, ts, step, model_name, _, dataset_name, dataset_digest in self.run.links
                if model_name == name]

    def linked_model_allowed(self, model_id: str) -> bool:
        """A hook: whether points may be linked to the logged model ``model_id`` (by id)."""
        return True

    def check_destination(self, artifact_uri: str | None) -> None:
        """A hook: raise if files may not be written to ``artifact_uri``."""

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
