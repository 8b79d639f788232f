"""The replay job: drain a failed-run store into the tracking server within its rate limits.

Every payload is claimed with a lease (a rename; see :mod:`failed_run_store`), checked, and its
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

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_spark_tools.artifact_upload import upload_artifact
from mlflow_spark_tools.collector import canonical_json, save_model_dir
from mlflow_spark_tools.config import API_CLASSES, RateLimitProfile
from mlflow_spark_tools.failed_run_store import Claim, DocumentFile, FailedRunStore, new_owner
from mlflow_spark_tools.payload_document import (
    PAYLOAD_TAG,
    ModelEntry,
    Payload,
    PayloadError,
    ReplayLimits,
    check_document,
    check_progress,
    is_local_artifact_uri,
)
from mlflow_spark_tools.payload_files import Budget, PayloadFolder, manifest_difference
from mlflow_spark_tools.rate_limit_errors import (
    PERMANENT,
    RATE_LIMITED,
    classify,
    error_summary,
    is_not_found,
    is_remote_error,
)
from mlflow_spark_tools.ratelimit import RateLimiter
from mlflow_spark_tools.request_pacing import RequestCounts, paced_process
from mlflow_spark_tools.run_data import ARTIFACT, BATCH, CREATE, MODEL, TERMINATE, batches, tags_at_create
from mlflow_spark_tools.signing import SigningKey
from mlflow_spark_tools.tracking_requests import RetryPolicy, TrackingRequests

log = logging.getLogger(__name__)

REPLAYED, RESUMED, FAILED, RELEASED, LOST = "replayed", "resumed", "failed", "released", "lost"
FOREIGN_PER_PASS = 100
LOCAL_FAILURES_TO_QUARANTINE = 3
RUNNING = "RUNNING"


class Quarantine(Exception):
    """This payload cannot be replayed; the message is the reason."""


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


class _InFlightBytes:
    """Bytes of documents being replayed at once: a large document waits until the ones in
    flight leave room, so many workers cannot each hold one at the size limit."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        with self._cond:
            while self.used and self.used + size > self.capacity:
                self._cond.wait()
            self.used += size
        try:
            yield
        finally:
            with self._cond:
                self.used -= size
                self._cond.notify_all()


class Replayer:
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
                 signing_key: SigningKey | None = None, trust_unsigned: bool = False,
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
        self._lock = threading.Lock()
        self._summary = ReplaySummary()
        self._released: set[str] = set()
        self._held: set[Claim] = set()
        self._local_failures: dict[str, int] = {}
        self._finished: set[str] = set()
        self._in_flight = _InFlightBytes(self.limits.max_inflight_document_bytes)
        self.requests = TrackingRequests(
            tracking_uri,
            # A 429 is back-pressure: wait (Retry-After, a lower rate) and go on with the same
            # request for up to half an hour; other errors get 8 tries in 2 minutes.
            retry or RetryPolicy(attempts=8, initial_wait=0.5, max_wait=30.0, deadline=120.0,
                                 honour_retry_after=True, retry_transient=True,
                                 rate_limit_deadline=1800.0),
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

    # ---- checking one payload --------------------------------------------------------------

    def _read(self, claim: Claim, handle: DocumentFile) -> tuple[Payload, bool]:
        """The checked payload and whether its signature verified."""
        try:
            document = handle.read(self.limits.max_document_bytes)
        except ValueError as exc:
            raise Quarantine(str(exc)) from None
        signed = self._signature_verified(document)
        try:
            payload = check_document(document, claim.payload_id, self.limits)
        except PayloadError as exc:
            raise Quarantine(str(exc)) from None
        if signed and not self.trust_unsigned:
            for i, entry in enumerate(payload.artifacts):
                if entry.file is not None and entry.manifest is None:
                    raise Quarantine(f"artifact {i} carries no file digests (written by an older collector): its "
                                     "files cannot be checked against the signature; replay with "
                                     "--trust-unsigned only if no one else can write the store")
        return payload, signed

    def _signature_verified(self, document: dict[str, Any]) -> bool:
        """Whether the document's signature verifies; raises Quarantine when one is required
        or present and wrong. Without a key nothing can be verified: False."""
        signature = document.get("signature")
        if signature is not None:
            if self.key is None:
                return False
            if not isinstance(signature, str) or not self.key.verify(canonical_json(document), signature):
                raise Quarantine("document signature does not verify (tampered, or another key)")
            return True
        if self.key is not None and not self.trust_unsigned:
            raise Quarantine("document is not signed, but this replay holds a signing key: every document "
                             "must carry a valid signature (a collector without the key wrote it, or the "
                             "signature was removed); collect with the key, or replay with --trust-unsigned "
                             "only if no one else can write the store")
        return False

    def _verified_blob(self, folder: PayloadFolder | None, entry: ModelEntry) -> bytes:
        assert entry.blob is not None
        try:
            if folder is None:
                raise FileNotFoundError(entry.blob)
            blob = folder.read_bytes(entry.blob, self.limits.max_model_bytes)
        except FileNotFoundError:
            raise Quarantine(f"truncated: model blob {entry.blob} is missing") from None
        except PayloadError as exc:
            raise Quarantine(f"model blob: {exc}") from None
        if hashlib.sha256(blob).hexdigest() != entry.sha256:
            raise Quarantine(f"model blob {entry.blob} is corrupt or truncated (checksum)")
        if not self.trust_unsigned:
            if entry.signature is None:
                raise Quarantine(f"model blob {entry.blob} is unsigned; replay with a signing "
                                 "key set at collection time, or --trust-unsigned")
            if self.key is None or not self.key.verify(blob, entry.signature):
                raise Quarantine(f"model blob {entry.blob} signature does not verify "
                                 "(tampered, or another key)")
        return blob

    def _stage(self, folder: PayloadFolder | None, payload: Payload, done: int, staging: Path) -> dict[int, Path]:
        """Copy the artifacts still to upload into ``staging``, checked against their digests."""
        budget = Budget(self.limits.max_files, self.limits.max_artifact_bytes)
        staged: dict[int, Path] = {}
        todo = {index for i, (kind, index) in enumerate(payload.ops) if kind == ARTIFACT and i >= done}
        for index in sorted(todo):
            entry = payload.artifacts[index]
            if entry.file is None:
                raise Quarantine(f"artifact {index} is not uploaded yet, but the document names no file for it")
            target = staging / str(index) / entry.name
            target.parent.mkdir()
            try:
                if folder is None:
                    raise FileNotFoundError(entry.file)
                rows = folder.stage(entry.file, entry.is_dir, target, budget, entry.manifest)
            except FileNotFoundError:
                raise Quarantine(f"truncated: artifact {entry.file} is missing") from None
            except PayloadError as exc:
                raise Quarantine(f"artifact {index}: {exc}") from None
            if entry.manifest is not None:
                difference = manifest_difference(entry.manifest, rows)
                if difference is not None:
                    raise Quarantine(f"artifact {entry.file}: {difference}")
            staged[index] = target
        for i, (kind, index) in enumerate(payload.ops):
            if kind == MODEL and i >= done:
                entry_m = payload.models[index]
                if entry_m.blob is None:
                    raise Quarantine(f"model {index} is not uploaded yet, but the document names no blob for it")
                size = len(self._verified_blob(folder, entry_m))
                budget.admit(size, entry_m.blob)
                budget.charge(size)
        return staged

    def _check_run(self, run_id: str, payload: Payload, trusted: bool, remaining: list[str]) -> dict[str, Any]:
        """The info of the run a payload resumes, once it is shown to be the payload's own.

        A run id from a signed document is the collector's (``trusted``); any other must name a
        run carrying this payload's tag, whose value holds the hash of the run secret that only
        the collector and the payload know. Whatever its source, the run must be in the
        payload's experiment and still running: a replay never writes into an ended run (except
        that the end itself, sent already, is not sent again).
        """
        try:
            run = self.requests.get_run(run_id)
        except Exception as exc:
            if is_not_found(exc) or getattr(exc, "error_code", None) == "INVALID_PARAMETER_VALUE":
                raise Quarantine(f"run_id {run_id} names no run on the tracking server") from None
            raise
        info = run.get("info") or {}
        tags = {t.get("key"): t.get("value") for t in run.get("data", {}).get("tags", []) if isinstance(t, dict)}
        if not trusted and tags.get(PAYLOAD_TAG) != payload.tag_value:
            raise Quarantine(f"run_id {run_id} names a run this payload did not create (its tag {PAYLOAD_TAG} "
                             "is not this payload's): refusing to write into it")
        experiment = payload.run.experiment_id
        if experiment is not None and str(info.get("experiment_id")) != str(experiment):
            raise Quarantine(f"run_id {run_id} names a run of experiment {str(info.get('experiment_id'))[:40]}, "
                             f"not of the payload's experiment {experiment}")
        if info.get("lifecycle_stage", "active") != "active":
            raise Quarantine(f"run_id {run_id} names a deleted run")
        if info.get("status", RUNNING) != RUNNING and any(kind != TERMINATE for kind in remaining):
            raise Quarantine(f"run_id {run_id} names a run that has ended ({str(info.get('status'))[:20]}): "
                             "a replay never writes into an ended run")
        return info

    def _progress(self, folder: PayloadFolder | None, payload: Payload) -> tuple[dict[str, Any], str | None, int, int]:
        """The checkpoint (raw, run id, requests done, attempts); signed when this replay holds a key."""
        try:
            progress = (folder.read_json("progress.json") if folder is not None else None) or {}
            if progress and self.key is not None and not (
                    progress.get("payload_id") == payload.payload_id
                    and self.key.verify(canonical_json(progress), progress.get("signature"))):
                raise Quarantine("progress.json is not signed by this replay's key for this payload (edited, "
                                 "or written by a replay without the key)")
            return (progress, *check_progress(progress, payload))
        except PayloadError as exc:
            raise Quarantine(str(exc)) from None

    def _checkpoint(self, payload_id: str, run_id: str | None, done: int, attempts: int) -> None:
        progress: dict[str, Any] = {"payload_id": payload_id, "run_id": run_id, "ops_done": done,
                                    "attempts": attempts, "owner": self.owner}
        if self.key is not None:
            progress["signature"] = self.key.sign(canonical_json(progress))
        self.store.write_progress(payload_id, progress)

    # ---- one payload -----------------------------------------------------------------

    def _replay(self, claim: Claim) -> str:
        try:
            handle = self.store.open_document(claim.path)
        except FileNotFoundError:
            return LOST  # the claim is the document: another replayer took it over
        except ValueError as exc:
            raise Quarantine(str(exc)) from None
        with handle, self._in_flight.hold(min(handle.size, self.limits.max_document_bytes)):
            payload, signed = self._read(claim, handle)
            folder = self.store.payload_folder(claim.payload_id)
            try:
                with tempfile.TemporaryDirectory(prefix="mlflow-spark-tools-replay-") as staging:
                    return self._replay_payload(claim, payload, signed, folder, Path(staging))
            finally:
                if folder is not None:
                    folder.close()

    def _replay_payload(self, claim: Claim, payload: Payload, signed: bool, folder: PayloadFolder | None,
                        staging: Path) -> str:
        pid = claim.payload_id
        run = payload.run
        if self.store.is_done(pid) or pid in self._finished:
            raise Quarantine("this payload was replayed already (it is in done/): a copy of a replayed "
                             "document is not replayed again")
        earlier = folder.read_json("result.json") if folder is not None else None
        if earlier is not None:
            # replayed, but the replayer stopped before moving the document to done/
            if not self.store.finish(claim, earlier):
                return LOST
            self._finished.add(pid)
            self._ledger(pid, earlier.get("run_id"), earlier.get("experiment_id"), RESUMED, None)
            return RESUMED
        progress, progress_run_id, progress_done, attempts = self._progress(folder, payload)
        resumed = bool(progress)
        attempts += 1
        run_id = progress_run_id or payload.run_id
        done = max(payload.ops_done, progress_done)
        ops = payload.ops
        staged = self._stage(folder, payload, done, staging)
        # The request a collector gave up on after a timeout or a 5xx may have been applied;
        # after a 429 it was not. A resumed replay cannot know either way.
        uncertain_start = resumed or not payload.reason.startswith(RATE_LIMITED)
        if run.experiment_id is None:
            try:
                run.experiment_id = self.requests.experiment_id_by_name(payload.experiment_name or "")
            except Exception as exc:
                if is_remote_error(exc) and classify(exc) == PERMANENT:
                    raise Quarantine(f"unknown experiment {payload.experiment_name!r}") from None
                raise
        artifact_uri: str | None = None
        if run_id is not None:
            trusted = signed and run_id == payload.run_id
            info = self._check_run(run_id, payload, trusted, [kind for kind, _ in ops[done:]])
            artifact_uri = info.get("artifact_uri")
            if info.get("status", RUNNING) != RUNNING:
                done = len(ops)  # it ended: only the end remained, and it was sent
        chunks = batches(run)
        # Written before the first request: the mark that a replay began, so that whoever
        # resumes this payload after a crash treats its next request as uncertain.
        self._checkpoint(pid, run_id, done, attempts)
        for i in range(done, len(ops)):
            if not self.store.heartbeat(claim):
                return LOST
            kind, index = ops[i]
            uncertain = uncertain_start and i == done
            if kind == CREATE:
                if run_id is None and uncertain:
                    run_id = self.requests.run_with_payload_tag(run.experiment_id, payload.tag_value)
                    if run_id is not None:
                        artifact_uri = self._check_run(run_id, payload, False, [k for k, _ in ops[i + 1:]]) \
                            .get("artifact_uri")
                if run_id is None:
                    try:
                        info = self.requests.create_run(
                            run.experiment_id, run.run_name, run.start_time,
                            {**tags_at_create(run), PAYLOAD_TAG: payload.tag_value})
                    except Exception as exc:
                        if is_remote_error(exc) and classify(exc) == PERMANENT and "experiment" in str(exc).lower():
                            raise Quarantine(f"unknown experiment {run.experiment_id!r}: "
                                             f"{error_summary(exc)}") from None
                        raise
                    run_id, artifact_uri = info["run_id"], info.get("artifact_uri")
            elif kind == BATCH:
                chunk = chunks[index]
                if not (uncertain and self._batch_applied(run_id, chunk.metrics)):
                    self.requests.log_batch(run_id, chunk.params, chunk.metrics, chunk.tags)
            elif kind in (ARTIFACT, MODEL):
                if artifact_uri is None:
                    artifact_uri = self.requests.get_run(run_id)["info"].get("artifact_uri")
                if is_local_artifact_uri(artifact_uri) and not (signed or self.trust_unsigned):
                    raise Quarantine(f"the run's artifacts go to a path on this host ({str(artifact_uri)[:200]}): "
                                     "an unsigned document cannot make the replay write local files; collect "
                                     "with a signing key, or replay with --trust-unsigned")
                if kind == ARTIFACT:
                    upload_artifact(self.requests, run_id, artifact_uri, str(staged[index]),
                                    payload.artifacts[index].artifact_path)
                else:
                    self._upload_model(folder, run_id, artifact_uri, payload.models[index])
            elif kind == TERMINATE:
                self.requests.update_run(run_id, run.status, run.end_time or int(time.time() * 1000))
            if not self.store.holds(claim):
                return LOST
            self._checkpoint(pid, run_id, i + 1, attempts)
        result = {"run_id": run_id, "replayed_at": int(time.time() * 1000), "attempts": attempts,
                  "experiment_id": run.experiment_id}
        if not self.store.finish(claim, result):
            return LOST
        with self._lock:
            self._finished.add(pid)
        self._ledger(pid, run_id, run.experiment_id, RESUMED if resumed else REPLAYED, None, attempts)
        return RESUMED if resumed else REPLAYED

    def _upload_model(self, folder: PayloadFolder | None, run_id: str, artifact_uri: str | None,
                      entry: ModelEntry) -> None:
        import cloudpickle

        blob = self._verified_blob(folder, entry)
        with tempfile.TemporaryDirectory(prefix="mlflow-spark-tools-model-") as tmp:
            path = os.path.join(tmp, "model")
            try:
                saved = cloudpickle.loads(blob)
                save_model_dir(saved["model"], path, saved["flavor"], saved["save_func"], saved["kwargs"])
            except Exception as exc:
                raise Quarantine(f"model {entry.artifact_path!r} could not be saved on this host: "
                                 f"{type(exc).__name__}: {error_summary(exc, 300)}") from None
            upload_artifact(self.requests, run_id, artifact_uri, path, entry.artifact_path, contents_only=True)

    def _batch_applied(self, run_id: str, metrics: list[tuple[str, float, int, int]]) -> bool:
        """Whether a batch already reached the server (log_batch is atomic: check one point)."""
        if not metrics:
            return False  # params and tags alone are safe to send again
        key, value, ts, step = metrics[0]
        for point in self.requests.metric_history(run_id, key):
            if int(point.get("step", 0)) == step and int(point.get("timestamp", 0)) == ts:
                return True
        return False

    def _ledger(self, payload_id: str, run_id: str | None, experiment_id: str | None, status: str,
                error: str | None, attempts: int = 1) -> None:
        with self._lock:
            self._summary.ledger.append({
                "payload_id": payload_id, "run_id": run_id, "experiment_id": experiment_id,
                "status": status, "attempts": attempts, "error": error,
                "replayed_at": int(time.time() * 1000),
            })
