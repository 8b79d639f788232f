"""Where a store's lease lives, as the store itself names it: ``lease.json``, written by the
store's first replay, so that a replay with another ``--database`` (or another embedded
warehouse), which would hold another lease of the same store, refuses instead of replaying
beside the first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mlflow_spark_tools.errors import InvalidStoreError
from mlflow_spark_tools.failed_runs.document import PayloadError
from mlflow_spark_tools.failed_runs.lease import DeltaLease
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.verification import Verifier

LEASE_MARKER_FORMAT = "mlflow-spark-tools/store-lease"


class LeasePlace:
    """Checks that a store's lease lives where this replayer's does.

    Args:
        store: the failed-run store.
        lease: this replayer's lease of it.
        verifier: signs the marker this replay writes and checks the one it reads.
        sleep: waiting function (the replay's, injectable for tests).
        settle_seconds: how long after writing the marker the replay that wrote it reads it
            back, at least.
    """

    def __init__(self, store: FailedRunStore, lease: DeltaLease, verifier: Verifier, sleep: Callable[[float], None],
                 settle_seconds: float) -> None:
        self.store = store
        self.lease = lease
        self.verifier = verifier
        self.sleep = sleep
        self.settle_seconds = settle_seconds
        self._placed = False
        self._marker_written: float | None = None

    def check(self, *, confirm: bool = False) -> None:
        """Refuse to replay a store whose lease lives elsewhere than this replayer's.

        The first replay of a store writes ``lease.json`` naming its lease's place (signed with
        the key); every replay checks it before it takes the lease. The replay that wrote it
        checks it once more after taking the lease (``confirm``), at least ``settle_seconds``
        after writing: of two first replays at once, both then read the marker written last,
        and the other one refuses.

        Raises:
            InvalidStoreError: the store names another place, or a marker this replay cannot trust.
        """
        if self._placed:
            return
        place = self.lease.place
        problem: str | None = None
        try:
            marker = self._marker(place, confirm)
        except PayloadError as exc:
            marker, problem = None, str(exc)
        root = self.store.root
        if marker is None or marker.get("format") != LEASE_MARKER_FORMAT or not isinstance(marker.get("lease"), str):
            problem = problem or "it is not a lease marker of this package"
        elif not self.verifier.signed_by_us(marker):
            problem = "it is not signed by this replay's key"
        if problem is not None or marker is None:
            raise InvalidStoreError(f"The failed-run store {root} names where its lease lives in {root / 'lease.json'}, "
                                    f"but {problem}: remove that file (the next replay writes it again).")
        if marker["lease"] != place:
            raise InvalidStoreError(
                f"The failed-run store {root} is replayed with its lease in {marker['lease'][:300]}, and this "
                f"replay's lease is {place}: run it with that database (--database), so that two replays never "
                f"work the store at once; if the store moved on purpose, remove {root / 'lease.json'}.")
        self._placed = confirm or self._marker_written is None

    def _marker(self, place: str, confirm: bool) -> dict[str, Any] | None:
        """The store's marker, written first when there is none (before the lease is taken)."""
        if confirm:
            written = time.monotonic() if self._marker_written is None else self._marker_written
            self.sleep(max(0.0, self.settle_seconds - (time.monotonic() - written)))
        marker = self.store.read_lease_marker()
        if marker is None and not confirm:
            record: dict[str, Any] = {"format": LEASE_MARKER_FORMAT, "lease": place, "written_by": self.lease.owner}
            self.verifier.sign(record)
            try:
                self.store.write_lease_marker(record)
                self._marker_written = time.monotonic()
            except FileExistsError:
                pass
            marker = self.store.read_lease_marker()
        return marker
