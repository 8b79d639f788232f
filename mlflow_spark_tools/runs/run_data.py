"""A run's buffered data, MLflow's limits on it, and the requests that log it.

Shared by the collector (which sends the requests from a Spark task) and the replayer (which
sends what the collector could not): both plan the same requests from the same data, so a
payload records only how many of them were done.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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

CREATE, BATCH, ARTIFACT, MODEL, TERMINATE = "create", "batch", "artifact", "model", "terminate"


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
    return key, number, timestamp, step


@dataclass
class RunData:
    """Everything a run logs, in the order it was logged."""

    experiment_id: str | None
    run_name: str | None
    start_time: int
    params: dict[str, str]
    metrics: list[tuple[str, float, int, int]]
    tags: dict[str, str]
    status: str = "FINISHED"
    end_time: int | None = None

    def validate(self) -> None:
        """Raise :class:`RunDataError` if MLflow would reject any key or value."""
        for key, text in self.params.items():
            check_param(key, text)
        for key, text in self.tags.items():
            check_tag(key, text)
        for key, value, ts, step in self.metrics:
            check_metric(key, value, ts, step)

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
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunData:
        """Rebuild from a payload document; raises :class:`RunDataError` for malformed data."""
        try:
            params = {str(k): str(v) for k, v in dict(data.get("params") or {}).items()}
            tags = {str(k): str(v) for k, v in dict(data.get("tags") or {}).items()}
            metrics = [(str(k), float(v), int(ts), int(step)) for k, v, ts, step in data.get("metrics") or []]
            run = cls(
                experiment_id=None if data.get("experiment_id") is None else str(data["experiment_id"]),
                run_name=data.get("run_name"),
                start_time=int(data["start_time"]),
                params=params,
                metrics=metrics,
                tags=tags,
                status=str(data.get("status") or "FINISHED"),
                end_time=None if data.get("end_time") is None else int(data["end_time"]),
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


def plan(run: RunData, n_artifacts: int, n_models: int) -> list[tuple[str, int]]:
    """The requests that log a run, in order: create, batches, artifacts, models, terminate."""
    ops = [(CREATE, 0)]
    ops += [(BATCH, i) for i in range(len(batches(run)))]
    ops += [(ARTIFACT, i) for i in range(n_artifacts)]
    ops += [(MODEL, i) for i in range(n_models)]
    ops.append((TERMINATE, 0))
    return ops
