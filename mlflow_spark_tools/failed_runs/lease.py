"""Who may replay a failed-run store: one replayer at a time, by a lease held through a Delta
table's commits.

Object storage gives no operation that only one of two hosts can win: no rename, no link, no
exclusive create across hosts (docs/REPLAY.md has the sources). A Delta table does: two
transactions that change the same row cannot both commit; the second fails with a conflict
(Databricks, "Isolation levels and write conflicts": concurrent UPDATE, DELETE and MERGE INTO
"can conflict when modifying the same row", with or without row-level concurrency; Delta
Lake's optimistic concurrency control does the same). The replay job runs on Spark with Delta
anyway, for its ledger.

``<database>.replay_lease`` holds a row per store::

    store_key   first 32 hex of the SHA-256 of the store's path    store   the path itself
    row_id      random, one per row                                 generation   +1 per holder
    owner       the replayer holding it ('' once released)          heartbeat    +1 per renewal
    renewed_ms  the holder's clock at its last renewal (a hint, never trusted for a takeover)

- **Acquire**: read the rows at the highest generation. Free (owner ''): one conditional
  UPDATE moves exactly those rows, unchanged, to the next generation with this owner. Held:
  when the holder renewed within the lease by its own clock, give up at once (another
  replayer is working); else watch the row for a whole lease on this process's own clock and
  take it with the same conditional UPDATE only if nothing changed. Either way the rows are
  read back: the lease is held only if every row at the highest generation names this owner.
- **Renew** every quarter of the lease: the heartbeat +1, conditional on generation and owner;
  only a heartbeat seen to grow counts. Requests are sent only within half a lease of the
  start of the last renewal that counted (:meth:`DeltaLease.check`, the pacing layer's fence),
  so a holder that stalls stops sending a half lease before anyone may take over; a renewal
  that fails for a whole lease, or finds another owner, loses the lease.
- **Release**: owner '' at the end of a job, so the next job takes it at once.

The first row of a store is appended when none is seen; two replayers starting at once may
both append one. Such rows are identical, and each later change moves exactly the rows it
read, so duplicates change together; a row appended late stays at generation 0, below the
highest, and is never read as the lease again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from mlflow_spark_tools.core.identifiers import qualified_name, sql_string
from mlflow_spark_tools.errors import EngineError
from mlflow_spark_tools.failed_runs.store_entries import is_owner_name, new_owner
from mlflow_spark_tools.spark.arrow import to_dataframe
from mlflow_spark_tools.spark.catalog import Database, delta_missing, spark_version
from mlflow_spark_tools.spark.engine import Engine
from mlflow_spark_tools.tracking.pacing import StopSending
from mlflow_spark_tools.tracking.rate_limit_errors import error_summary

log = logging.getLogger(__name__)

LEASE_TABLE = "replay_lease"
LEASE_SCHEMA = pa.schema([
    ("store_key", pa.string()),
    ("store", pa.string()),
    ("row_id", pa.string()),
    ("generation", pa.int64()),
    ("owner", pa.string()),
    ("heartbeat", pa.int64()),
    ("renewed_ms", pa.int64()),
])
LEASE_DDL = ("store_key STRING, store STRING, row_id STRING, generation BIGINT, owner STRING, heartbeat BIGINT, "
             "renewed_ms BIGINT")
# How often, and how far apart, a replayer tries to create or register the lease table while
# another one is creating it.
CREATE_ATTEMPTS = 10
CREATE_WAIT_SECONDS = 0.5
# Immediate retries of an UPDATE that met a concurrent commit (see DeltaLease._update).
CONFLICT_RETRIES = 3
_CONFLICT_MARKERS = ("DELTA_CONCURRENT", "ConcurrentAppendException", "ConcurrentDeleteReadException",
                     "ConcurrentDeleteDeleteException", "ConcurrentTransactionException", "ConcurrentWriteException",
                     "conflicting commit", "Transaction conflict")


def _is_commit_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is Delta refusing a commit because another one came first."""
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in _CONFLICT_MARKERS)


class LeaseLost(StopSending):
    """This replayer no longer holds its store: it must send nothing more."""


@dataclass(frozen=True)
class LeaseState:
    """The rows of a store at their highest generation: (row_id, owner, heartbeat) each."""

    generation: int
    rows: tuple[tuple[str, str, int], ...]
    renewed_ms: int

    @property
    def owner(self) -> str | None:
        """The one owner of every row, '' when released; None when the rows disagree."""
        owners = {owner for _, owner, _ in self.rows}
        return owners.pop() if len(owners) == 1 else None

    @property
    def heartbeat(self) -> int:
        return max(beat for _, _, beat in self.rows)


def store_key(root: str | os.PathLike) -> str:
    """The lease key of a store: its path with links resolved, hashed."""
    return hashlib.sha256(os.path.realpath(os.fspath(root)).encode("utf-8")).hexdigest()[:32]


class DeltaLease:
    """The lease of one store, for one replayer (see the module docstring).

    Args:
        engine: Spark with Delta (the replay job's), or a function that gives it on first use (a
            replay of an empty store starts none).
        database: where ``replay_lease`` lives (``tables.database``).
        store_root: the store's path.
        lease_seconds: how long a holder that stopped renewing keeps the store; half of it is
            the margin between the last request a stalled holder may send and a takeover, so
            keep it well above the longest single request (an artifact upload).
        owner: this replayer's name (default: host, process and a random part).
        clock, wall, sleep: this process's monotonic clock, wall clock and wait (injectable).
    """

    def __init__(self, engine: Engine | Callable[[], Engine], database: str, store_root: str | os.PathLike, *,
                 lease_seconds: float = 300.0, owner: str | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.owner = owner or new_owner()
        if not is_owner_name(self.owner):
            raise ValueError(f"{self.owner[:80]!r} cannot name a replayer")
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be positive")
        self._engine = engine
        self.database = database
        self.table = qualified_name(database, LEASE_TABLE)
        self.store = os.path.realpath(os.fspath(store_root))
        self.key = store_key(store_root)
        self.lease_seconds = float(lease_seconds)
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self.holder: str | None = None  # who holds the store when acquire() did not get it
        self._cond = threading.Condition()
        self._sql_lock = threading.Lock()
        self._generation: int | None = None
        self._heartbeat = 0
        self._renewed_at = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def engine(self) -> Engine:
        if not isinstance(self._engine, Engine):
            self._engine = self._engine()
        return self._engine

    @property
    def db(self) -> Database:
        return Database(self.engine, self.database)

    @property
    def place(self) -> str:
        """Where this lease lives: its table, and the warehouse holding the table's files when
        the engine has one (two embedded engines' tables of one name are two tables)."""
        warehouse = self.engine.warehouse
        return self.table if warehouse is None else f"{self.table} at {warehouse}"

    @property
    def interval(self) -> float:
        """Seconds between renewals."""
        return self.lease_seconds / 4

    @property
    def held(self) -> bool:
        with self._cond:
            return self._generation is not None and self._lost is None

    # ---- the table -----------------------------------------------------------------------

    def _sql(self, text: str) -> list[Any]:
        with self._sql_lock:
            return list(self.engine.spark.sql(text).collect())

    def _ensure_table(self) -> None:
        """Create the lease table, or register the one at the warehouse path (the embedded
        engine forgets tables between processes). Replayers starting at once may each try to
        create it: one does, and the others, refused while its first commit is not there yet,
        wait for that commit and register it."""
        db = self.db
        db.ensure()
        location = self.engine.table_location(db.database, LEASE_TABLE)
        for attempt in range(CREATE_ATTEMPTS):
            if db.exists(LEASE_TABLE):
                return
            if location is not None and any((Path(location) / "_delta_log").glob("*.json")):
                self._sql(f"CREATE TABLE IF NOT EXISTS {self.table} USING delta LOCATION {sql_string(location)}")
                return
            where = "" if location is None else f" LOCATION {sql_string(location)}"
            try:
                self._sql(f"CREATE TABLE IF NOT EXISTS {self.table} ({LEASE_DDL}) USING delta{where}")
                return
            except Exception:
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
                log.debug("Creating %s failed; another replayer may be creating it", self.table, exc_info=True)
                self.sleep(CREATE_WAIT_SECONDS)

    def _state(self) -> LeaseState | None:
        rows = self._sql(f"SELECT row_id, generation, owner, heartbeat, renewed_ms FROM {self.table} "
                         f"WHERE store_key = {sql_string(self.key)}")
        if not rows:
            return None
        top = max(int(r["generation"]) for r in rows)
        at_top = sorted((str(r["row_id"]), str(r["owner"] or ""), int(r["heartbeat"]))
                        for r in rows if int(r["generation"]) == top)
        renewed = max(int(r["renewed_ms"] or 0) for r in rows if int(r["generation"]) == top)
        return LeaseState(top, tuple(at_top), renewed)

    def _insert_first_row(self) -> None:
        row = {"store_key": self.key, "store": self.store, "row_id": uuid.uuid4().hex, "generation": 0,
               "owner": "", "heartbeat": 0, "renewed_ms": 0}
        data = pa.Table.from_pylist([row], schema=LEASE_SCHEMA)
        with self._sql_lock:
            self.db.append(to_dataframe(self.engine.spark, data, LEASE_DDL), LEASE_TABLE)

    def _update(self, assignments: str, condition: str) -> None:
        """One conditional UPDATE; a commit conflict is not an error here (the rows are read
        back after every change to see what holds).

        Open-source Delta Lake detects conflicts by file, not by row: an UPDATE of one store's
        row conflicts with a concurrent UPDATE of another store's row in the same file. Such a
        conflict is tried again at once, up to :data:`CONFLICT_RETRIES` times: the condition is
        evaluated again on the new version, so a retry changes nothing that moved meanwhile.
        """
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._sql(f"UPDATE {self.table} SET {assignments} WHERE store_key = {sql_string(self.key)} "
                          f"AND {condition}")
                return
            except Exception as exc:
                if attempt < CONFLICT_RETRIES and _is_commit_conflict(exc):
                    log.debug("Lease update of %s met a concurrent commit; trying again", self.store)
                    continue
                log.debug("Lease update of %s did not commit: %s", self.store, error_summary(exc, 200))
                return

    # ---- acquiring -----------------------------------------------------------------------

    def acquire(self) -> str | None:
        """Take the store for this replayer; None when it holds it now, else who holds it.

        Waits up to one lease when the holder looks stale, to see it is gone.
        """
        if self.held:
            return None
        try:
            self._ensure_table()
            state = self._state()
            if state is None:
                self._insert_first_row()
                state = self._state()
        except Exception as exc:
            missing = delta_missing(exc, spark_version(self.engine.spark))
            if missing is not None:
                raise EngineError(f"The replay holds its store through the Delta table {self.table}: {missing}") \
                    from None
            raise EngineError(f"Could not read the replay lease table {self.table}: {error_summary(exc, 300)}") \
                from None
        if state is None:
            raise EngineError(f"The replay lease table {self.table} did not keep its row")
        if state.owner == "":
            return self._take(state)
        age = self.wall() * 1000 - state.renewed_ms
        if state.owner is not None and 0 <= age < self.lease_seconds * 1000:
            return self._busy(state)
        # it looks stale by the holder's clock: watch it for a whole lease on this one's
        log.info("The store %s is held by %s, which has not renewed its lease lately; watching it for %g s",
                 self.store, state.owner or "several replayers", self.lease_seconds)
        deadline = self.clock() + self.lease_seconds
        while (left := deadline - self.clock()) > 0:
            self.sleep(min(self.interval, left))
            now = self._state()
            if now is not None and (now.generation, now.rows) != (state.generation, state.rows):
                return self._take(now) if now.owner == "" else self._busy(now)
        return self._take(state)

    def _take(self, seen: LeaseState) -> str | None:
        """Move exactly the rows ``seen`` to the next generation under this owner, if unchanged."""
        started = self.clock()
        rows = " OR ".join(f"(row_id = {sql_string(row_id)} AND owner = {sql_string(owner)} AND heartbeat = {beat})"
                           for row_id, owner, beat in seen.rows)
        self._update(f"generation = {seen.generation + 1}, owner = {sql_string(self.owner)}, heartbeat = 0, "
                     f"renewed_ms = {int(self.wall() * 1000)}",
                     f"generation = {seen.generation} AND ({rows})")
        now = self._state()
        if now is None:
            return "another replayer"
        if not (now.generation == seen.generation + 1 and now.owner == self.owner
                and {r[0] for r in now.rows} == {r[0] for r in seen.rows}):
            return self._busy(now)
        with self._cond:
            self._generation, self._heartbeat, self._renewed_at, self._lost = now.generation, 0, started, None
        self.holder = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep, name="replay-lease", daemon=True)
        self._thread.start()
        log.info("Replayer %s holds the store %s (lease generation %d)", self.owner, self.store, now.generation)
        return None

    def _busy(self, state: LeaseState) -> str:
        age = max(0.0, self.wall() - state.renewed_ms / 1000)
        who = state.owner or "several replayers"
        self.holder = f"{who} (lease renewed {age:.0f} s ago by its clock)"
        return self.holder

    # ---- holding -------------------------------------------------------------------------

    def _keep(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self._renew():
                    return
            except Exception as exc:  # the engine failed: the next round tries again
                log.warning("Could not renew the replay lease of %s: %s", self.store, error_summary(exc, 200))

    def _renew(self) -> bool:
        """One renewal; False when the lease turned out lost."""
        with self._cond:
            generation, heartbeat = self._generation, self._heartbeat
        if generation is None:
            return False
        started = self.clock()
        self._update(f"heartbeat = heartbeat + 1, renewed_ms = {int(self.wall() * 1000)}",
                     f"generation = {generation} AND owner = {sql_string(self.owner)}")
        now = self._state()
        with self._cond:
            if now is None or now.generation != generation or now.owner != self.owner:
                self._lose(f"another replayer took the store over ({self._describe(now)})")
                return False
            if now.heartbeat > heartbeat:
                self._heartbeat, self._renewed_at = now.heartbeat, started
                self._cond.notify_all()
            return True

    def _describe(self, state: LeaseState | None) -> str:
        if state is None:
            return "its row is gone"
        return f"generation {state.generation}, owner {state.owner or 'several'}"

    def _lose(self, why: str) -> None:
        """Called with the condition held."""
        if self._lost is None:
            self._lost = why
            log.warning("Replayer %s lost its lease on %s: %s", self.owner, self.store, why)
        self._cond.notify_all()

    def check(self) -> None:
        """Return when requests may be sent now; wait for a renewal when the last one is more
        than half a lease old, up to a whole lease.

        Raises:
            LeaseLost: the lease is not held, was taken over, or could not be renewed.
        """
        with self._cond:
            while True:
                if self._generation is None:
                    raise LeaseLost(f"this replayer does not hold the store {self.store}")
                if self._lost is not None:
                    raise LeaseLost(f"this replayer lost its lease on the store: {self._lost}")
                since = self.clock() - self._renewed_at
                if since < self.lease_seconds / 2:
                    return
                if since >= self.lease_seconds:
                    self._lose(f"no renewal succeeded for {self.lease_seconds:g} s")
                    continue
                self._cond.wait(min(self.interval, self.lease_seconds - since))

    def release(self) -> None:
        """Give the store up (owner ''), so that the next replayer takes it at once."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=60)
        with self._cond:
            generation, lost = self._generation, self._lost
            self._generation = None
        if generation is None or lost is not None:
            return
        self._update(f"owner = '', renewed_ms = {int(self.wall() * 1000)}",
                     f"generation = {generation} AND owner = {sql_string(self.owner)}")
        log.info("Replayer %s released the store %s", self.owner, self.store)

