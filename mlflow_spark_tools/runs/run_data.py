"""A run's buffered data, MLflow's limits on it, and the requests that log it.

Shared by the collector (which sends the requests from a Spark task) and the replayer (which
sends what the collector could not): both plan the same requests from the same data, so a
payload records only how many of them were done.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from mlflow_spark_tools.core.json_values import json_float

# mlflow/utils/validation.py (MLflow 3.17)
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_BATCH_BYTES = 1_000_000
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_TAGS_AT_CREATE = 99  # one place left for the payload tag
_KEY = re.compile(r"^[/\w.\- :]*$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

CREATE, BATCH, ARTIFACT, MODEL, TERMINATE = "create", "batch", "artifact", "model", "terminate"
INPUTS, LINKS = "inputs", "links"
# mlflow/utils/validation.py (MLflow 3.17): dataset inputs
MAX_DATASET_NAME = 500
MAX_DATASET_DIGEST = 36
MAX_DATASET_SOURCE = 65535
MAX_DATASET_SCHEMA = 1048575
MAX_DATASET_PROFILE = 16777215
MAX_INPUT_TAG_KEY = 255
MAX_INPUT_TAG_VALUE = 500
MAX_INPUTS = 1000
DATASET_CONTEXT_TAG = "mlflow.data.context"
# a metric point and what it is linked to (MLflow 3): a model of the run by its name, or a
# logged model by id; the dataset it was computed on
LinkedPoint = tuple[str, float, int, int, str | None, str | None, str | None, str | None]


class RunDataError(ValueError):
    """A key or value MLflow would reject."""


def check_key(key: Any, what: str) -> str:
    if not isinstance(key, str) or not key:
        raise RunDataError(f"{what} key {key!r} must be a non-empty string")
    if len(key) > MAX_KEY:
        raise RunDataError(f"{what} key {key[:40]!r}... is {len(key)} characters (MLflow's maximum is {MAX_KEY})")
    if not _KEY.match(key) or ".." in key.split("/") or "//" in key or key.startswith("/") or key.endswith("/"):
        raise RunDataError(
            f"{what} key {key!r} is not valid: use letters, digits, '_', '-', '.', ' ', ':' and "
            "'/' (no leading, trailing or double '/')"
        )
    return key


def _check_text(what: str, key: Any, value: Any, limit: int) -> tuple[str, str]:
    check_key(key, what)
    text = str(value)
    if len(text) > limit:
        raise RunDataError(f"{what} {key!r} value is {len(text)} characters (MLflow's maximum is {limit})")
    return key, text


def check_param(key: Any, value: Any) -> tuple[str, str]:
    return _check_text("Param", key, value, MAX_PARAM_VALUE)


def check_tag(key: Any, value: Any) -> tuple[str, str]:
    return _check_text("Tag", key, value, MAX_TAG_VALUE)


def check_metric(key: Any, value: Any, timestamp: Any, step: Any) -> tuple[str, float, int, int]:
    check_key(key, "Metric")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RunDataError(f"Metric {key!r} value {value!r} is not a number") from None
    if isinstance(value, bool):
        raise RunDataError(f"Metric {key!r} value {value!r} is a boolean, not a number")
    if not isinstance(timestamp, int) or not isinstance(step, int) or isinstance(step, bool):
        raise RunDataError(f"Metric {key!r} timestamp and step must be integers")
    if not (_INT64_MIN <= step <= _INT64_MAX and _INT64_MIN <= timestamp <= _INT64_MAX):
        raise RunDataError(f"Metric {key!r} step and timestamp must fit in 64 bits")
    return key, number, timestamp, step


def check_dataset_input(dataset: dict[str, Any]) -> dict[str, Any]:
    """A dataset input (``name``, ``digest``, ``source_type``, ``source``, optional ``schema``
    and ``profile``, and input ``tags``) within MLflow's limits, as plain strings."""
    if not isinstance(dataset, dict):
        raise RunDataError("a dataset input must be a mapping")
    out: dict[str, Any] = {}
    for name, limit, required in (("name", MAX_DATASET_NAME, True), ("digest", MAX_DATASET_DIGEST, True),
                                   ("source_type", MAX_DATASET_NAME, True), ("source", MAX_DATASET_SOURCE, True),
                                   ("schema", MAX_DATASET_SCHEMA, False), ("profile", MAX_DATASET_PROFILE, False)):
        value = dataset.get(name)
        if value is None and not required:
            out[name] = None
            continue
        if not isinstance(value, str) or (required and not value):
            raise RunDataError(f"dataset input {name} must be a non-empty string")
        if len(value) > limit:
            raise RunDataError(f"dataset input {name} is {len(value)} characters (MLflow's maximum is {limit})")
        out[name] = value
    tags = dataset.get("tags") or {}
    if not isinstance(tags, dict):
        raise RunDataError("dataset input tags must be a mapping")
    for key, value in tags.items():
        if not isinstance(key, str) or not key or len(key) > MAX_INPUT_TAG_KEY:
            raise RunDataError(f"dataset input tag key {str(key)[:40]!r} is not valid")
        if not isinstance(value, str) or len(value) > MAX_INPUT_TAG_VALUE:
            raise RunDataError(f"dataset input tag {key!r} value must be a string of at most "
                               f"{MAX_INPUT_TAG_VALUE} characters")
    out["tags"] = dict(tags)
    return out


def check_link(point: Any) -> LinkedPoint:
    """A linked metric point: (key, value, timestamp, step, model name, model id, dataset name,
    dataset digest), with a model or a dataset (or both)."""
    try:
        key, value, ts, step, model_name, model_id, dataset_name, dataset_digest = point
    except (TypeError, ValueError):
        raise RunDataError("a linked metric point must have 8 fields") from None
    key, number, ts, step = check_metric(key, value, ts, step)
    for what, text, limit in (("model name", model_name, MAX_KEY), ("model id", model_id, 64),
                              ("dataset name", dataset_name, MAX_DATASET_NAME),
                              ("dataset digest", dataset_digest, MAX_DATASET_DIGEST)):
        if text is not None and (not isinstance(text, str) or not text or len(text) > limit):
            raise RunDataError(f"metric {key!r} {what} must be a non-empty string of at most {limit} characters")
    if model_name is None and model_id is None and dataset_name is None:
        raise RunDataError(f"metric {key!r} is linked to neither a model nor a dataset")
    if model_name is not None and model_id is not None:
        raise RunDataError(f"metric {key!r} names a model both by name and by id")
    if (dataset_name is None) != (dataset_digest is None):
        raise RunDataError(f"metric {key!r} needs both the dataset's name and digest")
    return key, number, ts, step, model_name, model_id, dataset_name, dataset_digest


@dataclass
class RunData:
    """Everything a run logs, in the order it was logged.

    ``metrics`` is the run's metric history. ``links`` are points of it (or points logged only
    with a link) that MLflow 3 also links to a logged model or a dataset; ``inputs`` are the
    run's dataset inputs.
    """

    experiment_id: str | None
    run_name: str | None
    start_time: int
    params: dict[str, str]
    metrics: list[tuple[str, float, int, int]]
    tags: dict[str, str]
    status: str = "FINISHED"
    end_time: int | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    links: list[LinkedPoint] = field(default_factory=list)

    def validate(self) -> None:
        """Raise :class:`RunDataError` if MLflow would reject any key or value."""
        for key, text in self.params.items():
            check_param(key, text)
        for key, text in self.tags.items():
            check_tag(key, text)
        for key, value, ts, step in self.metrics:
            check_metric(key, value, ts, step)
        if len(self.inputs) > MAX_INPUTS:
            raise RunDataError(f"{len(self.inputs)} dataset inputs (at most {MAX_INPUTS})")
        for dataset in self.inputs:
            check_dataset_input(dataset)
        for point in self.links:
            check_link(point)

    @property
    def direct_links(self) -> list[LinkedPoint]:
        """The links sent on their own: to a dataset or to a logged model by id (a link to a
        model of this run by name goes with that model)."""
        return [p for p in self.links if p[4] is None]

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "run_name": self.run_name,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "status": self.status,
            "params": self.params,
            "tags": self.tags,
            "metrics": [[k, json_float(v), ts, step] for k, v, ts, step in self.metrics],
            "inputs": self.inputs,
            "links": [[k, json_float(v), *rest] for k, v, *rest in self.links],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunData:
        """Rebuild from a payload document; raises :class:`RunDataError` for malformed data."""
        try:
            params = {str(k): str(v) for k, v in dict(data.get("params") or {}).items()}
            tags = {str(k): str(v) for k, v in dict(data.get("tags") or {}).items()}
            metrics = [(str(k), float(v), int(ts), int(step)) for k, v, ts, step in data.get("metrics") or []]
            inputs = [check_dataset_input(d) for d in data.get("inputs") or []]
            links = [check_link(point) for point in data.get("links") or []]
            run = cls(
                experiment_id=None if data.get("experiment_id") is None else str(data["experiment_id"]),
                run_name=data.get("run_name"),
                start_time=int(data["start_time"]),
                params=params,
                metrics=metrics,
                tags=tags,
                status=str(data.get("status") or "FINISHED"),
                end_time=None if data.get("end_time") is None else int(data["end_time"]),
                inputs=inputs,
                links=links,
            )
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise RunDataError(f"malformed run data: {str(exc)[:200]}") from None
        run.validate()
        return run


def _entity_bytes(*parts: Any) -> int:
    return len(json.dumps(parts)) + 40


@dataclass(frozen=True)
class Batch:
    params: list[tuple[str, str]]
    metrics: list[tuple[str, float, int, int]]
    tags: list[tuple[str, str]]


def tags_at_create(run: RunData) -> dict[str, str]:
    """The tags sent with the create request (the first ones, up to a limit)."""
    return dict(list(run.tags.items())[:MAX_TAGS_AT_CREATE])


def batches(run: RunData) -> list[Batch]:
    """``log_batch`` requests within MLflow's limits, in a fixed order: params, tags, metrics.

    Each batch holds at most 100 params, 100 tags, 1000 metrics, 1000 entities and about
    1 MB of JSON. The split depends only on the data, so the collector and the replayer plan
    the same batches.
    """
    entities: list[tuple[str, Any]] = [("p", p) for p in run.params.items()]
    entities += [("t", t) for t in list(run.tags.items())[MAX_TAGS_AT_CREATE:]]
    entities += [("m", m) for m in run.metrics]
    out: list[Batch] = []
    params: list = []
    tags: list = []
    metrics: list = []
    size = 0

    def flush() -> None:
        nonlocal params, tags, metrics, size
        if params or tags or metrics:
            out.append(Batch(params, metrics, tags))
        params, tags, metrics, size = [], [], [], 0

    for kind, entity in entities:
        cost = _entity_bytes(*entity)
        full = (
            len(params) + len(tags) + len(metrics) >= MAX_ENTITIES_PER_BATCH
            or size + cost > MAX_BATCH_BYTES - 10_000
            or (kind == "p" and len(params) >= MAX_PARAMS_PER_BATCH)
            or (kind == "t" and len(tags) >= MAX_TAGS_PER_BATCH)
            or (kind == "m" and len(metrics) >= MAX_METRICS_PER_BATCH)
        )
        if full:
            flush()
        {"p": params, "t": tags, "m": metrics}[kind].append(entity)
        size += cost
    flush()
    return out


def link_batches(points: list[LinkedPoint]) -> list[list[LinkedPoint]]:
    """Linked points in ``log_batch``-sized groups (each carries its link)."""
    return [points[i:i + MAX_METRICS_PER_BATCH // 2] for i in range(0, len(points), MAX_METRICS_PER_BATCH // 2)]


def plan(run: RunData, n_artifacts: int, n_models: int) -> list[tuple[str, int]]:
    """The requests that log a run, in order: create, batches, dataset inputs, linked points,
    artifacts, models, terminate (a run without inputs or links plans neither, as before)."""
    ops = [(CREATE, 0)]
    ops += [(BATCH, i) for i in range(len(batches(run)))]
    if run.inputs:
        ops.append((INPUTS, 0))
    ops += [(LINKS, i) for i in range(len(link_batches(run.direct_links)))]
    ops += [(ARTIFACT, i) for i in range(n_artifacts)]
    ops += [(MODEL, i) for i in range(n_models)]
    ops.append((TERMINATE, 0))
    return ops
