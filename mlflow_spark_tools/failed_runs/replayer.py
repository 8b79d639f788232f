"""The replay job: drain a failed-run store into the tracking server within its rate limits.

Every payload is claimed with a lease (a rename; see :mod:`mlflow_spark_tools.failed_runs.store`), checked, and its
remaining requests are sent through per-API-class token buckets, checkpointing after every
request that changed the run. A crashed replayer's lease expires and another takes the payload
over and resumes from the checkpoint:

- if the run was created but the checkpoint was not written, the run is found by its
  ``mlflow_spark_tools.payload_id`` tag instead of being created twice;
- a ``log_batch`` that may have been applied is checked against the metric history, so no
  metric point is logged twice (params are idempotent: the same value may be logged again).

The store is writable by more users than the replay job's identity, so a payload is untrusted
input until checked (docs/REPLAY.md has the threat model): with a signing key every document
must carry a valid signature; a run id is written into only when the document is signed or
the run carries this payload's tag; the artifact URI always comes from the server; every file
is read below the payload's own folder without following links and staged with its digest
before the first request; sizes and counts are bounded (:class:`ReplayLimits`).

A payload that cannot be replayed (corrupt, truncated, foreign, newer format, unsigned or
tampered, over the limits, unknown experiment, refused by the server) moves to ``failed`` with
a reason file; the job goes on and its exit code says something failed. A payload that keeps
meeting 429s or transient errors goes back to ``pending``; one whose claim another replayer
took over is left to it (``lost``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from mlflow_spark_tools.config import API_CLASSES, RateLimitProfile, ReplayLimits
from mlflow_spark_tools.failed_runs.document import (
    PayloadError,
)
from mlflow_spark_tools.failed_runs.payload_replay import (
    FAILED,
    LOST,
    RELEASED,
    REPLAYED,
    RESUMED,
    InFlightBytes,
    PayloadSteps,
    Quarantine,
)
from mlflow_spark_tools.failed_runs.signing import SigningKey
from mlflow_spark_tools.failed_runs.store import Claim, FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import new_owner
from mlflow_spark_tools.tracking.pacing import RequestCounts, paced_process
from mlflow_spark_tools.tracking.rate_limit_errors import (
    PERMANENT,
    classify,
    error_summary,
    is_remote_error,
)
from mlflow_spark_tools.tracking.ratelimit import RateLimiter
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests
from mlflow_spark_tools.tracking.retries import RetryPolicy, back_pressure

log = logging.getLogger(__name__)

FOREIGN_PER_PASS = 100
LOCAL_FAILURES_TO_QUARANTINE = 3


@dataclass
class ReplaySummary:
    """What one replay pass did."""

    replayed: int = 0
    resumed: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0
    pending: int = 0
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(API_CLASSES, 0))
    throttled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(API_CLASSES, 0))
    endpoints: dict[str, dict[str, int]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    ledger: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed, "resumed": self.resumed, "failed": self.failed,
            "released_to_pending": self.released, "lost_to_another_replayer": self.lost,
            "still_pending": self.pending, "requests": self.requests, "429s": self.throttled,
            "endpoints": self.endpoints, "rates_now": self.rates, "seconds": round(self.seconds, 3),
        }


class Replayer(PayloadSteps):
    """Replays the payloads of one store.

    Args:
        store_path: the failed-run store.
        tracking_uri: the tracking server.
        profile: rate limits per API class (with the profile's safety factor).
        max_workers: payloads replayed at once.
        lease_seconds: a claim not renewed for this long may be taken over.
        signing_key: verifies documents and model blobs; with a key, every document must be
            signed with it.
        trust_unsigned: accept documents and model blobs without a signature (unsafe on
            shared storage: a pickle runs code as this job, and a document names the
            experiment its run goes to).
        limits: sizes and counts a payload may have.
        retry: the policy for one request (429s honour ``Retry-After``).
        sleep: waiting function (injectable for tests).
    """

    def __init__(self, store_path: str, tracking_uri: str, profile: RateLimitProfile,
                 max_workers: int = 16, lease_seconds: float = 300.0,
                 signing_key: SigningKey | None = None, *, trust_unsigned: bool = False,
                 limits: ReplayLimits | None = None,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = FailedRunStore(store_path).ensure()
        self.tracking_uri = tracking_uri
        self.limiter = RateLimiter(profile, sleep=sleep)
        self.max_workers = max_workers
        self.lease_seconds = lease_seconds
        self.key = signing_key
        self.trust_unsigned = trust_unsigned
        self.limits = limits or ReplayLimits()
        self.owner = new_owner()
        self.on_payload: Callable[[str], None] | None = None  # told each payload's outcome
        self._lock = threading.Lock()
        self._summary = ReplaySummary()
        self._released: set[str] = set()
        self._held: set[Claim] = set()
        self._local_failures: dict[str, int] = {}
        self._finished: set[str] = set()
        self._in_flight = InFlightBytes(self.limits.max_inflight_document_bytes)
        self.requests = TrackingRequests(
            tracking_uri,
            # A 429 is back-pressure: wait (Retry-After, a lower rate) and go on with the same
            # request for up to half an hour; other errors get 8 tries in 2 minutes.
            retry or back_pressure(),
            limiter=self.limiter, on_attempt=self._count, sleep=sleep,
        )

    def _count(self, api_class: str, status: int | None) -> None:
        with self._lock:
            self._summary.requests[api_class] += 1
            if status == 429:
                self._summary.throttled[api_class] += 1

    def close(self) -> None:
        """Release the store's folder handles."""
        self.store.close()

    # ---- the pass --------------------------------------------------------------------

    def run_until_empty(self, pause: float = 5.0, max_idle_passes: int = 3) -> ReplaySummary:
        """Pass after pass until ``pending`` is empty or passes stop making progress."""
        total = ReplaySummary()
        idle = 0
        while True:
            one = self.run()
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
            total.pending = one.pending
            idle = idle + 1 if one.replayed + one.failed == 0 else 0
            if one.pending == 0 and not self.store.claims() or idle >= max_idle_passes:
                return total
            self.requests.sleep(pause)

    def run(self) -> ReplaySummary:
        """One pass: replay what this replayer can take now; returns the summary."""
        started = time.perf_counter()
        self._summary = summary = ReplaySummary()
        self._quarantine_foreign(summary)
        self._released = set()
        in_flight: set[Future[tuple[str, str]]] = set()
        stop = threading.Event()
        keeper = threading.Thread(target=self._keep_claims, args=(stop,), name="replay-heartbeat", daemon=True)
        keeper.start()
        counts = self.requests.scope.counts = RequestCounts()
        try:
            # every tracking request of this process in the pass, MLflow's own worker threads
            # included, is paced and counted
            with paced_process(self.requests.scope), ThreadPoolExecutor(max_workers=self.max_workers) as pool:
                while True:
                    # Keep every worker busy, never far ahead: top up to two rounds of work
                    # whenever at most one round is left, so the folders are listed once per
                    # round. Claims waiting for a worker are heartbeated like running ones.
                    claims = []
                    if len(in_flight) <= self.max_workers:
                        claims = self._claim_batch(self.max_workers * 2 - len(in_flight))
                    in_flight.update(pool.submit(self._replay_claim, claim) for claim in claims)
                    if not in_flight:
                        break
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        self._tally(summary, *future.result())
        finally:
            stop.set()
            keeper.join(timeout=10)
        summary.pending = len(self.store.ids("pending"))
        summary.endpoints = counts.as_dict()["endpoints"]
        summary.rates = self.limiter.rates()
        summary.seconds = time.perf_counter() - started
        return summary

    def _quarantine_foreign(self, summary: ReplaySummary) -> None:
        """Move files that are not documents or claims of this package out of the way, a
        bounded number per pass, so that a flood of them cannot hold up real payloads."""
        budget = FOREIGN_PER_PASS
        for state in ("pending", "claimed"):
            for path in self.store.foreign_files(state)[:budget]:
                reason = ("foreign file: not a run document of this package" if state == "pending"
                          else "foreign file: not a claim of this package")
                try:
                    if self.store.quarantine(path, path.name, reason):
                        summary.failed += 1
                except OSError as exc:
                    log.warning("Could not quarantine %s: %s", path.name[:120], error_summary(exc, 200))
                budget -= 1
            if budget <= 0:
                log.warning("More than %d foreign files: the rest waits for the next pass", FOREIGN_PER_PASS)
                return

    def _tally(self, summary: ReplaySummary, payload_id: str, outcome: str) -> None:
        if self.on_payload is not None:
            self.on_payload(outcome)
        with self._lock:
            if outcome in (REPLAYED, RESUMED):
                summary.replayed += 1
                summary.resumed += outcome == RESUMED
            elif outcome == FAILED:
                summary.failed += 1
            elif outcome == RELEASED:
                summary.released += 1
                self._released.add(payload_id)
            elif outcome == LOST:
                summary.lost += 1

    def _keep_claims(self, stop: threading.Event) -> None:
        """Renew the lease of every claim this replayer holds, queued or running."""
        interval = max(0.05, min(self.lease_seconds / 4, 30.0))
        while not stop.wait(interval):
            with self._lock:
                held = list(self._held)
            for claim in held:
                self.store.heartbeat(claim)

    def _claim_batch(self, n: int) -> list[Claim]:
        """Up to ``n`` claims: expired leases first, then pending payloads, oldest first.

        A payload is never held twice: an id this replayer holds, or one with a claim in
        ``claimed/`` (a document in ``pending`` beside a claim of the same id, or two claims of
        one id, can only be planted), is not claimed again; of several expired claims of one
        id, one is taken over and the others are quarantined as duplicates.
        """
        claims: list[Claim] = []
        now = time.time()
        with self._lock:
            held = {c.payload_id for c in self._held}
        by_id: dict[str, list[tuple[Claim, float]]] = {}
        for stale, heartbeat in self.store.claims():
            by_id.setdefault(stale.payload_id, []).append((stale, heartbeat))
        for payload_id, entries in sorted(by_id.items()):
            if len(claims) >= n or payload_id in held:
                continue
            expired = [c for c, beat in entries if c.owner != self.owner and now - beat > self.lease_seconds]
            if len(expired) < len(entries):
                continue  # someone holds it
            expired.sort(key=lambda c: c.path.name)
            for duplicate in expired[1:]:
                self.store.quarantine(duplicate.path, payload_id, "duplicate claim: another claim of this "
                                      "payload exists (not written by a replayer)")
            taken = self.store.take_over(expired[0], self.owner)
            if taken is not None:
                log.info("Took over %s from %s (lease expired)", payload_id, expired[0].owner)
                claims.append(taken)
                held.add(payload_id)
        for payload_id in self.store.ids("pending"):
            if len(claims) >= n:
                break
            if payload_id in self._released or payload_id in held or payload_id in by_id:
                continue  # given back in this pass, held, or claimed already
            claim = self.store.claim(payload_id, self.owner)
            if claim is not None:
                claims.append(claim)
                held.add(payload_id)
        with self._lock:
            self._held.update(claims)
        return claims

    def _replay_claim(self, claim: Claim) -> tuple[str, str]:
        """One payload's outcome; never raises, so one payload cannot end the pass."""
        try:
            return claim.payload_id, self._replay_claim_outcome(claim)
        except Exception as exc:
            log.error("Payload %s: %s: %s; it goes back to pending", claim.payload_id, type(exc).__name__,
                      error_summary(exc, 300))
            try:
                self.store.release(claim)
            except OSError:
                pass
            return claim.payload_id, RELEASED
        finally:
            with self._lock:
                self._held.discard(claim)

    def _replay_claim_outcome(self, claim: Claim) -> str:
        try:
            return self._replay(claim)
        except (Quarantine, PayloadError) as exc:
            return self._quarantine(claim, str(exc))
        except Exception as exc:
            if not self.store.holds(claim):
                log.info("Payload %s was taken over by another replayer: %s", claim.payload_id, error_summary(exc, 200))
                return LOST
            if is_remote_error(exc):
                if classify(exc) == PERMANENT:
                    return self._quarantine(claim, f"the tracking server refused it: {error_summary(exc, 500)}")
                log.warning("Payload %s goes back to pending: %s", claim.payload_id, error_summary(exc, 200))
            elif isinstance(exc, OSError):
                # a local disk or mount that failed (full, unreachable): not the payload's fault,
                # unless it happens every time
                with self._lock:
                    failures = self._local_failures[claim.payload_id] = self._local_failures.get(claim.payload_id, 0) + 1
                summary = f"{type(exc).__name__}: {error_summary(exc, 300)}"
                if failures >= LOCAL_FAILURES_TO_QUARANTINE:
                    return self._quarantine(claim, f"local I/O error, {failures} times (not a refusal of the "
                                                   f"tracking server): {summary}")
                log.warning("Payload %s goes back to pending after a local I/O error: %s", claim.payload_id, summary)
            else:
                log.warning("Payload %s failed locally", claim.payload_id, exc_info=log.isEnabledFor(logging.DEBUG))
                return self._quarantine(claim, f"local error while replaying (not a refusal of the tracking "
                                               f"server): {type(exc).__name__}: {error_summary(exc, 400)}")
            self.store.release(claim)
            return RELEASED

    def _quarantine(self, claim: Claim, reason: str) -> str:
        if not self.store.quarantine(claim.path, claim.payload_id, reason):
            log.info("Payload %s was taken over by another replayer before it was quarantined", claim.payload_id)
            return LOST
        log.warning("Payload %s quarantined: %s", claim.payload_id, reason)
        self._ledger(claim.payload_id, None, None, FAILED, reason)
        return FAILED
    def _ledger(self, payload_id: str, run_id: str | None, experiment_id: str | None, status: str,
                error: str | None, attempts: int = 1) -> None:
        with self._lock:
            self._summary.ledger.append({
                "payload_id": payload_id, "run_id": run_id, "experiment_id": experiment_id,
                "status": status, "attempts": attempts, "error": error,
                "replayed_at": int(time.time() * 1000),
            })

