"""Replaying one payload: reading and checking its document, staging its artifacts, checking
the run it names, and sending its remaining requests with a checkpoint after each.

The passes over the store, the lease and the summary are the :class:`Replayer`'s
(:mod:`mlflow_spark_tools.failed_runs.replayer`); this module is what happens to one document.

Checkpoints are a log of new files in ``data/<payload_id>/progress/``: ``begun.json`` before
the first request any replay of the payload sends, then ``<requests done>-<replayer>.json``
after each request. A replay that finds any of them resumes: from the highest request count
it can see, with every request from there on treated as one that may have reached the server
already (a listing may not show the newest checkpoints yet; ``begun.json`` is looked up by
name, so a replay never mistakes a resumed payload for a new one). The end is a record in
``done/<payload_id>.json`` (the run, the document's SHA-256; signed with the key), written
before the document is removed.
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
    check_run_id,
    foreign_artifact_host,
    is_local_artifact_uri,
)
from mlflow_spark_tools.failed_runs.files import Budget, EmptyFile, PayloadFolder, manifest_difference
from mlflow_spark_tools.failed_runs.lease import DeltaLease
from mlflow_spark_tools.failed_runs.run_writer import RunWriter
from mlflow_spark_tools.failed_runs.store import FailedRunStore, PendingDocument
from mlflow_spark_tools.failed_runs.store_entries import (
    BEGUN,
    DONE_FORMAT,
    FORMAT,
    DocumentFile,
    DocumentGrew,
    checkpoint_name,
    checkpoint_ops,
    digest,
    parse_document,
)
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

REPLAYED, RESUMED, FAILED, RELEASED, LOST, INCOMPLETE = (
    "replayed", "resumed", "failed", "released", "lost", "incomplete")
LEFT_THE_STORE = frozenset({REPLAYED, RESUMED, FAILED})  # outcomes after which a payload is not handled again
RUNNING = "RUNNING"
PROGRESS = "progress"


class Quarantine(Exception):
    """This payload cannot be replayed; the message is the reason."""


class Incomplete(Exception):
    """The document's bytes do not hash to its name yet: its writer may still be writing it."""


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
        host = foreign_artifact_host(artifact_uri, self.replayer.tracking_uri, self.replayer.artifact_hosts)
        if host is not None:
            raise Quarantine(f"the run's artifacts go to {host[:200]}, which is not the tracking server: the uploads "
                             "would carry the replay's tracking credentials there; if that host is yours, add it "
                             "to replay.artifact_hosts")
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
    lease, the requests and the limits."""

    store: FailedRunStore
    lease: DeltaLease
    requests: TrackingRequests
    limits: ReplayLimits
    key: SigningKey | None
    trust_unsigned: bool
    owner: str
    torn_grace_seconds: float
    tracking_uri: str
    artifact_hosts: tuple[str, ...]
    _lock: threading.Lock
    _finished: set[str]
    _in_flight: InFlightBytes

    def _ledger(self, payload_id: str, run_id: str | None, experiment_id: str | None, status: str,
                error: str | None, attempts: int = 1) -> None:
        raise NotImplementedError

    def _foreign_quarantined(self) -> None:
        """Count a file that is not the package's, moved to ``failed/``."""
        raise NotImplementedError

    def _document_bytes(self, document: PendingDocument, handle: DocumentFile) -> bytes:
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

    def _read(self, document: PendingDocument, data: bytes) -> tuple[Payload, bool]:
        """The checked payload and whether its signature verified."""
        try:
            raw = parse_document(data)
        except ValueError as exc:
            raise Quarantine(str(exc)) from None
        signed = self._signature_verified(raw)
        try:
            payload = check_document(raw, document.payload_id, self.limits)
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

    def _signed_by_us(self, record: dict[str, Any]) -> bool:
        """Whether a record the replay reads back (a checkpoint, a done record) is signed with
        this replay's key; without a key, there is nothing to check."""
        return self.key is None or self.key.verify(canonical_json(record), record.get("signature"))

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

    # ---- checkpoints and the done record ---------------------------------------------

    def _progress(self, folder: PayloadFolder | None, payload: Payload) -> tuple[bool, bool, str | None, int, int]:
        """(begun, resumed, run id, requests done, attempts) from the checkpoints.

        ``begun``: ``begun.json`` exists (looked up by name). ``resumed``: any checkpoint
        exists, an earlier release's ``progress.json`` included. The requests done are the
        highest count any checkpoint can show; every checkpoint read is checked (and, with a
        key, must be signed by this replay's key for this payload).
        """
        if folder is None:
            return False, False, None, 0, 0
        begun = folder.exists(f"{PROGRESS}/{BEGUN}")
        numbered = [(ops, name) for name in folder.names(PROGRESS) if (ops := checkpoint_ops(name)) is not None]
        found = []
        try:
            if begun:
                found.append((f"{PROGRESS}/{BEGUN}", _read_checkpoint(folder, f"{PROGRESS}/{BEGUN}")))
            for _, name in sorted(numbered, reverse=True):  # the newest that holds anything
                progress = _read_checkpoint(folder, f"{PROGRESS}/{name}")
                if progress is not None:
                    found.append((f"{PROGRESS}/{name}", progress))
                    break
            found.append(("progress.json", _read_checkpoint(folder, "progress.json")))  # an earlier release's
        except PayloadError as exc:
            raise Quarantine(str(exc)) from None
        checked = []
        for where, progress in found:
            if progress is None:
                continue
            if self.key is not None and not (progress.get("payload_id") == payload.payload_id
                                             and self._signed_by_us(progress)):
                raise Quarantine(f"{where} is not signed by this replay's key for this payload (edited, or "
                                 "written by a replay without the key)")
            try:
                checked.append(check_progress(progress, payload))
            except PayloadError as exc:
                raise Quarantine(f"{where}: {exc}") from None
        if not checked:
            return begun, bool(numbered), None, 0, 0
        runs = {run_id for run_id, _, _ in checked if run_id is not None}
        if len(runs) > 1:
            raise Quarantine(f"the checkpoints name {len(runs)} different runs: {', '.join(sorted(runs))[:200]}")
        done = max(ops for _, ops, _ in checked)
        return begun, True, runs.pop() if runs else None, done, max(a for _, _, a in checked)

    def _checkpoint(self, folder: PayloadFolder, payload_id: str, name: str, run_id: str | None, done: int,
                    attempts: int) -> None:
        """Write one checkpoint: a new file, never a rewrite. One of that name written before
        by this replayer (a payload given back and taken again) says the same."""
        progress: dict[str, Any] = {"payload_id": payload_id, "run_id": run_id, "ops_done": done,
                                    "attempts": attempts, "owner": self.owner}
        if self.key is not None:
            progress["signature"] = self.key.sign(canonical_json(progress))
        try:
            folder.write_new_json(f"{PROGRESS}/{name}", progress)
        except FileExistsError:
            pass

    def _done_record(self, payload_id: str) -> dict[str, Any] | None:
        """The record of a replayed payload in ``done/``; None when there is none. A file there
        that is not a valid record of this payload (unsigned with a key, malformed, planted) is
        quarantined as foreign and does not count."""
        try:
            record = self.store.read_done(payload_id)
            problem = None if record is None else self._record_problem(payload_id, record)
        except EmptyFile:
            # a replayer killed between creating the record and writing it: the checkpoints
            # tell how far it got, and the record is written again when the payload is finished
            if self.store.remove_empty_done(payload_id):
                log.info("done/%s.json was empty (its writer was killed): removed", payload_id)
            return None
        except PayloadError as exc:
            record, problem = {}, str(exc)
        if problem is None:
            return record
        if self.store.quarantine(self.store.root / "done" / f"{payload_id}.json", payload_id,
                                 f"foreign file: done/{payload_id}.json is not a record of this payload's replay "
                                 f"({problem}); the payload is replayed"):
            self._foreign_quarantined()
        return None

    def _record_problem(self, payload_id: str, record: dict[str, Any]) -> str | None:
        """What is wrong with a done record; None if it is a valid record of this payload."""
        if record.get("payload_id") != payload_id:
            return "it names another payload"
        if record.get("format") == FORMAT:  # an earlier release moved the replayed document here
            if self.key is not None and not self._signed_by_us(record):
                return "an earlier release's document without a valid signature"
            return None
        if record.get("format") != DONE_FORMAT:
            return "not a record of this package"
        try:
            check_run_id(record.get("run_id"), "done record")
        except PayloadError as exc:
            return str(exc)
        for key in ("experiment_id", "document_sha256"):
            if record.get(key) is not None and not (isinstance(record[key], str) and len(record[key]) <= 128):
                return f"{key} is not a short string"
        for key, top in (("attempts", 1_000_000), ("replayed_at", 2**53)):
            if isinstance(record.get(key), bool) or not isinstance(record.get(key), int) or not 0 <= record[key] <= top:
                return f"{key} is not an integer from 0 to {top}"
        if not self._signed_by_us(record):
            return "not signed by this replay's key"
        return None

    def _finish(self, document: PendingDocument, payload: Payload, data: bytes, run_id: str | None,
                attempts: int, resumed: bool) -> str:
        """Write the done record, then remove the document."""
        record: dict[str, Any] = {
            "format": DONE_FORMAT, "payload_id": payload.payload_id, "run_id": run_id,
            "experiment_id": payload.run.experiment_id, "replayed_at": int(time.time() * 1000),
            "attempts": attempts, "owner": self.owner, "document_sha256": hashlib.sha256(data).hexdigest()}
        if self.key is not None:
            record["signature"] = self.key.sign(canonical_json(record))
        try:
            self.store.write_done(payload.payload_id, record)
        except FileExistsError:
            # one appeared while this replay ran (it checked before the first request): not ours
            self._done_record(payload.payload_id)
            self.store.write_done(payload.payload_id, record)
        self.store.remove(document)
        with self._lock:
            self._finished.add(payload.payload_id)
        status = RESUMED if resumed else REPLAYED
        self._ledger(payload.payload_id, run_id, payload.run.experiment_id, status, None, attempts)
        return status

    # ---- one payload -----------------------------------------------------------------

    def _replay(self, document: PendingDocument) -> str:
        try:
            handle = self.store.open_document(document)
        except FileNotFoundError:
            return LOST  # removed meanwhile
        except ValueError as exc:
            raise Quarantine(str(exc)) from None
        with self._in_flight.hold(min(handle.size, self.limits.max_document_bytes)):
            # read, then closed: a file held open cannot be removed on every FUSE mount
            with handle:
                data = self._document_bytes(document, handle)
            record = self._done_record(document.payload_id)
            if record is not None:
                return self._leftover(document, data, record)
            payload, signed = self._read(document, data)
            folder = self.store.payload_folder(document.payload_id)
            try:
                with tempfile.TemporaryDirectory(prefix="mlflow-spark-tools-replay-") as staging:
                    return self._replay_payload(document, data, payload, signed, folder, Path(staging))
            finally:
                if folder is not None:
                    folder.close()

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
                self._ledger(document.payload_id, record.get("run_id"), record.get("experiment_id"), RESUMED, None,
                             record.get("attempts") or 1)
            return RESUMED
        raise Quarantine("this payload was replayed already (it is in done/): a copy of a replayed "
                         "document is not replayed again")

    def _replay_payload(self, document: PendingDocument, data: bytes, payload: Payload, signed: bool,
                        folder: PayloadFolder | None, staging: Path) -> str:
        pid = document.payload_id
        run = payload.run
        begun, resumed, progress_run_id, progress_done, attempts = self._progress(folder, payload)
        attempts += 1
        run_id = progress_run_id or payload.run_id
        done = max(payload.ops_done, progress_done)
        ops = payload.ops
        staged = self._stage(folder, payload, done, staging)
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
            info = self._check_run(run_id, payload, trusted, [kind for kind, _ in ops[done:]])
            artifact_uri = info.get("artifact_uri")
            if info.get("status", RUNNING) != RUNNING:
                done = len(ops)  # it ended: only the end remained, and it was sent
        writer = _PayloadWriter(self, payload, signed, folder, staged, run_id, artifact_uri)
        # a payload without artifacts or models has no folder yet: its checkpoints make one
        progress = folder if folder is not None else self.store.payload_folder(pid, create=True)
        assert progress is not None
        try:
            # Written before the first request: the mark that a replay began, so that whoever
            # resumes this payload treats its requests as uncertain.
            self._checkpoint(progress, pid, checkpoint_name(done, self.owner) if begun else BEGUN, run_id, done,
                             attempts)
            for i in range(done, len(ops)):
                self.lease.check()
                kind, index = ops[i]
                writer.send(kind, index, uncertain=resumed or (uncertain_first and i == done))
                if i + 1 < len(ops):  # after the last one the done record says it all
                    self._checkpoint(progress, pid, checkpoint_name(i + 1, self.owner), writer.run_id, i + 1,
                                     attempts)
        finally:
            if progress is not folder:
                progress.close()
        return self._finish(document, payload, data, writer.run_id, attempts, resumed)

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


def _read_checkpoint(folder: PayloadFolder, relative: str) -> dict[str, Any] | None:
    """A checkpoint, or None when it is absent or empty: a replayer killed between creating it
    and writing it, which counts as not written (the requests after the newest checkpoint are
    uncertain anyway: docs/REPLAY.md, "Exactly once")."""
    try:
        return folder.read_json(relative)
    except EmptyFile:
        log.info("%s of payload %s is empty (its writer was killed): it does not count", relative,
                 folder.payload_id)
        return None
