"""Which refresh of an existing table costs less: an incremental MERGE or a full build.

An incremental refresh reads only what changed, but its MERGE has a price of its own: on a small
JVM Delta cluster a MERGE of 1% of 20,000 runs takes as long as writing all of them again, and
from a fast source (the backend database) the full read is cheap. From REST, or at 200,000 runs,
the incremental refresh wins by far. No constant tells which is which for a given engine,
cluster and source, so the index table keeps what the last refresh of each kind took
(``last_full_seconds`` at ``last_full_run_count`` runs, ``last_incremental_seconds``), and a
refresh that could be incremental becomes a full build when the last full build, scaled to
today's run count, took less time than the last incremental refresh.

After :data:`REPROBE_AFTER` full builds chosen this way in a row (``fulls_by_cost``), one
incremental refresh is measured again, so that a measurement of an unusual day does not decide
for ever. Set ``tables.refresh_by_cost: false`` to always refresh incrementally.
"""

from __future__ import annotations

from typing import Any

# Index table columns of the measurements (added to an index table written by an older version).
COST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("last_full_seconds", "double"),
    ("last_full_run_count", "bigint"),
    ("last_incremental_seconds", "double"),
    ("fulls_by_cost", "bigint"),
)
REPROBE_AFTER = 8
# Why a table is built in full, where the user knows it already (no other reason is printed).
NO_TABLE_YET = "no table yet"
ASKED_FOR = "a full refresh was asked for"
OBVIOUS_REASONS = (NO_TABLE_YET, ASKED_FOR)


def cheaper_full_build(index_row: dict[str, Any]) -> str | None:
    """Why a full build costs less than the incremental refresh the index row allows, or None
    when it does not, or when what the refreshes took is not known yet."""
    full = index_row.get("last_full_seconds")
    full_runs = index_row.get("last_full_run_count")
    incremental = index_row.get("last_incremental_seconds")
    if full is None or incremental is None or not full_runs:
        return None
    if (index_row.get("fulls_by_cost") or 0) >= REPROBE_AFTER:
        return None
    runs = int(index_row.get("run_count") or 0)
    expected = float(full) * max(1.0, runs / int(full_runs))
    if expected >= float(incremental):
        return None
    return (f"a full build is cheaper here: {expected:.1f} s expected at {runs:,} runs, "
            f"against {float(incremental):.1f} s for the last incremental refresh")


def measurements(previous: dict[str, Any] | None, mode: str, seconds: float, run_count: int,
                 by_cost: bool) -> dict[str, Any]:
    """The index row's measurement columns after a refresh of ``mode`` that took ``seconds``
    (those of the other mode carry over from the ``previous`` row)."""
    previous = previous or {}
    if mode == "full":
        return {
            "last_full_seconds": round(seconds, 3),
            "last_full_run_count": run_count,
            "last_incremental_seconds": previous.get("last_incremental_seconds"),
            "fulls_by_cost": (int(previous.get("fulls_by_cost") or 0) + 1) if by_cost else 0,
        }
    return {
        "last_full_seconds": previous.get("last_full_seconds"),
        "last_full_run_count": previous.get("last_full_run_count"),
        "last_incremental_seconds": round(seconds, 3),
        "fulls_by_cost": 0,
    }
