"""Replaying one payload: reading its document whole, checking it, staging its files, checking
the run it names, and sending its remaining requests with a checkpoint after each.

The passes over the store, the lease and the summary are the :class:`Replayer`'s
(:mod:`mlflow_spark_tools.failed_runs.replayer`), which holds one :class:`PayloadReplay`; this
module is what happens to one document. The steps it uses each have their module: the checks
of documents and blobs (:mod:`~mlflow_spark_tools.failed_runs.verification`), the staged files
(:mod:`~mlflow_spark_tools.failed_runs.staging`), the checks before writing into a run
(:mod:`~mlflow_spark_tools.failed_runs.write_checks`), the checkpoints
(:mod:`~mlflow_spark_tools.failed_runs.checkpoints`) and the done record
(:mod:`~mlflow_spark_tools.failed_runs.done_records`), written before the document is removed.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow_spark_tools.failed_runs.checkpoints import Checkpoints
from mlflow_spark_tools.failed_runs.document import PAYLOAD_TAG, Payload
from mlflow_spark_tools.failed_runs.done_records import DoneRecords
from mlflow_spark_tools.failed_runs.files import PayloadFolder
from mlflow_spark_tools.failed_runs.lease import DeltaLease
from mlflow_spark_tools.failed_runs.replay_outcomes import (
    LOST,
    REPLAYED,
    RESUMED,
    Incomplete,
    PassRecord,
    Quarantine,
)
from mlflow_spark_tools.failed_runs.run_writer import RunWriter
from mlflow_spark_tools.failed_runs.staging import stage
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import (
    BEGUN,
    DONE_FORMAT,
    DocumentFile,
    DocumentGrew,
    PendingDocument,
    checkpoint_name,
    digest,
)
from mlflow_spark_tools.failed_runs.verification import Verifier
from mlflow_spark_tools.failed_runs.write_checks import RUNNING, WriteChecks
from mlflow_spark_tools.runs.run_data import CREATE
from mlflow_spark_tools.tracking.artifacts import upload_artifact
from mlflow_spark_tools.tracking.logged_models import LoggedModels
from mlflow_spark_tools.tracking.rate_limit_errors import (
    PERMANENT,
    RATE_LIMITED,
    classify,
    error_summary,
    is_remote_error,
)
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests

log = logging.getLogger(__name__)


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
    verified model blobs, and refuses local artifact roots for unsigned documents. It calls
    back only into ``checks``."""

    def __init__(self, checks: WriteChecks, payload: Payload, signed: bool, folder: PayloadFolder | None,
                 staged: dict[int, Path], run_id: str | None, artifact_uri: str | None) -> None:
        super().__init__(checks.requests, payload.run, run_id, artifact_uri)
        self.checks = checks
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
                self.artifact_uri = self.checks.run_info(self.run_id, self.payload, False, later).get("artifact_uri")
        if self.run_id is None:
            try:
                super().create(uncertain)
            except Exception as exc:
                if is_remote_error(exc) and classify(exc) == PERMANENT and "experiment" in str(exc).lower():
                    raise Quarantine(f"unknown experiment {self.run.experiment_id!r}: "
                                     f"{error_summary(exc)}") from None
                raise

    def log_batch(self, index: int, uncertain: bool) -> None:
        if not (uncertain and self._batch_applied(index)):
            super().log_batch(index, uncertain)

    def _batch_applied(self, index: int) -> bool:
        """Whether batch ``index`` reached the server already (a batch is applied whole, so one
        point tells). The earlier batches are applied, so the server holds the first point as
        many times as they do, plus this batch's count if it was applied; a point logged twice
        in the same millisecond is not taken for this batch's."""
        metrics = self.chunks[index].metrics
        if not metrics:
            return False  # params and tags alone are safe to send again
        key, _, ts, step = metrics[0]

        def same(points: list[tuple[str, float, int, int]]) -> int:
            return sum(1 for k, _, t, s in points if (k, t, s) == (key, ts, step))

        earlier = sum(same(chunk.metrics) for chunk in self.chunks[:index])
        on_server = sum(1 for point in self.requests.metric_history(self.created_run_id, key)
                        if int(point.get("step", 0)) == step and int(point.get("timestamp", 0)) == ts)
        return on_server >= earlier + same(metrics)

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
        self.checks.destination(artifact_uri, self.signed)

    def log_artifact(self, index: int) -> None:
        root = self._artifact_root()
        upload_artifact(self.requests, self.created_run_id, root, str(self.staged[index]),
                        self.payload.artifacts[index].artifact_path)

    def log_model(self, index: int, uncertain: bool) -> None:
        entry = self.payload.models[index]
        self._artifact_root()  # a model's location is as local as the run's: refused before anything is sent
        save_to = self.checks.model_saver(self.folder, entry)
        earlier = sum(1 for m in self.payload.models[:index] if m.artifact_path == entry.artifact_path)
        self.write_model(index, entry.artifact_path, save_to, uncertain=uncertain, known_id=entry.logged_model_id,
                         earlier_same_name=earlier)


class PayloadReplay:
    """Replays payloads one document at a time (any number of the replayer's workers at once).

    Args:
        store: the failed-run store.
        requests: the replay's tracking requests (paced, fenced by the lease).
        lease: the store's lease, checked before each request.
        verifier: checks documents, records and model blobs, and signs the replay's records.
        record: where the pass's ledger rows and quarantined foreign files are recorded.
        owner: the replayer, named in its checkpoints and done records.
        tracking_uri: the tracking server.
        artifact_hosts: hosts besides the tracking server's that runs' artifacts may go to.
        torn_grace_seconds: how long after the time in its name a document whose bytes do not
            hash to its name is left alone (being written) before it is quarantined as torn.
    """

    def __init__(self, store: FailedRunStore, requests: TrackingRequests, lease: DeltaLease, verifier: Verifier,
                 record: PassRecord, *, owner: str, tracking_uri: str, artifact_hosts: tuple[str, ...],
                 torn_grace_seconds: float) -> None:
        self.store = store
        self.requests = requests
        self.lease = lease
        self.verifier = verifier
        self.limits = verifier.limits
        self.record = record
        self.owner = owner
        self.torn_grace_seconds = torn_grace_seconds
        self.checks = WriteChecks(requests, verifier, tracking_uri, artifact_hosts)
        self.checkpoints = Checkpoints(verifier, owner)
        self.records = DoneRecords(store, verifier, owner, record.foreign_quarantined)
        self._in_flight = InFlightBytes(self.limits.max_inflight_document_bytes)
        self._lock = threading.Lock()
        self._finished: set[str] = set()  # payloads whose ledger row this replay has given

    def replay(self, document: PendingDocument) -> str:
        """Replay one document; returns its outcome.

        Raises:
            Quarantine: the payload cannot be replayed (the reason).
            Incomplete: the document is still being written.
        """
        try:
            handle = self.store.open_document(document)
        except FileNotFoundError:
            return LOST  # removed meanwhile
        except ValueError as exc:
            raise Quarantine(str(exc)) from None
        with self._in_flight.hold(min(handle.size, self.limits.max_document_bytes)):
            # read, then closed: a file held open cannot be removed on every FUSE mount
            with handle:
                data = self.document_bytes(document, handle)
            record = self.records.read(document.payload_id)
            if record is not None:
                return self._leftover(document, data, record)
            payload, signed = self.verifier.read(document.payload_id, data)
            folder = self.store.payload_folder(document.payload_id)
            try:
                with tempfile.TemporaryDirectory(prefix="mlflow-spark-tools-replay-") as staging:
                    return self._replay_payload(document, data, payload, signed, folder, Path(staging))
            finally:
                if folder is not None:
                    folder.close()

    def document_bytes(self, document: PendingDocument, handle: DocumentFile) -> bytes:
        """The document's bytes, once they are whole: a document written by the collector must
        hash to its name. One that does not is still being written, or its writer died half
        way: it is left alone for ``torn_grace_seconds`` after the time in its name, then
        quarantined."""
        try:
            data = handle.read_bytes(self.limits.max_document_bytes)
        except DocumentGrew:
            raise Incomplete(document.name) from None  # its writer is at work: read it whole next pass
        except ValueError as exc:
            raise Quarantine(str(exc)) from None
        if document.digest is None or digest(data) == document.digest:
            return data
        age = time.time() - (document.written_ms or 0) / 1000.0
        if -self.torn_grace_seconds < age < self.torn_grace_seconds:
            raise Incomplete(document.name)
        raise Quarantine(f"torn: the document is incomplete ({len(data)} bytes that do not hash to its name, "
                         f"{age / 60:.0f} minutes after it was written): its writer stopped while writing it")

    def _leftover(self, document: PendingDocument, data: bytes, record: dict[str, Any]) -> str:
        """A document whose payload is replayed already. The very document a replay finished
        (its record holds the document's SHA-256; the replay stopped between writing the record
        and removing the document) is removed and gets its ledger row; any other copy is
        quarantined, never replayed again."""
        if record.get("format") == DONE_FORMAT and record.get("document_sha256") == hashlib.sha256(data).hexdigest():
            self.store.remove(document)
            with self._lock:
                first = document.payload_id not in self._finished  # else its row is in this replay's ledger
                self._finished.add(document.payload_id)
            if first:
                self.record.ledger(document.payload_id, record.get("run_id"), record.get("experiment_id"), RESUMED,
                                   None, record.get("attempts") or 1)
            return RESUMED
        raise Quarantine("this payload was replayed already (it is in done/): a copy of a replayed "
                         "document is not replayed again")

    def _replay_payload(self, document: PendingDocument, data: bytes, payload: Payload, signed: bool,
                        folder: PayloadFolder | None, staging: Path) -> str:
        pid = document.payload_id
        run = payload.run
        found = self.checkpoints.progress(folder, payload)
        begun, resumed, attempts = found.begun, found.resumed, found.attempts + 1
        run_id = found.run_id or payload.run_id
        done = max(payload.ops_done, found.done)
        ops = payload.ops
        staged = stage(folder, payload, done, staging, self.verifier)
        # The request a collector gave up on after a timeout or a 5xx may have been applied;
        # after a 429 it was not. A resumed replay cannot know how far the one before it got
        # (its newest checkpoints may not be listed yet): every request from here is checked.
        uncertain_first = resumed or not payload.reason.startswith(RATE_LIMITED)
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
            info = self.checks.run_info(run_id, payload, trusted, [kind for kind, _ in ops[done:]])
            artifact_uri = info.get("artifact_uri")
            if info.get("status", RUNNING) != RUNNING:
                done = len(ops)  # it ended: only the end remained, and it was sent
        writer = _PayloadWriter(self.checks, payload, signed, folder, staged, run_id, artifact_uri)
        # a payload without artifacts or models has no folder yet: its checkpoints make one
        progress = folder if folder is not None else self.store.payload_folder(pid, create=True)
        assert progress is not None
        try:
            # Written before the first request: the mark that a replay began, so that whoever
            # resumes this payload treats its requests as uncertain.
            self.checkpoints.write(progress, pid, checkpoint_name(done, self.owner) if begun else BEGUN, run_id,
                                   done, attempts)
            for i in range(done, len(ops)):
                self.lease.check()
                kind, index = ops[i]
                writer.send(kind, index, uncertain=resumed or (uncertain_first and i == done))
                if i + 1 < len(ops):  # after the last one the done record says it all
                    self.checkpoints.write(progress, pid, checkpoint_name(i + 1, self.owner), writer.run_id, i + 1,
                                           attempts)
        finally:
            if progress is not folder:
                progress.close()
        return self._finish(document, payload, data, writer.run_id, attempts, resumed)

    def _finish(self, document: PendingDocument, payload: Payload, data: bytes, run_id: str | None,
                attempts: int, resumed: bool) -> str:
        """Write the done record, then remove the document."""
        self.records.write(payload, data, run_id, attempts)
        self.store.remove(document)
        with self._lock:
            self._finished.add(payload.payload_id)
        status = RESUMED if resumed else REPLAYED
        self.record.ledger(payload.payload_id, run_id, payload.run.experiment_id, status, None, attempts)
        return status
