"""The replay job: drain a failed-run store into the tracking server within its rate limits.

Every payload is claimed with a lease (a rename; see :mod:`failed_run_store`), checked, and its
remaining requests are sent through per-API-class token buckets, checkpointing after every
request that changed the run. A crashed replayer's lease expires and another takes the payload
over and resumes from the checkpoint:

- if the run was created but the checkpoint was not written, the run is found by its
  ``mlflow_spark_tools.payload_id`` tag instead of being created twice;
- a ``log_batch`` that may have been applied is checked against the metric history, so no
  metric point is logged twice (params are idempotent: the same value may be logged again).

A payload that cannot be replayed (corrupt, truncated, foreign, newer format, unsigned or
tampered model blob, unknown experiment, values over MLflow's limits) moves to ``failed`` with
a reason file; the job goes on and its exit code says something failed. A payload that keeps
meeting 429s after its retries goes back to ``pending``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from mlflow_spark_tools.artifact_upload import upload_artifact
from mlflow_spark_tools.collector import canonical_json, save_model_dir
from mlflow_spark_tools.config import API_CLASSES, RateLimitProfile
from mlflow_spark_tools.failed_run_store import Claim, FailedRunStore, new_owner
from mlflow_spark_tools.rate_limit_errors import PERMANENT, RATE_LIMITED, classify, error_summary
from mlflow_spark_tools.ratelimit import RateLimiter
from mlflow_spark_tools.run_data import (
    ARTIFACT,
    BATCH,
    CREATE,
    MODEL,
    TERMINATE,
    RunData,
    RunDataError,
    batches,
    plan,
    tags_at_create,
)
from mlflow_spark_tools.signing import SigningKey
from mlflow_spark_tools.tracking_requests import PAYLOAD_TAG, RetryPolicy, TrackingRequests

log = logging.getLogger(__name__)

REPLAYED, RESUMED, FAILED, RELEASED, LOST = "replayed", "resumed", "failed", "released", "lost"


class Quarantine(Exception):
    """This payload cannot be replayed; the message is the reason."""


@dataclass
class ReplaySummary:
    """What one replay pass did."""

    replayed: int = 0
    resumed: int = 0
    failed: int = 0
    released: int = 0
    pending: int = 0
    requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(API_CLASSES, 0))
    throttled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(API_CLASSES, 0))
    seconds: float = 0.0
    ledger: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed, "resumed": self.resumed, "failed": self.failed,
            "released_to_pending": self.released, "still_pending": self.pending,
            "requests": self.requests, "429s": self.throttled, "seconds": round(self.seconds, 3),
        }


class Replayer:
    """Replays the payloads of one store.

    Args:
        store_path: the failed-run store.
        tracking_uri: the tracking server.
        profile: rate limits per API class (with the profile's safety factor).
        max_workers: payloads replayed at once.
        lease_seconds: a claim not renewed for this long may be taken over.
        signing_key: verifies model blobs and signed documents.
        trust_unsigned: unpickle model blobs without a valid signature (unsafe on shared storage).
        retry: the policy for one request (429s honour ``Retry-After``).
        sleep: waiting function (injectable for tests).
    """

    def __init__(self, store_path: str, tracking_uri: str, profile: RateLimitProfile,
                 max_workers: int = 16, lease_seconds: float = 300.0,
                 signing_key: SigningKey | None = None, trust_unsigned: bool = False,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store = FailedRunStore(store_path).ensure()
        self.tracking_uri = tracking_uri
        self.limiter = RateLimiter(profile, sleep=sleep)
        self.max_workers = max_workers
        self.lease_seconds = lease_seconds
        self.key = signing_key
        self.trust_unsigned = trust_unsigned
        self.owner = new_owner()
        self._lock = threading.Lock()
        self._summary = ReplaySummary()
        self._released: set[str] = set()
        self.requests = TrackingRequests(
            tracking_uri,
            retry or RetryPolicy(attempts=8, initial_wait=0.5, max_wait=30.0, deadline=120.0,
                                 honour_retry_after=True, retry_transient=True),
            limiter=self.limiter, on_attempt=self._count, sleep=sleep,
        )

    def _count(self, api_class: str, status: int | None) -> None:
        with self._lock:
            self._summary.requests[api_class] += 1
            if status == 429:
                self._summary.throttled[api_class] += 1

    # ---- the pass --------------------------------------------------------------------

    def run_until_empty(self, pause: float = 5.0, max_idle_passes: int = 3) -> ReplaySummary:
        """Pass after pass until ``pending`` is empty or passes stop making progress."""
        total = ReplaySummary()
        idle = 0
        while True:
            one = self.run()
            for name in ("replayed", "resumed", "failed", "released", "seconds"):
                setattr(total, name, getattr(total, name) + getattr(one, name))
            for api_class in API_CLASSES:
                total.requests[api_class] += one.requests[api_class]
                total.throttled[api_class] += one.throttled[api_class]
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
        for path in self.store.foreign_files():
            self.store.quarantine(path, path.name, "foreign file: not a run document of this package")
            summary.failed += 1
        self._released = set()
        in_flight: set[Future[tuple[str, str]]] = set()
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            while True:
                # Keep every worker busy, never far ahead (a claim not yet started holds a
                # lease another replayer cannot take): top up to two rounds of work whenever
                # at most one round is left, so the folders are listed once per round.
                claims = []
                if len(in_flight) <= self.max_workers:
                    claims = self._claim_batch(self.max_workers * 2 - len(in_flight))
                in_flight.update(pool.submit(self._replay_claim, claim) for claim in claims)
                if not in_flight:
                    break
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    payload_id, outcome = future.result()
                    with self._lock:
                        if outcome in (REPLAYED, RESUMED):
                            summary.replayed += 1
                            summary.resumed += outcome == RESUMED
                        elif outcome == FAILED:
                            summary.failed += 1
                        elif outcome == RELEASED:
                            summary.released += 1
                            self._released.add(payload_id)
        summary.pending = len(self.store.ids("pending"))
        summary.seconds = time.perf_counter() - started
        return summary

    def _claim_batch(self, n: int) -> list[Claim]:
        claims: list[Claim] = []
        now = time.time()
        for stale, heartbeat in self.store.claims():
            if len(claims) >= n:
                return claims
            if stale.owner != self.owner and now - heartbeat > self.lease_seconds:
                taken = self.store.take_over(stale, self.owner)
                if taken is not None:
                    log.info("Took over %s from %s (lease expired)", stale.payload_id, stale.owner)
                    claims.append(taken)
        for payload_id in self.store.ids("pending"):
            if len(claims) >= n:
                break
            if payload_id in self._released:
                continue  # gave it back after 429s in this pass; the next pass tries again
            claim = self.store.claim(payload_id, self.owner)
            if claim is not None:
                claims.append(claim)
        return claims

    def _replay_claim(self, claim: Claim) -> tuple[str, str]:
        return claim.payload_id, self._replay_claim_outcome(claim)

    def _replay_claim_outcome(self, claim: Claim) -> str:
        try:
            return self._replay(claim)
        except Quarantine as exc:
            log.warning("Payload %s quarantined: %s", claim.payload_id, exc)
            self.store.quarantine(claim.path, claim.payload_id, str(exc))
            self._ledger(claim.payload_id, None, None, FAILED, str(exc))
            return FAILED
        except Exception as exc:
            if classify(exc) == PERMANENT:
                reason = f"the tracking server refused it: {error_summary(exc, 500)}"
                self.store.quarantine(claim.path, claim.payload_id, reason)
                self._ledger(claim.payload_id, None, None, FAILED, reason)
                return FAILED
            log.warning("Payload %s goes back to pending: %s", claim.payload_id, error_summary(exc, 200))
            self.store.release(claim)
            return RELEASED

    # ---- one payload -----------------------------------------------------------------

    def _load(self, claim: Claim) -> tuple[dict[str, Any], RunData]:
        try:
            document = self.store.read_document(claim.path)
        except ValueError as exc:
            raise Quarantine(str(exc)) from None
        if document.get("payload_id") != claim.payload_id:
            raise Quarantine("payload id in the document does not match its file name")
        signature = document.get("signature")
        if signature is not None and self.key is not None:
            if not self.key.verify(canonical_json(document), signature):
                raise Quarantine("document signature does not verify (tampered, or another key)")
        try:
            run = RunData.from_json(document.get("run") or {})
        except RunDataError as exc:
            raise Quarantine(f"values MLflow would reject: {exc}") from None
        data_dir = self.store.data_dir(claim.payload_id)
        for entry in document.get("artifacts", []):
            if entry.get("file") and not (data_dir / entry["file"]).exists():
                raise Quarantine(f"truncated: artifact {entry['file']} is missing")
        for entry in document.get("models", []):
            if entry.get("blob"):
                self._verified_blob(data_dir / entry["blob"], entry)
        return document, run

    def _verified_blob(self, path: Any, entry: dict[str, Any]) -> bytes:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise Quarantine(f"truncated: model blob {entry['blob']} is missing") from None
        if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
            raise Quarantine(f"model blob {entry['blob']} is corrupt or truncated (checksum)")
        if not self.trust_unsigned:
            if entry.get("signature") is None:
                raise Quarantine(f"model blob {entry['blob']} is unsigned; replay with a signing "
                                 "key set at collection time, or --trust-unsigned")
            if self.key is None or not self.key.verify(blob, entry["signature"]):
                raise Quarantine(f"model blob {entry['blob']} signature does not verify "
                                 "(tampered, or another key)")
        return blob

    def _replay(self, claim: Claim) -> str:
        document, run = self._load(claim)
        pid = claim.payload_id
        progress = self.store.read_progress(pid)
        resumed = bool(progress)
        # The request a collector gave up on after a timeout or a 5xx may have been applied;
        # after a 429 it was not. A resumed replay cannot know either way.
        uncertain_start = resumed or not str(document.get("reason", "")).startswith(RATE_LIMITED)
        run_id = progress.get("run_id") or document.get("run_id")
        artifact_uri = progress.get("artifact_uri") or document.get("artifact_uri")
        done = max(int(document.get("ops_done") or 0), int(progress.get("ops_done") or 0))
        attempts = int(progress.get("attempts") or 0) + 1
        if run.experiment_id is None:
            try:
                run.experiment_id = self.requests.experiment_id_by_name(document.get("experiment_name") or "")
            except Exception as exc:
                if classify(exc) == PERMANENT:
                    raise Quarantine(f"unknown experiment {document.get('experiment_name')!r}") from None
                raise
        artifacts, models = document.get("artifacts", []), document.get("models", [])
        ops = plan(run, len(artifacts), len(models))
        chunks = batches(run)
        # Written before the first request: the mark that a replay began, so that whoever
        # resumes this payload after a crash treats its next request as uncertain.
        self.store.write_progress(pid, {"run_id": run_id, "artifact_uri": artifact_uri, "ops_done": done,
                                        "attempts": attempts, "owner": self.owner})
        for i in range(done, len(ops)):
            if not self.store.heartbeat(claim):
                return LOST
            kind, index = ops[i]
            uncertain = uncertain_start and i == done
            if kind == CREATE:
                if run_id is None and uncertain:
                    run_id = self.requests.run_with_payload_tag(run.experiment_id, pid)
                if run_id is None:
                    try:
                        info = self.requests.create_run(
                            run.experiment_id, run.run_name, run.start_time,
                            {**tags_at_create(run), PAYLOAD_TAG: pid})
                    except Exception as exc:
                        if classify(exc) == PERMANENT and "experiment" in str(exc).lower():
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
                if kind == ARTIFACT:
                    entry = artifacts[index]
                    path = str(self.store.data_dir(pid) / entry["file"])
                    upload_artifact(self.requests, run_id, artifact_uri, path, entry.get("artifact_path"))
                else:
                    self._upload_model(claim, run_id, artifact_uri, models[index])
            elif kind == TERMINATE:
                self.requests.update_run(run_id, run.status, run.end_time or int(time.time() * 1000))
            if not self.store.holds(claim):
                return LOST
            self.store.write_progress(pid, {"run_id": run_id, "artifact_uri": artifact_uri, "ops_done": i + 1,
                                            "attempts": attempts, "owner": self.owner})
        result = {"run_id": run_id, "replayed_at": int(time.time() * 1000), "attempts": attempts,
                  "experiment_id": run.experiment_id}
        if not self.store.finish(claim, result):
            return LOST
        self._ledger(pid, run_id, run.experiment_id, RESUMED if resumed else REPLAYED, None, attempts)
        return RESUMED if resumed else REPLAYED

    def _upload_model(self, claim: Claim, run_id: str, artifact_uri: str | None, entry: dict[str, Any]) -> None:
        import cloudpickle

        blob = self._verified_blob(self.store.data_dir(claim.payload_id) / entry["blob"], entry)
        saved = cloudpickle.loads(blob)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model")
            save_model_dir(saved["model"], path, saved["flavor"], saved["save_func"], saved["kwargs"])
            upload_artifact(self.requests, run_id, artifact_uri, path, entry["artifact_path"], contents_only=True)

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
