"""A run buffered in a Spark task: the logging API of ``collector.start_run`` and what the run
holds until its block ends.

Every value is checked as it is logged (MLflow's limits, a param never changed), so a run
that reaches the collector's write is one the tracking server takes; :class:`RunBuffer` is
what the collector then writes, or defers to the failed-run store.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow_spark_tools.failed_runs.document import PAYLOAD_TAG, new_run_secret, payload_tag_value
from mlflow_spark_tools.failed_runs.store_entries import new_payload_id
from mlflow_spark_tools.runs.run_data import (
    DATASET_CONTEXT_TAG,
    LinkedPoint,
    RunData,
    check_dataset_input,
    check_link,
    check_metric,
    check_param,
    check_tag,
)


@dataclass
class RunBuffer:
    """What a buffered run holds, as the collector writes it or defers it.

    Attributes:
        payload_id: chosen up front and set as the run's tag at create: a replay finds a run
            created by a request whose answer was lost, and checks that a run id in the
            payload is its own.
        run_secret: the secret whose hash the tag carries.
        artifacts: (local path, artifact path) of each artifact.
        models: the model, its name, flavor, save function and its arguments, of each model.
        run_id: the run, once created; artifact_uri: its artifact root.
    """

    experiment_id: str | None
    experiment_name: str | None
    run_name: str | None
    start_time: int = field(default_factory=lambda: int(time.time() * 1000))
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    links: list[LinkedPoint] = field(default_factory=list)
    run_id: str | None = None
    artifact_uri: str | None = None
    payload_id: str = field(default_factory=new_payload_id)
    run_secret: str = field(default_factory=new_run_secret)

    def run_data(self, status: str) -> RunData:
        """The run as it is written, ended with ``status`` now."""
        return RunData(self.experiment_id, self.run_name, self.start_time, self.params,
                       self.metrics, self.tags, status, int(time.time() * 1000),
                       inputs=list(self.inputs), links=list(self.links))

    def payload_tag(self) -> str:
        """The value of the run's payload tag."""
        return payload_tag_value(self.payload_id, self.run_secret)


class BufferedRun:
    """A run being buffered inside ``collector.start_run``; see the module docstring of
    :mod:`mlflow_spark_tools.failed_runs.collector`.

    After the ``with`` block: ``run_id`` (None if the run was never created), ``payload_id``
    (None if nothing was deferred) and ``status`` (``"logged"`` or ``"deferred"``).
    """

    def __init__(self, experiment_id: str | None, experiment_name: str | None, run_name: str | None,
                 tags: dict[str, Any] | None) -> None:
        self.buffer = RunBuffer(None if experiment_id is None else str(experiment_id), experiment_name, run_name)
        self.payload_id: str | None = None
        self.status: str | None = None
        self.set_tags(tags or {})

    @property
    def run_id(self) -> str | None:
        """The run, once created (None if it never was)."""
        return self.buffer.run_id

    # ---- the logging API ---------------------------------------------------------------

    def log_param(self, key: str, value: Any) -> None:
        key, text = check_param(key, value)
        if key in self.buffer.params and self.buffer.params[key] != text:
            raise ValueError(f"Param {key!r} was logged with {self.buffer.params[key]!r}; MLflow does not "
                             f"allow changing it to {text!r}")
        self.buffer.params[key] = text

    def log_params(self, params: dict[str, Any]) -> None:
        for key, value in params.items():
            self.log_param(key, value)

    def log_metric(self, key: str, value: float, step: int | None = None, timestamp: int | None = None, *,
                   model: str | None = None, model_id: str | None = None, dataset: Any = None) -> None:
        """Log a metric point; as with MLflow 3's ``log_metric``, it may be linked to a logged
        model and to the dataset it was computed on.

        Args:
            model: the name of a model this run logs (``log_model``'s ``artifact_path``): the
                point becomes one of that model's metrics (the run's first model of the name).
            model_id: instead, an existing logged model's id.
            dataset: an ``mlflow.data`` dataset (or a mapping with ``name`` and ``digest``).
        """
        ts = int(time.time() * 1000) if timestamp is None else timestamp
        point = check_metric(key, value, ts, 0 if step is None else step)
        self.buffer.metrics.append(point)
        if model is not None or model_id is not None or dataset is not None:
            name, digest = _dataset_name_digest(dataset) if dataset is not None else (None, None)
            self.buffer.links.append(check_link((*point, model, model_id, name, digest)))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, *, model: str | None = None,
                    model_id: str | None = None, dataset: Any = None) -> None:
        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            self.log_metric(key, value, step, ts, model=model, model_id=model_id, dataset=dataset)

    def log_input(self, dataset: Any, context: str | None = None, tags: dict[str, str] | None = None) -> None:
        """Record a dataset input of the run, as ``mlflow.log_input`` does.

        Args:
            dataset: an ``mlflow.data`` dataset (``mlflow.data.from_pandas(...)`` ...), or a
                mapping with ``name``, ``digest``, ``source_type``, ``source`` and optional
                ``schema`` and ``profile`` strings.
            context: what the dataset was used for (``training``, ``eval``): the input's
                ``mlflow.data.context`` tag.
            tags: more input tags.
        """
        entry = _dataset_fields(dataset)
        entry["tags"] = {**(tags or {}), **({DATASET_CONTEXT_TAG: context} if context else {})}
        self.buffer.inputs.append(check_dataset_input(entry))

    def set_tag(self, key: str, value: Any) -> None:
        key, text = check_tag(key, value)
        if key == PAYLOAD_TAG:
            raise ValueError(f"The tag {PAYLOAD_TAG} is set by the collector itself")
        self.buffer.tags[key] = text

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.set_tag(key, value)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Log a local file or directory (uploaded when the run is written)."""
        if not os.path.exists(local_path):
            raise FileNotFoundError(f"Artifact {local_path!r} does not exist")
        self.buffer.artifacts.append((str(local_path), artifact_path))

    def log_model(self, model: Any, artifact_path: str, flavor: str | None = None,
                  log_model_func: Callable[..., Any] | None = None, **kwargs: Any) -> None:
        """Log a model under ``artifact_path``.

        Args:
            model: the model object.
            artifact_path: the model's name (``model``): with MLflow 3 a logged model of the
                run by that name, with MLflow 2 (or a name MLflow 3 refuses for a logged
                model, such as ``models/ridge``) that folder of the run's artifacts.
            flavor: an MLflow flavor (``sklearn``, ``xgboost``, ...), saved with its
                ``save_model``.
            log_model_func: instead of ``flavor``, a function ``f(model, path, **kwargs)`` that
                saves the model as an MLflow model directory at ``path``
                (``mlflow.sklearn.save_model`` has that shape).
            kwargs: passed to the save function (``signature``, ``input_example``, ...).
        """
        if flavor is None and log_model_func is None:
            raise ValueError("log_model needs flavor= (e.g. 'sklearn') or log_model_func=")
        self.buffer.models.append({"model": model, "artifact_path": artifact_path, "flavor": flavor,
                             "save_func": log_model_func, "kwargs": kwargs})

    # ---- writing -----------------------------------------------------------------------


def _dataset_fields(dataset: Any) -> dict[str, Any]:
    """The fields of a dataset input from an ``mlflow.data`` dataset or a mapping."""
    if isinstance(dataset, dict):
        return dict(dataset)
    to_entity = getattr(dataset, "_to_mlflow_entity", None)
    if to_entity is None:
        raise TypeError(f"log_input takes an mlflow.data dataset or a mapping, not {type(dataset).__name__}")
    entity = to_entity()
    return {"name": entity.name, "digest": entity.digest, "source_type": entity.source_type,
            "source": entity.source, "schema": entity.schema, "profile": entity.profile}


def _dataset_name_digest(dataset: Any) -> tuple[str, str]:
    if isinstance(dataset, dict):
        return str(dataset.get("name")), str(dataset.get("digest"))
    return str(dataset.name), str(dataset.digest)
