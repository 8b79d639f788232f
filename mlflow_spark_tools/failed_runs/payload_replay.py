"""Replaying one payload: reading and checking its document, staging its artifacts, checking
the run it names, and sending its remaining requests with a checkpoint after each.

The passes over the store, the claims and the summary are the :class:`Replayer`'s
(:mod:`mlflow_spark_tools.failed_runs.replayer`); this module is what happens to one claim.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_spark_tools.config import ReplayLimits
from mlflow_spark_tools.failed_runs.document import (
    PAYLOAD_TAG,
    ModelEntry,
    Payload,
    PayloadError,
    canonical_json,
    check_document,
    check_progress,
    is_local_artifact_uri,
)
from mlflow_spark_tools.failed_runs.files import Budget, PayloadFolder, manifest_difference
from mlflow_spark_tools.failed_runs.run_writer import RunWriter
from mlflow_spark_tools.failed_runs.store import Claim, FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import DocumentFile
from mlflow_spark_tools.runs.models import save_model_dir
from mlflow_spark_tools.runs.run_data import (
    ARTIFACT,
    CREATE,
    MODEL,
    TERMINATE,
)
from mlflow_spark_tools.tracking.artifacts import upload_artifact
from mlflow_spark_tools.tracking.logged_models import LoggedModels
from mlflow_spark_tools.tracking.rate_limit_errors import (
    PERMANENT,
    RATE_LIMITED,
    classify,
    error_summary,
    is_remote_error,
    names_nothing,
)
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests

if TYPE_CHECKING:
    from mlflow_spark_tools.failed_runs.signing import SigningKey

log = logging.getLogger(__name__)

REPLAYED, RESUMED, FAILED, RELEASED, LOST = "replayed", "resumed", "failed", "released", "lost"
RUNNING = "RUNNING"


class Quarantine(Exception):
    """This payload cannot be replayed; the message is the reason."""


class InFlightBytes:
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

class _PayloadWriter(RunWriter):
    """Writes a payload's run: checks a run found by its tag before writing into it, skips a
    batch that reached the server before a crash, uploads the staged artifact copies and the
    verified model blobs, and refuses local artifact roots for unsigned documents."""

    def __init__(self, replayer: PayloadSteps, payload: Payload, signed: bool, folder: PayloadFolder | None,
                 staged: dict[int, Path], run_id: str | None, artifact_uri: str | None) -> None:
        super().__init__(replayer.requests, payload.run, run_id, artifact_uri)
        self.replayer = replayer
        self.payload = payload
        self.signed = signed
        self.folder = folder
        self.staged = staged

    def create_tags(self) -> dict[str, str]:
        return {**super().create_tags(), PAYLOAD_TAG: self.payload.tag_value}

    def create(self, uncertain: bool) -> None:
        if self.run_id is None and uncertain:
            # the create of an earlier attempt may have been applied: find the run by its tag
            self.run_id = self.requests.run_with_tag(self._experiment_id(), PAYLOAD_TAG, self.payload.tag_value)
            if self.run_id is not None:
                later = [kind for kind, _ in self.payload.ops if kind != CREATE]
                self.artifact_uri = self.replayer._check_run(self.run_id, self.payload, False, later) \
                    .get("artifact_uri")
        if self.run_id is None:
            try:
                super().create(uncertain)
            except Exception as exc:
                if is_remote_error(exc) and classify(exc) == PERMANENT and "experiment" in str(exc).lower():
                    raise Quarantine(f"unknown experiment {self.run.experiment_id!r}: "
                                     f"{error_summary(exc)}") from None
                raise

    def log_batch(self, index: int, uncertain: bool) -> None:
        if not (uncertain and self.replayer._batch_applied(self.created_run_id, self.chunks[index].metrics)):
            super().log_batch(index, uncertain)

    def _artifact_root(self) -> str | None:
        artifact_uri = self.known_artifact_uri()
        self.check_destination(artifact_uri)
        return artifact_uri

    def linked_model_allowed(self, model_id: str) -> bool:
        """Points of a signed document are linked as the collector was told; an unsigned one
        may link only to a logged model its own run logged (the document names the experiment
        too, so anyone who can write the store could otherwise add metrics to any model the
        replay job can reach). Link an evaluation run's points to another run's model by id
        with a signed store."""
        if self.signed:
            return True
        model = LoggedModels(self.requests).get(model_id)
        if model is not None and self.run_id is not None and model.source_run_id == self.run_id:
            return True
        log.warning("Payload %s (unsigned) links metric points to logged model %s, which its run did not log: "
                    "the points are logged without that link", self.payload.payload_id, model_id[:128])
        return False

    def check_destination(self, artifact_uri: str | None) -> None:
        if is_local_artifact_uri(artifact_uri) and not (self.signed or self.replayer.trust_unsigned):
            raise Quarantine(f"the run's artifacts go to a path on this host ({str(artifact_uri)[:200]}): "
                             "an unsigned document cannot make the replay write local files; collect "
                             "with a signing key, or replay with --trust-unsigned")

    def log_artifact(self, index: int) -> None:
        root = self._artifact_root()
        upload_artifact(self.requests, self.created_run_id, root, str(self.staged[index]),
                        self.payload.artifacts[index].artifact_path)

    def log_model(self, index: int, uncertain: bool) -> None:
        entry = self.payload.models[index]
        self._artifact_root()  # a model's location is as local as the run's: refused before anything is sent
        save_to = self.replayer._model_saver(self.folder, entry)
        earlier = sum(1 for m in self.payload.models[:index] if m.artifact_path == entry.artifact_path)
        self.write_model(index, entry.artifact_path, save_to, uncertain=uncertain, known_id=entry.logged_model_id,
                         earlier_same_name=earlier)

class PayloadSteps:
    """The steps of replaying one payload, for the :class:`Replayer` that holds the store, the
    requests and the limits."""

    store: FailedRunStore
    requests: TrackingRequests
    limits: ReplayLimits
    key: SigningKey | None
    trust_unsigned: bool
    owner: str
    _lock: threading.Lock
    _finished: set[str]
    _in_flight: InFlightBytes

    def _ledger(self, payload_id: str, run_id: str | None, experiment_id: str | None, status: str,
                error: str | None, attempts: int = 1) -> None:
        raise NotImplementedError

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
            if names_nothing(exc):
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
        writer = _PayloadWriter(self, payload, signed, folder, staged, run_id, artifact_uri)
        # Written before the first request: the mark that a replay began, so that whoever
        # resumes this payload after a crash treats its next request as uncertain.
        self._checkpoint(pid, run_id, done, attempts)
        for i in range(done, len(ops)):
            if not self.store.heartbeat(claim):
                return LOST
            kind, index = ops[i]
            writer.send(kind, index, uncertain=uncertain_start and i == done)
            if not self.store.holds(claim):
                return LOST
            self._checkpoint(pid, writer.run_id, i + 1, attempts)
        run_id = writer.run_id
        result = {"run_id": run_id, "replayed_at": int(time.time() * 1000), "attempts": attempts,
                  "experiment_id": run.experiment_id}
        if not self.store.finish(claim, result):
            return LOST
        with self._lock:
            self._finished.add(pid)
        self._ledger(pid, run_id, run.experiment_id, RESUMED if resumed else REPLAYED, None, attempts)
        return RESUMED if resumed else REPLAYED

    def _model_saver(self, folder: PayloadFolder | None, entry: ModelEntry) -> Callable[[str], None]:
        """What saves a payload's model as an MLflow model directory; its blob is checked
        (digest, signature) before anything else happens."""
        import cloudpickle

        blob = self._verified_blob(folder, entry)

        def save_to(path: str) -> None:
            try:
                saved = cloudpickle.loads(blob)
                save_model_dir(saved["model"], path, saved["flavor"], saved["save_func"], saved["kwargs"])
            except Exception as exc:
                raise Quarantine(f"model {entry.artifact_path!r} could not be saved on this host: "
                                 f"{type(exc).__name__}: {error_summary(exc, 300)}") from None

        return save_to

    def _batch_applied(self, run_id: str, metrics: list[tuple[str, float, int, int]]) -> bool:
        """Whether a batch already reached the server (log_batch is atomic: check one point)."""
        if not metrics:
            return False  # params and tags alone are safe to send again
        key, value, ts, step = metrics[0]
        for point in self.requests.metric_history(run_id, key):
            if int(point.get("step", 0)) == step and int(point.get("timestamp", 0)) == ts:
                return True
        return False

