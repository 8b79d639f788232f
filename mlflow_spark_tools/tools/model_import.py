"""Creating an MLflow run from a model trained elsewhere.

The model is read from a pickle, cloudpickle or joblib file (scikit-learn) or from a directory
a flavor saved (``mlflow.<flavor>.save_model``, holding an ``MLmodel`` file), then logged into a
new run as an MLflow model of that flavor, in an experiment created when needed.

Unpickling runs code from the file. A pickled model on shared storage (``/dbfs``, ``/Volumes``,
a file another user owns or others can write) is loaded only when the caller says it trusts it
(``trust_pickle``); a file the current user owns and only they can write is loaded as it is.
"""

from __future__ import annotations

import inspect
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlflow_spark_tools.databricks.paths import is_shared_storage, to_fuse_path
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.runs.models import flavor_defaults, flavor_module
from mlflow_spark_tools.tracking.client import RetryingClient

log = logging.getLogger(__name__)

IMPORTED_FROM_TAG = "mlflow_spark_tools.imported_from"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".cloudpickle", ".joblib")


@dataclass(frozen=True)
class ImportedModel:
    """Where a model imported by :func:`log_model_from_path` landed."""

    run_id: str
    experiment_id: str
    model_uri: str
    model_id: str | None


def _check_artifact_path(artifact_path: str) -> str:
    path = artifact_path.strip().strip("/")
    if not path or any(part in ("", ".", "..") for part in path.split("/")):
        raise UsageError(f"Invalid artifact path {artifact_path!r}: use a relative name like 'model'.")
    return path


def _is_trusted_local_file(path: Path) -> bool:
    """Owned by the current user and writable by nobody else, outside shared storage."""
    if is_shared_storage(str(path)):
        return False
    for candidate in (path, path.parent):
        info = candidate.stat()
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def _require_pickle_trust(path: Path, trust_pickle: bool) -> None:
    if trust_pickle or _is_trusted_local_file(path):
        return
    raise UsageError(
        f"{path} is a pickled model on shared storage (or a file others can write); loading it "
        "runs whatever code it holds. Pass --trust-pickle (trust_pickle=True) if you trust it."
    )


def _mlmodel_flavors(directory: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((directory / "MLmodel").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"Cannot read {directory / 'MLmodel'}: {exc}") from None
    flavors = data.get("flavors") if isinstance(data, dict) else None
    return flavors if isinstance(flavors, dict) else {}


def load_native_model(model_path: str, flavor: str, *, trust_pickle: bool = False) -> Any:
    """Load the model at ``model_path`` (file or flavor directory) for ``flavor``."""
    module = flavor_module(flavor)
    path = Path(to_fuse_path(model_path))
    if not path.exists():
        raise UsageError(f"Model path {model_path!r} does not exist.")
    if not os.access(path, os.R_OK):
        raise UsageError(f"Model path {model_path!r} is not readable by this user.")
    if path.is_dir():
        if not (path / "MLmodel").is_file():
            raise UsageError(f"{model_path!r} is a directory without an MLmodel file: give a model "
                             f"file, or a directory saved with mlflow.{flavor}.save_model.")
        flavors = _mlmodel_flavors(path)
        if flavor not in flavors:
            raise UsageError(f"The model in {model_path!r} has flavors {sorted(flavors)}, not {flavor!r}.")
        if flavors[flavor].get("serialization_format", "pickle") in ("pickle", "cloudpickle"):
            _require_pickle_trust(path / flavors[flavor].get("pickled_model", "model.pkl"), trust_pickle)
        return module.load_model(str(path))
    if flavor != "sklearn":
        raise UsageError(f"For the {flavor} flavor give a directory saved with "
                         f"mlflow.{flavor}.save_model; model files are read for sklearn.")
    _require_pickle_trust(path, trust_pickle)
    model = _unpickle(path)
    if not (callable(getattr(model, "predict", None)) or callable(getattr(model, "transform", None))):
        raise UsageError(f"{model_path!r} holds a {type(model).__name__}, not a scikit-learn model "
                         "(no predict or transform method).")
    return model


def _unpickle(path: Path) -> Any:
    try:
        if path.suffix == ".joblib":
            import joblib

            return joblib.load(path)
        import cloudpickle

        with open(path, "rb") as handle:
            return cloudpickle.load(handle)
    except OSError as exc:
        raise UsageError(f"Cannot read model file {str(path)!r}: {exc.strerror or exc}.") from None
    except Exception as exc:
        raise UsageError(f"Cannot load model file {str(path)!r}: it is not a readable pickle "
                         f"({type(exc).__name__}: {exc}).") from None


def log_model_from_path(
    client: RetryingClient,
    model_path: str,
    flavor: str,
    experiment_name: str,
    *,
    run_name: str | None = None,
    artifact_path: str = "model",
    trust_pickle: bool = False,
) -> ImportedModel:
    """Create a run in ``experiment_name`` holding the model at ``model_path`` as an MLflow model.

    The experiment is created if needed. The run is FINISHED when the model is logged and
    FAILED (then the error is raised) when logging fails. The fluent MLflow API that flavors
    log through is pointed at the client's tracking server for the duration of the call (it
    is process-wide state: do not import models from several threads at once).
    """
    import mlflow

    module = flavor_module(flavor)
    artifact_path = _check_artifact_path(artifact_path)
    model = load_native_model(model_path, flavor, trust_pickle=trust_pickle)
    experiment_id = client.get_or_create_experiment(experiment_name)
    run = client.create_run(experiment_id, run_name=run_name, tags={IMPORTED_FROM_TAG: model_path})
    run_id = run.info.run_id
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        name_arg = "name" if "name" in inspect.signature(module.log_model).parameters else "artifact_path"
        client.call("start_run", mlflow.start_run, run_id=run_id, log_system_metrics=False)
        try:
            options = flavor_defaults(flavor, module.log_model, {name_arg: artifact_path})
            info = client.call("log_model", module.log_model, model, **options)
        except BaseException:
            client.call("set_terminated", mlflow.end_run, "FAILED")
            raise
        client.call("set_terminated", mlflow.end_run, "FINISHED")
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return ImportedModel(run_id, experiment_id, f"runs:/{run_id}/{artifact_path}",
                         getattr(info, "model_id", None))
