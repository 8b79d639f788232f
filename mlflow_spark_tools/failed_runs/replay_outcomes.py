"""What became of a payload a replay handled, the two ways its replay stops early, and where
one payload's replay records what it did.

The outcomes are the :class:`~mlflow_spark_tools.failed_runs.replayer.Replayer`'s tally and
the ledger's ``status``; :class:`Quarantine` and :class:`Incomplete` are raised by the steps of
one payload (:mod:`mlflow_spark_tools.failed_runs.payload_replay` and the modules it uses) and
turned into outcomes by the replayer.
"""

from __future__ import annotations

from typing import Protocol

REPLAYED, RESUMED, FAILED, RELEASED, LOST, INCOMPLETE = (
    "replayed", "resumed", "failed", "released", "lost", "incomplete")
LEFT_THE_STORE = frozenset({REPLAYED, RESUMED, FAILED})  # outcomes after which a payload is not handled again

# The logger of one payload's replay, whichever module holds the step that logs: the command
# line's log lines and users' log filters name it.
PAYLOAD_REPLAY_LOGGER = "mlflow_spark_tools.failed_runs.payload_replay"


class Quarantine(Exception):
    """This payload cannot be replayed; the message is the reason."""


class Incomplete(Exception):
    """The document's bytes do not hash to its name yet: its writer may still be writing it."""


class PassRecord(Protocol):
    """Where the replay of one payload records what it did in the current pass."""

    def ledger(self, payload_id: str, run_id: str | None, experiment_id: str | None, status: str,
               error: str | None, attempts: int = 1) -> None:
        """Add the ledger row of a payload that left the store."""

    def foreign_quarantined(self) -> None:
        """Count a file that is not the package's, moved to ``failed/``."""
