"""MLflow model flavors: the module of a flavor, and saving a model as an MLflow model directory."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from mlflow_spark_tools.errors import UsageError

# mlflow.<name> modules that are not model flavors
NOT_FLAVORS = frozenset({"pyfunc", "models", "tracking", "entities", "utils", "store", "server"})
# MLflow 3's warning for every scikit-learn model saved with (cloud)pickle
PICKLE_CAUTION = "pickle or cloudpickle format requires exercising caution"
_choosing = threading.local()


class _OwnFormatChoice(logging.Filter):
    """Drops MLflow's pickle caution while this package saves a model in the format it chose
    (:func:`flavor_defaults`): said once per model, it filled a sweep's output with one line
    per run, about a choice the user did not make and whose blobs the package signs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_choosing, "active", False) and PICKLE_CAUTION in record.getMessage())


_FILTER = _OwnFormatChoice()


@contextlib.contextmanager
def own_format_choice(chosen: bool) -> Iterator[None]:
    """Within it, in this thread, MLflow's pickle caution is not logged when ``chosen`` (the
    package picked the format, not the caller)."""
    if not chosen:
        yield
        return
    logger = logging.getLogger("mlflow.sklearn")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    _choosing.active = True
    try:
        yield
    finally:
        _choosing.active = False


def flavor_module(flavor: str | None) -> Any:
    """``mlflow.<flavor>`` if it is a model flavor (it has ``save_model``, ``log_model`` and
    ``load_model``).

    Raises:
        UsageError: no such flavor, or the library it needs is not installed here.
    """
    if not flavor or not flavor.isidentifier() or flavor in NOT_FLAVORS:
        raise UsageError(f"Unknown model flavor {flavor!r}: use an MLflow flavor such as sklearn.")
    if importlib.util.find_spec(f"mlflow.{flavor}") is None:
        raise UsageError(f"Unknown model flavor {flavor!r}: MLflow has no module mlflow.{flavor}.")
    try:
        module = importlib.import_module(f"mlflow.{flavor}")
    except ImportError as exc:
        raise UsageError(f"The {flavor} flavor needs a library that is not installed here: {exc}. "
                         "Install it where this command runs.") from None
    if not all(callable(getattr(module, name, None)) for name in ("save_model", "log_model", "load_model")):
        raise UsageError(f"mlflow.{flavor} is not a model flavor (it has no save_model/log_model/load_model).")
    return module


def save_model_dir(model: Any, path: str, flavor: str | None, save_func: Callable[..., Any] | None,
                   kwargs: dict[str, Any]) -> None:
    """Save a model as an MLflow model directory at ``path``.

    ``flavor`` names an MLflow flavor (``sklearn`` -> ``mlflow.sklearn.save_model``);
    ``save_func`` is any function with the signature of a flavor's ``save_model``.
    """
    if save_func is None:
        if not flavor:
            raise ValueError("log_model needs flavor= (e.g. 'sklearn') or log_model_func=")
        save_func = flavor_module(flavor).save_model
        chosen = flavor_defaults(flavor, save_func, kwargs)
        with own_format_choice(chosen != kwargs):
            save_func(model, path, **chosen)
        return
    save_func(model, path, **kwargs)


def stamp_logged_model(path: str, model_id: str, run_id: str, artifact_uri: str) -> None:
    """Write into a saved model directory's ``MLmodel`` the logged model it becomes (what
    MLflow 3's ``log_model`` writes there): its id, its source run and its artifact location."""
    from mlflow.models import Model

    mlmodel = os.path.join(path, "MLmodel")
    if not os.path.isfile(mlmodel):  # a save function of the caller's that writes none
        return
    model = Model.load(mlmodel)
    model.model_id, model.model_uuid, model.run_id, model.artifact_path = model_id, model_id, run_id, artifact_uri
    model.save(mlmodel)


def flavor_defaults(flavor: str | None, func: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for a flavor's ``save_model``/``log_model`` with this package's defaults.

    scikit-learn models are saved with cloudpickle unless the caller chose a format (or the
    skops types to trust): MLflow 3's default, skops, refuses estimators holding types it does
    not trust, such as the trees of a random forest (``sklearn.tree._tree.Tree``), and the
    package had the model as a pickle already. MLflow 2 saves with cloudpickle by default.
    """
    if flavor != "sklearn" or {"serialization_format", "skops_trusted_types"} & set(kwargs):
        return kwargs
    try:
        accepted = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return kwargs
    return {**kwargs, "serialization_format": "cloudpickle"} if "serialization_format" in accepted else kwargs
