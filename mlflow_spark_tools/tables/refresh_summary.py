"""What one refresh of one experiment table did: :class:`RefreshSummary`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mlflow_spark_tools.errors import EXIT_FAILURE, MlflowSparkToolsError
from mlflow_spark_tools.tracking.rate_limit_errors import error_summary

FULL, INCREMENTAL = "full", "incremental"


@dataclass
class RefreshSummary:
    """What one refresh of one experiment table did.

    ``reason`` says why a refresh was a full build (None for an incremental one);
    ``column_collisions`` names each key that got a suffixed column name this time, and the key
    that holds the name it wanted; ``runs_not_seen`` counts the runs the store has and the table
    lacks after an incremental refresh (runs that started and ended before the last refresh,
    such as imported or back-dated ones; counted where the source can count, the database);
    ``inputs``
    counts the dataset inputs written (of the runs fetched), ``models`` the rows of the models
    table; ``models_table`` is None when the server has no logged models.
    """

    experiment_id: str
    experiment_name: str | None = None
    table: str | None = None
    mode: str | None = None
    reason: str | None = None
    runs_fetched: int = 0
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    row_count: int = 0
    columns_added: list[str] = field(default_factory=list)
    column_collisions: list[str] = field(default_factory=list)
    runs_not_seen: int | None = None
    columns_widened: list[str] = field(default_factory=list)
    metrics_table: str | None = None
    history_runs: int = 0
    history_points: int = 0
    history_requests: int = 0
    history_truncated: list[str] = field(default_factory=list)
    inputs_table: str | None = None
    inputs: int = 0
    models_table: str | None = None
    models: int = 0
    seconds: float = 0.0
    error: str | None = None
    error_exit_code: int | None = None

    @classmethod
    def failed(cls, experiment_id: str, experiment_name: str | None, exc: Exception) -> RefreshSummary:
        """The summary of an experiment that could not be built: the error's message (an error
        that is not the package's own: its type and first line) and its exit code (2 for usage
        errors such as an unknown experiment, else 1)."""
        if isinstance(exc, MlflowSparkToolsError):
            return cls(experiment_id, experiment_name, error=str(exc), error_exit_code=exc.exit_code)
        return cls(experiment_id, experiment_name, error=f"{type(exc).__name__}: {error_summary(exc, 500)}",
                   error_exit_code=EXIT_FAILURE)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ok": self.ok}
