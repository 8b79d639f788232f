"""The replay job: drain a failed-run store into the tracking server within its rate limits.

One replayer at a time works a store: it holds the store's lease
(:mod:`mlflow_spark_tools.failed_runs.lease`, a Delta table's commits) for as long as it runs,
and sends a request only while the lease is fresh. Within the replayer each payload is in one
worker's hands. Its remaining requests are sent through per-API-class token buckets, with a
checkpoint (a new file) after every request. A crashed replayer's lease runs out; the next one
takes the store over and resumes each payload from its checkpoints:

- a run created before the crash is found by its ``mlflow_spark_tools.payload_id`` tag instead
  of being created twice;
- a ``log_batch`` that may have been applied is checked against the metric history, so no
  metric point is logged twice (params are idempotent: the same value may be logged again).

The store is writable by more users than the replay job's identity, so a payload is untrusted
input until checked (docs/REPLAY.md has the threat model): with a signing key every document
must carry a valid signature, and every checkpoint and done record the replay reads back must
carry its own; a run id is written into only when the document is signed or the run carries
this payload's tag; the artifact URI always comes from the server; every file is read below
the payload's own folder without following links and staged with its digest before the first
request; sizes and counts are bounded (:class:`ReplayLimits`).

A payload that cannot be replayed (corrupt, torn, foreign, newer format, unsigned or tampered,
over the limits, unknown experiment, refused by the server) moves to ``failed`` with a reason
file; the job goes on and its exit code says something failed. A payload that keeps meeting
transient errors stays in ``pending`` for a later pass; one still being written is left alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from mlflow_spark_tools.config import API_CLASSES, RateLimitProfile, ReplayConfig, ReplayLimits
from mlflow_spark_tools.failed_runs.document import PayloadError
from mlflow_spark_tools.failed_runs.lease import DeltaLease
from mlflow_spark_tools.failed_runs.lease_place import LeasePlace
from mlflow_spark_tools.failed_runs.payload_replay import PayloadReplay
from mlflow_spark_tools.failed_runs.replay_outcomes import (
    FAILED,
    INCOMPLETE,
    LOST,
    RELEASED,
    REPLAYED,
    Incomplete,
    Quarantine,
)
from mlflow_spark_tools.failed_runs.replay_summary import PassRecorder, ReplaySummary
from mlflow_spark_tools.failed_runs.signing import SigningKey
from mlflow_spark_tools.failed_runs.store import CLAIMED, FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import DONE_FORMAT, PendingDocument
from mlflow_spark_tools.failed_runs.verification import Verifier
from mlflow_spark_tools.tracking.pacing import RequestCounts, StopSending, paced_process
from mlflow_spark_tools.tracking.rate_limit_errors import (
    PERMANENT,
    classify,
    error_summary,
    exception_chain,
    is_remote_error,
)
from mlflow_spark_tools.tracking.ratelimit import RateLimiter
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests
from mlflow_spark_tools.tracking.retries import RetryPolicy, back_pressure

log = logging.getLogger(__name__)

FOREIGN_PER_PASS = 100
LOCAL_FAILURES_TO_QUARANTINE = 3


class Replayer:
    """Replays the payloads of one store: the passes over it, each document handed to the
    replayer's :class:`PayloadReplay`.

    Args:
        store_path: the failed-run store.
        tracking_uri: the tracking server.
        profile: rate limits per API class (with the profile's safety factor).
        lease: the store's lease for this replayer (a :class:`DeltaLease`); held from the first
            pass until :meth:`close`, or for one :meth:`run` when that pass took it.
        max_workers: payloads replayed at once.
        signing_key: verifies documents and model blobs, and signs the replay's own
            checkpoints and done records; with a key, every document must be signed with it.
        trust_unsigned: accept documents and model blobs without a signature (unsafe on
            shared storage: a pickle runs code as this job, and a document names the
            experiment its run goes to).
        limits: sizes and counts a payload may have.
        torn_grace_seconds: how long after the time in its name a document whose bytes do not
            hash to its name is left alone (being written) before it is quarantined as torn.
        retry: the policy for one request (429s honour ``Retry-After``).
        sleep: waiting function (injectable for tests).
        marker_settle_seconds: the first replay of a store writes where its lease lives
            (``lease.json``) and reads it back after taking the lease, at least this much later
            (taking a lease takes longer: several queries), so that of two first replays at once
            with different databases, one refuses.
        artifact_hosts: hosts besides the tracking server's that runs' artifacts may be
            uploaded to over http(s) or ``mlflow-artifacts://<host>`` (with the tracking
            credentials); a payload whose artifacts would go elsewhere is quarantined.
    """

    def __init__(self, store_path: str, tracking_uri: str, profile: RateLimitProfile, *, lease: DeltaLease,
                 max_workers: int = 16, signing_key: SigningKey | None = None, trust_unsigned: bool = False,
                 limits: ReplayLimits | None = None, torn_grace_seconds: float = ReplayConfig.torn_grace_seconds,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep,
                 marker_settle_seconds: float = 0.25, artifact_hosts: tuple[str, ...] = ()) -> None:
        self.store = FailedRunStore(store_path).ensure()
        self.tracking_uri = tracking_uri
        self.lease = lease
        self.limiter = RateLimiter(profile, sleep=sleep)
        self.max_workers = max_workers
        self.limits = limits or ReplayLimits()
        self.owner = lease.owner
        self.on_payload: Callable[[str], None] | None = None  # told each payload's outcome
        self.recorder = PassRecorder()
        self.verifier = Verifier(signing_key, trust_unsigned, self.limits)
        self._lock = threading.Lock()
        self._seen: set[str] = set()  # payloads handled in this pass
        self._held: set[str] = set()
        self._local_failures: dict[str, int] = {}
        self.requests = TrackingRequests(
            tracking_uri,
            # A 429 is back-pressure: wait (Retry-After, a lower rate) and go on with the same
            # request for up to half an hour; other errors get 8 tries in 2 minutes.
            retry or back_pressure(),
            limiter=self.limiter, on_attempt=self.recorder.count_request, sleep=sleep,
        )
        # no request leaves this process for the store's work without a fresh lease
        self.requests.scope.fence = lease.check
        self.lease_place = LeasePlace(self.store, lease, self.verifier, self.requests.sleep, marker_settle_seconds)
        self.payloads = PayloadReplay(self.store, self.requests, lease, self.verifier, self.recorder,
                                      owner=self.owner, tracking_uri=tracking_uri,
                                      artifact_hosts=tuple(artifact_hosts), torn_grace_seconds=torn_grace_seconds)

    def close(self) -> None:
        """Give the store's lease up and release the store's folder handles."""
        try:
            self.lease.release()
        finally:
            self.store.close()

    def waiting(self) -> int:
        """Documents waiting for replay (pending, and claims of an earlier release's replayers)."""
        return len({d.payload_id for d in self.store.documents()})

    def ledger_row_of_record(self, payload_id: str) -> dict[str, Any] | None:
        """The ledger row that the record of a replayed payload in ``done/`` gives (for a
        payload whose replay ended before it wrote its rows: killed, or the ledger failed), or
        None when there is no valid record of this replay's (checked as a replay checks it)."""
        try:
            record = self.store.read_done(payload_id)
        except PayloadError:
            return None
        if record is None or record.get("format") != DONE_FORMAT or self.payloads.records.problem(payload_id, record):
            return None
        return {"payload_id": payload_id, "run_id": record.get("run_id"), "experiment_id": record.get("experiment_id"),
                "status": REPLAYED, "attempts": record.get("attempts"), "error": None,
                "replayed_at": record.get("replayed_at")}

    # ---- the pass --------------------------------------------------------------------

    def run_until_empty(self, pause: float = 5.0, max_idle_passes: int = 3) -> ReplaySummary:
        """Pass after pass until nothing waits or passes stop making progress; the lease is
        held throughout and given up at the end."""
        total = ReplaySummary()
        idle = 0
        took = not self.lease.held
        try:
            while True:
                one = self.run(release=False)
                if one.held_by is not None:
                    total.held_by, total.pending = one.held_by, one.pending
                    return total
                for name in ("replayed", "resumed", "failed", "released", "lost", "seconds"):
                    setattr(total, name, getattr(total, name) + getattr(one, name))
                for api_class in API_CLASSES:
                    total.requests[api_class] += one.requests[api_class]
                    total.throttled[api_class] += one.throttled[api_class]
                for endpoint, counts in one.endpoints.items():
                    entry = total.endpoints.setdefault(endpoint, {"requests": 0, "429s": 0})
                    entry["requests"] += counts["requests"]
                    entry["429s"] += counts["429s"]
                total.rates = one.rates
                total.ledger.extend(one.ledger)
                total.pending, total.incomplete = one.pending, one.incomplete
                idle = idle + 1 if one.replayed + one.failed == 0 else 0
                if one.pending == 0 or idle >= max_idle_passes or not self.lease.held:
                    return total
                self.requests.sleep(pause)
        finally:
            if took:
                self.lease.release()

    def run(self, *, release: bool = True) -> ReplaySummary:
        """One pass: replay what waits now; returns the summary.

        Takes the store's lease first when this replayer does not hold it (the summary's
        ``held_by`` names the replayer that does, and nothing is done); with ``release``, a
        lease taken here is given up at the end of the pass.
        """
        started = time.perf_counter()
        summary = self.recorder.new_pass()
        took = not self.lease.held
        if took and not self.store.documents() and not self.store.foreign_files():
            summary.seconds = time.perf_counter() - started
            return summary  # nothing to do: no lease taken (no engine started)
        self.lease_place.check()
        holder = self.lease.acquire()
        if holder is not None:
            log.warning("Another replayer holds the store %s: %s; nothing replayed", self.store.root, holder)
            summary.held_by, summary.pending = holder, self.waiting()
            summary.seconds = time.perf_counter() - started
            return summary
        try:
            self.lease_place.check(confirm=True)
            self._pass(summary)
        finally:
            if release and took:
                self.lease.release()
        summary.seconds = time.perf_counter() - started
        return summary

    def _pass(self, summary: ReplaySummary) -> None:
        self._quarantine_foreign(summary)
        self._seen = set()
        in_flight: set[Future[tuple[str, str]]] = set()
        counts = self.requests.scope.counts = RequestCounts()
        # every tracking request of this process in the pass, MLflow's own worker threads
        # included, is paced, counted and fenced by the lease
        with paced_process(self.requests.scope), ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            while True:
                # Keep every worker busy, never far ahead: top up to two rounds of work
                # whenever at most one round is left, so the folders are listed once per round.
                batch: list[PendingDocument] = []
                if len(in_flight) <= self.max_workers and self.lease.held:
                    batch = self._next_batch(self.max_workers * 2 - len(in_flight))
                in_flight.update(pool.submit(self._replay_document, document) for document in batch)
                if not in_flight:
                    break
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    self._tally(*future.result())
        summary.pending = self.waiting()
        summary.endpoints = counts.as_dict()["endpoints"]
        summary.rates = self.limiter.rates()

    def _quarantine_foreign(self, summary: ReplaySummary) -> None:
        """Move files that are not documents of this package out of the way, a bounded number
        per pass, so that a flood of them cannot hold up real payloads."""
        budget = FOREIGN_PER_PASS
        for state in ("pending", CLAIMED):
            for path in self.store.foreign_files(state)[:budget]:
                try:
                    if self.store.quarantine(path, path.name, "foreign file: not a run document of this package"):
                        summary.failed += 1
                except OSError as exc:
                    log.warning("Could not quarantine %s: %s", path.name[:120], error_summary(exc, 200))
                budget -= 1
            if budget <= 0:
                log.warning("More than %d foreign files: the rest waits for the next pass", FOREIGN_PER_PASS)
                return

    def _tally(self, payload_id: str, outcome: str) -> None:
        if self.on_payload is not None:
            self.on_payload(outcome)
        self.recorder.outcome(outcome)

    def _next_batch(self, n: int) -> list[PendingDocument]:
        """Up to ``n`` documents not yet handled in this pass, oldest payload first, one per
        payload: a payload with several documents (a claim of an earlier release beside its
        document, a copy put back) has them replayed or quarantined one pass at a time."""
        batch: list[PendingDocument] = []
        with self._lock:
            taken = self._seen | self._held
            for document in self.store.documents():
                if len(batch) >= n:
                    break
                if document.payload_id in taken:
                    continue
                batch.append(document)
                taken.add(document.payload_id)
                self._seen.add(document.payload_id)
                self._held.add(document.payload_id)
        return batch

    def _replay_document(self, document: PendingDocument) -> tuple[str, str]:
        """One document's outcome; never raises, so one payload cannot end the pass."""
        try:
            return document.payload_id, self._outcome(document)
        except Exception as exc:
            log.error("Payload %s: %s: %s; it stays pending", document.payload_id, type(exc).__name__,
                      error_summary(exc, 300))
            return document.payload_id, RELEASED
        finally:
            with self._lock:
                self._held.discard(document.payload_id)

    def _outcome(self, document: PendingDocument) -> str:
        try:
            return self.payloads.replay(document)
        except Incomplete:
            log.info("Payload %s is still being written; left for a later pass", document.payload_id)
            return INCOMPLETE
        except (Quarantine, PayloadError) as exc:
            return self._quarantine(document, str(exc))
        except Exception as exc:
            if any(isinstance(e, StopSending) for e in exception_chain(exc)) or not self.lease.held:
                log.info("Payload %s stopped: this replayer no longer holds the store", document.payload_id)
                return LOST
            if is_remote_error(exc):
                if classify(exc) == PERMANENT:
                    return self._quarantine(document, f"the tracking server refused it: {error_summary(exc, 500)}")
                log.warning("Payload %s stays pending: %s", document.payload_id, error_summary(exc, 200))
            elif isinstance(exc, OSError):
                # a local disk or mount that failed (full, unreachable): not the payload's fault,
                # unless it happens every time
                with self._lock:
                    failures = self._local_failures[document.payload_id] = \
                        self._local_failures.get(document.payload_id, 0) + 1
                summary = f"{type(exc).__name__}: {error_summary(exc, 300)}"
                if failures >= LOCAL_FAILURES_TO_QUARANTINE:
                    return self._quarantine(document, f"local I/O error, {failures} times (not a refusal of the "
                                                      f"tracking server): {summary}")
                log.warning("Payload %s stays pending after a local I/O error: %s", document.payload_id, summary)
            else:
                log.warning("Payload %s failed locally", document.payload_id, exc_info=log.isEnabledFor(logging.DEBUG))
                return self._quarantine(document, f"local error while replaying (not a refusal of the tracking "
                                                  f"server): {type(exc).__name__}: {error_summary(exc, 400)}")
            return RELEASED

    def _quarantine(self, document: PendingDocument, reason: str) -> str:
        if not self.store.quarantine(self.store.path_of(document), document.payload_id, reason):
            log.info("Payload %s was removed before it was quarantined", document.payload_id)
            return LOST
        log.warning("Payload %s quarantined: %s", document.payload_id, reason)
        self.recorder.ledger(document.payload_id, None, None, FAILED, reason)
        return FAILED
