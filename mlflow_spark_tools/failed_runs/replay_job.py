"""The replay job as the command line, ``jobs/replay_failed_runs.py`` and notebooks run it.

The store is tried first (every file operation it needs), then its lease is taken on the job's
engine (``<database>.replay_lease``): one pass, passes until the store is empty, or passes every
few seconds until stopped; after each pass the rows of the ledger go to
``<database>.replay_log``, the store's state to ``<database>.replay_store_log``, and a JSON
summary is printed. Exit code 0 when everything was replayed (or another replay job holds the
store: ``held_by`` in the summary), 3 when payloads failed (quarantined), are still pending or
the ledger could not be written, 2 for usage errors (a store that cannot be used among them).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mlflow_spark_tools.config import Settings
from mlflow_spark_tools.core.progress import Progress
from mlflow_spark_tools.databricks.secrets import read_secret
from mlflow_spark_tools.errors import EXIT_OK, EXIT_PARTIAL, InvalidConfigError, InvalidStoreError, UsageError
from mlflow_spark_tools.failed_runs.lease import DeltaLease
from mlflow_spark_tools.failed_runs.replay_outcomes import LEFT_THE_STORE
from mlflow_spark_tools.failed_runs.replayer import Replayer, ReplaySummary
from mlflow_spark_tools.failed_runs.signing import SigningKey, load_signing_key
from mlflow_spark_tools.failed_runs.store import CLAIMED, FailedRunStore
from mlflow_spark_tools.spark.engine import Engine, EngineHandle
from mlflow_spark_tools.tracking.rate_limit_errors import error_summary

log = logging.getLogger(__name__)

ONCE, UNTIL_EMPTY, LOOP = "once", "until-empty", "loop"


@dataclass
class ReplayOptions:
    """What the replay job was asked to do."""

    replay_dir: str
    mode: str = ONCE
    interval: float = 60.0
    max_workers: int = 16
    lease_seconds: float = 300.0
    trust_unsigned: bool = False
    ledger: bool = True
    signing_secret_scope: str | None = None
    signing_secret_key: str | None = None
    retention_days: float | None = None  # None: the configured replay.retention_days


def replay_signing_key(secret_scope: str | None = None, secret_key: str | None = None) -> SigningKey | None:
    """The replay's signing key: from the Databricks secret scope and key when both are given
    (what a caller names explicitly wins over the environment), else from the environment."""
    if bool(secret_scope) != bool(secret_key):
        raise InvalidConfigError("Give both the secret scope and the secret key of the signing key.")
    if secret_scope and secret_key:
        return SigningKey(read_secret(secret_scope, secret_key, "the signing key"))
    return load_signing_key()


def run_replay_job(settings: Settings, options: ReplayOptions, engine: Engine | None = None,
                   echo: Callable[[str], None] = print, passes: int | None = None) -> int:
    """Run the job; returns its exit code.

    Args:
        engine: for the store's lease and the ledger; default: the configured engine.
        passes: with ``mode=loop``, stop after this many passes (default: run until stopped).
    """
    # A Databricks job or notebook logs to its own workspace without MLFLOW_TRACKING_URI set.
    tracking_uri = settings.tracking_uri or ("databricks" if os.environ.get("DATABRICKS_RUNTIME_VERSION") else None)
    if not tracking_uri:
        raise UsageError("No tracking server: set MLFLOW_TRACKING_URI or pass --tracking-uri.")
    if options.mode not in (ONCE, UNTIL_EMPTY, LOOP):
        raise UsageError(f"Unknown replay mode {options.mode!r}.")
    if options.max_workers < 1:
        raise UsageError("--max-workers must be at least 1.")
    root = FailedRunStore(options.replay_dir, create=False).root
    if root.exists() and not root.is_dir():
        raise InvalidStoreError(f"--replay-dir {root} is a file, not a failed-run store (a folder).")
    if not root.is_dir():
        # never made here: a typo in --replay-dir must not become an empty store that looks replayed
        what = "does not exist"
        log.warning("The failed-run store %s %s: nothing to replay (a FailedRunCollector makes it; check "
                    "--replay-dir if the collectors write elsewhere)", root, what)
        echo(json.dumps({"replayed": 0, "still_pending": 0, "store": f"{what}: {root}"}, indent=2))
        return EXIT_OK
    # every operation the store needs, tried once before anything else (a read-only mount,
    # a file system that lacks one: one line naming the path and the operation, exit 2)
    with FailedRunStore(root) as store:
        store.check_usable()
    key = replay_signing_key(options.signing_secret_scope, options.signing_secret_key)
    if key is None and not options.trust_unsigned:
        log.warning("No signing key (MLFLOW_SPARK_TOOLS_SIGNING_KEY): payloads with models will be "
                    "quarantined as unsigned unless --trust-unsigned is given")
    engines = EngineHandle(engine)
    replayer: Replayer | None = None
    try:
        e = settings.engine
        # the engine starts when the lease is first needed: an empty store needs none
        lease = DeltaLease(lambda: engines.get(e.remote, e.warehouse), settings.tables.database, root,
                           lease_seconds=options.lease_seconds)
        replayer = Replayer(str(root), tracking_uri, settings.profile(), lease=lease,
                            max_workers=options.max_workers, signing_key=key, trust_unsigned=options.trust_unsigned,
                            limits=settings.replay.limits, torn_grace_seconds=settings.replay.torn_grace_seconds,
                            artifact_hosts=settings.replay.artifact_hosts)
        ledger = _Ledger(settings, engines) if options.ledger else None
        retention = options.retention_days if options.retention_days is not None else settings.replay.retention_days
        if options.mode == LOOP:
            return _loop(replayer, options, ledger, echo, passes, retention)
        with Progress("Replay: payloads handled", "payloads", total=replayer.waiting()) as progress:
            # a payload counts once, when it leaves the store (given back, it comes again)
            replayer.on_payload = lambda outcome: progress.update() if outcome in LEFT_THE_STORE else None
            summary = replayer.run(release=False) if options.mode == ONCE else replayer.run_until_empty()
        if summary.held_by is not None:
            # another replay job works this store (a second schedule, a manual run): not a failure
            echo(json.dumps(summary.as_dict(), indent=2))
            return EXIT_OK
        ledger_report = _write_ledger(ledger, summary, replayer)
        ledger_report |= _prune(replayer, retention)
        echo(json.dumps(summary.as_dict() | ledger_report, indent=2))
        partial = (summary.failed or summary.pending or "ledger_error" in ledger_report
                   or "prune_error" in ledger_report)
        return EXIT_PARTIAL if partial else EXIT_OK
    finally:
        if replayer is not None:
            replayer.close()
        engines.close()


def _loop(replayer: Replayer, options: ReplayOptions, ledger: _Ledger | None,
          echo: Callable[[str], None], passes: int | None, retention: float | None) -> int:
    failed = 0
    done = 0
    while passes is None or done < passes:
        started = time.monotonic()
        summary = replayer.run(release=False)  # held from pass to pass, given up at the end
        done += 1
        ledger_report = {} if summary.held_by is not None else \
            _write_ledger(ledger, summary, replayer) | _prune(replayer, retention)
        failed += summary.failed + ("ledger_error" in ledger_report) + ("prune_error" in ledger_report)
        echo(json.dumps(summary.as_dict() | ledger_report | {"pass": done}))
        if passes is not None and done >= passes:
            break
        time.sleep(max(0.0, options.interval - (time.monotonic() - started)))
    return EXIT_PARTIAL if failed else EXIT_OK


def _prune(replayer: Replayer, retention_days: float | None) -> dict[str, object]:
    """Remove replayed payloads older than the retention period; a failure is reported, not
    raised (the runs are replayed; the next run prunes again)."""
    if retention_days is None:
        return {}
    try:
        pruned = replayer.store.prune_replayed(retention_days * 86400.0)
    except OSError as exc:
        first = error_summary(exc, 500)
        log.error("Could not prune replayed payloads: %s", first)
        return {"prune_error": first}
    report: dict[str, object] = {"pruned": pruned.payloads, "pruned_bytes": pruned.bytes}
    if pruned.errors:
        log.error("Could not prune %d replayed payloads, first: %s", len(pruned.errors), pruned.errors[0])
        report["prune_error"] = f"{len(pruned.errors)} payloads not removed, first: {pruned.errors[0]}"[:500]
    return report


def _write_ledger(ledger: _Ledger | None, summary: ReplaySummary, replayer: Replayer) -> dict[str, object]:
    """Write the pass's ledger rows and the store's state; a failure is reported, not raised:
    the runs are replayed, and the records in ``done/`` still map payloads to runs."""
    if ledger is None:
        return {"ledger_rows": 0}
    try:
        return {"ledger_rows": ledger.write(summary, replayer)}
    except Exception as exc:
        first = error_summary(exc, 500)
        log.error("Could not write the replay ledger: %s", first)
        return {"ledger_rows": 0, "ledger_error": first[:500]}


class _Ledger:
    """Writes ledger rows and the store's state on the job's engine."""

    def __init__(self, settings: Settings, engine: EngineHandle) -> None:
        self.settings = settings
        self.engine = engine
        self._caught_up = False  # every record in done/ has its row (checked once per process)

    def write(self, summary: ReplaySummary, replayer: Replayer) -> int:
        """The pass's ledger rows, then a row of the store's state when the pass handled
        payloads or the store holds pending or quarantined ones; returns the ledger rows.

        The first write of a process also writes the rows a replay before it never wrote
        (killed after payloads were replayed, before their rows): every payload in ``done/``
        gets its row, once."""
        from mlflow_spark_tools.failed_runs.ledger import write_ledger, write_store_state

        store = replayer.store
        counts = {state: len(store.ids(state)) for state in ("pending", CLAIMED, "failed")}
        done = [] if self._caught_up else store.ids("done")
        active = bool(summary.ledger or counts["pending"] or counts["failed"])
        if not active and not done:
            self._caught_up = True
            return 0
        e = self.settings.engine
        engine = self.engine.get(e.remote, e.warehouse)
        rows = list(summary.ledger)
        if done:
            rows += self._unwritten(engine, replayer, done, {r["payload_id"] for r in rows})
        written = write_ledger(engine, self.settings.tables.database, rows)
        self._caught_up = True
        if not active and not written:
            return 0  # nothing happened and nothing was missing: no row of the store's state
        write_store_state(engine, self.settings.tables.database, {
            "recorded_at": datetime.now(timezone.utc), "replay_dir": str(store.root),
            "pending": counts["pending"], "claimed": counts["claimed"], "quarantined": counts["failed"],
            "replayed": summary.replayed + summary.resumed, "failed": summary.failed,
            "throttled": sum(summary.throttled.values()), "seconds": round(summary.seconds, 3)})
        return written

    def _unwritten(self, engine: Any, replayer: Replayer, done: list[str],
                   written: set[str]) -> list[dict[str, Any]]:
        """Rows for the replayed payloads of ``done`` that have none in the ledger."""
        from mlflow_spark_tools.failed_runs.ledger import logged_payloads

        candidates = [p for p in done if p not in written]
        missing = set(candidates) - logged_payloads(engine, self.settings.tables.database, candidates)
        rows = [row for p in sorted(missing) if (row := replayer.ledger_row_of_record(p)) is not None]
        if rows:
            log.info("%d replayed payloads had no ledger row (a replay ended before it wrote them): written now",
                     len(rows))
        return rows
