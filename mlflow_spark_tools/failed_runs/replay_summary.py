"""What a replay pass did: :class:`ReplaySummary`, and :class:`PassRecorder`, through which
the pass's workers and its requests add to it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mlflow_spark_tools.config import API_CLASSES
from mlflow_spark_tools.failed_runs.replay_outcomes import (
    FAILED,
    INCOMPLETE,
    LOST,
    RELEASED,
    REPLAYED,
    RESUMED,
)


@dataclass
class ReplaySummary:
    """What one replay pass did."""

    replayed: int = 0
    resumed: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0
    pending: int = 0
    incomplete: int = 0
    held_by: str | None = None
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(API_CLASSES, 0))
    throttled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(API_CLASSES, 0))
    endpoints: dict[str, dict[str, int]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    ledger: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "replayed": self.replayed, "resumed": self.resumed, "failed": self.failed,
            "released_to_pending": self.released, "lost_to_another_replayer": self.lost,
            "still_pending": self.pending, "being_written": self.incomplete, "requests": self.requests,
            "429s": self.throttled, "endpoints": self.endpoints, "rates_now": self.rates,
            "seconds": round(self.seconds, 3),
        }
        if self.held_by is not None:
            out["held_by"] = self.held_by
        return out


class PassRecorder:
    """The summary of the current pass, added to from many threads under one lock (a
    :class:`~mlflow_spark_tools.failed_runs.replay_outcomes.PassRecord` for one payload's replay)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.summary = ReplaySummary()

    def new_pass(self) -> ReplaySummary:
        """Start the summary of a new pass and return it."""
        self.summary = ReplaySummary()
        return self.summary

    def count_request(self, api_class: str, status: int | None) -> None:
        """Count one attempt of a tracking request (and a 429 answer)."""
        with self._lock:
            self.summary.requests[api_class] += 1
            if status == 429:
                self.summary.throttled[api_class] += 1

    def outcome(self, outcome: str) -> None:
        """Count a payload's outcome."""
        with self._lock:
            summary = self.summary
            if outcome in (REPLAYED, RESUMED):
                summary.replayed += 1
                summary.resumed += outcome == RESUMED
            elif outcome == FAILED:
                summary.failed += 1
            elif outcome == RELEASED:
                summary.released += 1
            elif outcome == LOST:
                summary.lost += 1
            elif outcome == INCOMPLETE:
                summary.incomplete += 1

    def foreign_quarantined(self) -> None:
        """Count a file that is not the package's, moved to ``failed/``."""
        with self._lock:
            self.summary.failed += 1

    def ledger(self, payload_id: str, run_id: str | None, experiment_id: str | None, status: str,
               error: str | None, attempts: int = 1) -> None:
        """Add the ledger row of a payload that left the store."""
        with self._lock:
            self.summary.ledger.append({
                "payload_id": payload_id, "run_id": run_id, "experiment_id": experiment_id,
                "status": status, "attempts": attempts, "error": error,
                "replayed_at": int(time.time() * 1000),
            })
