"""MLflow 3 logged models for the models the collector and the replay upload.

MLflow 3's ``log_model`` makes a model an entity of its own, a *logged model*: created
(``POST logged-models``, status PENDING) with the run as its source, linked to the run as an
output (``runs/outputs``), its files uploaded to the model's own artifact location (not the
run's), then finalized (``PATCH logged-models/<id>``, READY). That is what the run page's
"Logged models" tab, ``mlflow.search_logged_models`` and ``models:/<model_id>`` URIs read, and
what ``runs:/<run_id>/<name>`` resolves to when the run's artifacts do not hold the model.

The collector and the replay do the same, with every request through
:class:`~mlflow_spark_tools.tracking.rest_calls.TrackingRequests` (paced, counted, retried by the
caller's policy). A model is logged to the run's artifacts instead, as MLflow 2 does, when the
client is MLflow 2, when the server has no logged-model API (an MLflow 2 server answers 404),
or when the model's name is one MLflow 3 refuses for a logged model (``/ : . % " '``, e.g. an
artifact path such as ``models/ridge``).

A write may stop half way (a 429 in a Spark task, a crash of the replay). The steps are made
safe to take again: the collector records the model's id in the payload, and a replay that
resumes finds the model through the run's outputs; a model found READY is not written twice,
and a run is never linked to the same model twice (MLflow would list it twice).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow_spark_tools.tracking.rate_limit_errors import endpoint_missing, error_summary
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests

log = logging.getLogger(__name__)

READY, PENDING = "LOGGED_MODEL_READY", "LOGGED_MODEL_PENDING"
# MLflow refuses these characters in a logged model's name
_BAD_NAME_CHARS = frozenset("/:.%\"'")
# what a model id in a payload may look like before it goes into a request path
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
# MLflow sends the first 100 params with the create and the rest in batches of 100
_PARAMS_PER_REQUEST = 100
# metric points per log_batch (MLflow's limit)
_POINTS_PER_BATCH = 1000
# the run tags MLflow's log_model copies to a logged model (its context tags)
_CONTEXT_TAGS = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit",
                 "mlflow.databricks.notebookID", "mlflow.databricks.notebookPath")

_HOSTS_WITHOUT_LOGGED_MODELS: set[str] = set()


def client_has_logged_models() -> bool:
    """Whether the MLflow installed here knows logged models (MLflow 3): an MLflow 2 client
    cannot load ``models:/<model_id>``, so its models stay in the run's artifacts."""
    try:
        from mlflow.entities import LoggedModel  # noqa: F401
    except ImportError:
        return False
    return True


def valid_name(name: str) -> bool:
    """Whether MLflow takes ``name`` as a logged model's name."""
    return bool(name) and not (set(name) & _BAD_NAME_CHARS)


@dataclass(frozen=True)
class LoggedModelInfo:
    """What the server says of a logged model."""

    model_id: str
    name: str
    experiment_id: str
    source_run_id: str | None
    artifact_uri: str
    status: str
    created_ms: int = 0

    @classmethod
    def from_json(cls, model: dict[str, Any]) -> LoggedModelInfo:
        info = model.get("info", model)
        return cls(str(info["model_id"]), str(info.get("name", "")), str(info.get("experiment_id", "")),
                   info.get("source_run_id") or None, str(info.get("artifact_uri", "")),
                   str(info.get("status", "")), int(info.get("creation_timestamp_ms") or 0))


class LoggedModels:
    """The logged-model endpoints of one tracking server, through ``requests``."""

    def __init__(self, requests: TrackingRequests) -> None:
        self.requests = requests

    def available(self, name: str) -> bool:
        """Whether a model named ``name`` is logged as a logged model here."""
        return valid_name(name) and client_has_logged_models() \
            and self.requests.host not in _HOSTS_WITHOUT_LOGGED_MODELS

    def create(self, experiment_id: str, name: str, run_id: str, params: dict[str, str],
               tags: dict[str, str]) -> LoggedModelInfo | None:
        """A new PENDING logged model; None when the server has no logged-model API (it is
        then remembered for this process)."""
        items = [{"key": k, "value": v} for k, v in params.items()]
        body = {"experiment_id": str(experiment_id), "name": name, "source_run_id": run_id,
                "params": items[:_PARAMS_PER_REQUEST],
                "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        try:
            answer = self.requests.call("/logged-models", "POST", body)
        except Exception as exc:
            if not endpoint_missing(exc):
                raise
            log.info("The tracking server has no logged-model API (%s): models are logged to the "
                     "runs' artifacts", error_summary(exc, 200))
            _HOSTS_WITHOUT_LOGGED_MODELS.add(self.requests.host)
            return None
        model = LoggedModelInfo.from_json(answer["model"])
        for start in range(_PARAMS_PER_REQUEST, len(items), _PARAMS_PER_REQUEST):
            self.requests.call(f"/logged-models/{model.model_id}/params", "POST",
                               {"model_id": model.model_id, "params": items[start:start + _PARAMS_PER_REQUEST]})
        return model

    def get(self, model_id: str) -> LoggedModelInfo | None:
        """The model, or None if the server has none of that id."""
        if not MODEL_ID.match(model_id):
            return None
        try:
            answer = self.requests.call(f"/logged-models/{model_id}", "GET")
        except Exception as exc:
            if getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return LoggedModelInfo.from_json(answer["model"])

    def outputs_of(self, run_id: str) -> list[str]:
        """The ids of the models linked to the run as its outputs."""
        run = self.requests.get_run(run_id)
        return [str(o["model_id"]) for o in (run.get("outputs") or {}).get("model_outputs", [])
                if o.get("model_id")]

    def link(self, run_id: str, model_id: str, step: int = 0) -> None:
        """Record the model as an output of the run."""
        self.requests.call("/runs/outputs", "POST",
                           {"run_id": run_id, "models": [{"model_id": model_id, "step": int(step)}]})

    def link_metrics(self, run_id: str, model_id: str, points: list[tuple[Any, ...]]) -> None:
        """Link the run's metric points (key, value, timestamp, step[, None, dataset name,
        dataset digest]) to the model, as MLflow's ``log_model`` does with the points at the
        model's step: the run's history keeps them once (the server skips points it has), the
        model lists them as its metrics."""
        for start in range(0, len(points), _POINTS_PER_BATCH):
            self.requests.log_batch(run_id, [], points[start:start + _POINTS_PER_BATCH], [], model_id=model_id)

    def finalize(self, model_id: str) -> None:
        """Mark the model READY (its files are all uploaded)."""
        self.requests.call(f"/logged-models/{model_id}", "PATCH",
                           {"model_id": model_id, "status": READY})


def context_tags(run_tags: dict[str, str]) -> dict[str, str]:
    """The run's tags a logged model carries too (who logged it, from which source)."""
    return {k: run_tags[k] for k in _CONTEXT_TAGS if k in run_tags}


def write_logged_model(models: LoggedModels, *, experiment_id: str, run_id: str, name: str,
                       params: dict[str, str], tags: dict[str, str],
                       upload: Callable[[LoggedModelInfo], None], known_id: str | None = None,
                       look_up: bool = False, on_created: Callable[[str], None] | None = None,
                       metrics: list[tuple[Any, ...]] | None = None,
                       earlier_same_name: int = 0) -> str | None:
    """Log one model of a run as a logged model; returns its id, or None when the server has
    no logged-model API (nothing was sent but the refused create).

    Args:
        models: the server's logged-model endpoints.
        experiment_id, run_id, name: the run, and the model's name (its artifact path).
        params, tags: the run's params (MLflow copies them to the model) and the model's tags.
        upload: saves and uploads the model's files to a model's artifact location.
        known_id: a model an earlier, interrupted write created (from a payload: untrusted, so
            used only if the server says it is this run's model of this name).
        look_up: an earlier write may have created the model without telling anyone (a crash):
            look for it among the run's outputs first.
        on_created: called with the new model's id right after the create, before anything
            else can fail.
        metrics: the run's metric points at the model's step (0) and the points linked to the
            model, linked to it.
        earlier_same_name: how many models the run logged under the same name before this one
            (written before it, in order): a look-up skips theirs.
    """
    linked = models.outputs_of(run_id) if (known_id or look_up) else []

    def own(found: LoggedModelInfo | None) -> bool:
        return found is not None and found.source_run_id == run_id and found.name == name \
            and found.experiment_id == str(experiment_id)

    model = None
    if known_id:
        found = models.get(known_id)
        if own(found):
            model = found
        else:
            log.warning("The payload names logged model %s, which is not model %r of run %s: a new one "
                        "is created", known_id[:128], name, run_id)
    if model is None and look_up:
        # the run's models of this name in the order they were created: the earlier ones
        # belong to the models logged before this one under the same name
        same = sorted((m for m in map(models.get, dict.fromkeys(linked)) if m is not None and own(m)),
                      key=lambda m: (m.created_ms, m.model_id))
        if len(same) > earlier_same_name:
            model = same[earlier_same_name]
    if model is not None and model.status == READY:
        return model.model_id
    if model is None:
        model = models.create(experiment_id, name, run_id, params, tags)
        if model is None:
            return None
        if on_created is not None:
            on_created(model.model_id)
    if model.model_id not in linked:
        models.link(run_id, model.model_id)
    if metrics:
        models.link_metrics(run_id, model.model_id, metrics)
    upload(model)
    models.finalize(model.model_id)
    return model.model_id
