"""Retry settings of the retrying client's operations (``client.retries`` in YAML)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from mlflow_spark_tools.config.values import number, positive_int
from mlflow_spark_tools.errors import InvalidConfigError

# The operations of the retrying client (MlflowClient method names) that ``client.retries`` may
# give their own retry settings; every other operation retries as ``default`` says.
CLIENT_OPERATIONS = frozenset({
    "create_experiment", "search_experiments", "delete_experiment", "restore_experiment",
    "rename_experiment", "set_experiment_tag", "delete_experiment_tag", "search_runs", "log_batch",
    "get_experiment", "get_experiment_by_name", "get_run", "get_parent_run", "create_run",
    "update_run", "set_terminated", "delete_run", "restore_run", "log_param", "log_metric",
    "set_tag", "delete_tag", "get_metric_history", "list_artifacts", "download_artifacts",
    "log_artifact", "log_artifacts", "log_text", "log_dict", "log_model", "load_model",
    "search_logged_models", "get_logged_model",
})
DEFAULT_OPERATION = "default"
RETRY_OPERATIONS = (DEFAULT_OPERATION, *sorted(CLIENT_OPERATIONS))


@dataclass(frozen=True)
class RetrySettings:
    """The retry policy of one client operation; None inherits the ``default`` entry.

    Attributes:
        attempts: tries in total (1 = no retry).
        initial_wait: seconds before the second try; doubles with every further try.
        max_wait: the longest single wait.
        jitter: up to this many random seconds added to every wait, so that many workers
            refused at once do not come back at once.
    """

    attempts: int | None = None
    initial_wait: float | None = None
    max_wait: float | None = None
    jitter: float | None = None

    def check(self, where: str) -> None:
        if self.attempts is not None:
            positive_int(where, "attempts", self.attempts)
        for key in ("initial_wait", "max_wait", "jitter"):
            value = getattr(self, key)
            if value is not None:
                number(f"{where}.{key}", value)

    def over(self, base: RetrySettings) -> RetrySettings:
        """These settings with the unset ones taken from ``base``."""
        return RetrySettings(*(
            getattr(self, f.name) if getattr(self, f.name) is not None else getattr(base, f.name)
            for f in dataclasses.fields(self)
        ))


def _default_retries() -> dict[str, RetrySettings]:
    retries = {op: RetrySettings() for op in RETRY_OPERATIONS}
    retries[DEFAULT_OPERATION] = RetrySettings(attempts=5, initial_wait=1.0, max_wait=30.0, jitter=1.0)
    return retries


@dataclass(frozen=True)
class ClientConfig:
    """The retrying tracking client: retries per operation and MLflow's own HTTP retries."""

    mlflow_http_retries: int | None = 0
    retries: Mapping[str, RetrySettings] = field(default_factory=_default_retries)

    def __post_init__(self) -> None:
        if self.mlflow_http_retries is not None:
            positive_int("client", "mlflow_http_retries", self.mlflow_http_retries, 0)
        retries = dict(_default_retries())
        for op, value in dict(self.retries).items():
            if op not in retries:
                raise InvalidConfigError(
                    f"Unknown operation client.retries.{op}; known: {', '.join(RETRY_OPERATIONS)}."
                )
            if isinstance(value, Mapping):
                given = value
                try:
                    value = RetrySettings(**given)
                except TypeError:
                    raise InvalidConfigError(
                        f"client.retries.{op} takes attempts, initial_wait, max_wait and jitter; "
                        f"got {sorted(given)}."
                    ) from None
            if not isinstance(value, RetrySettings):
                raise InvalidConfigError(f"client.retries.{op} must be a mapping.")
            value.check(f"client.retries.{op}")
            retries[op] = value
        default = retries[DEFAULT_OPERATION]
        if None in dataclasses.astuple(default):
            raise InvalidConfigError("client.retries.default must set attempts, initial_wait, "
                                     "max_wait and jitter.")
        object.__setattr__(self, "retries", retries)

    def policy(self, operation: str) -> RetrySettings:
        """The complete retry settings of ``operation`` (its own entry over ``default``)."""
        default = self.retries[DEFAULT_OPERATION]
        own = self.retries.get(operation)
        return own.over(default) if own is not None else default
