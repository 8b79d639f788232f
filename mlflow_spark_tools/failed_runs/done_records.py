"""The end of a payload's replay: its record in ``done/<payload_id>.json`` (the run, the
document's SHA-256; signed with the key), written before the document is removed, and read
back, checked, before any payload is replayed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from mlflow_spark_tools.failed_runs.document import Payload, PayloadError, check_run_id
from mlflow_spark_tools.failed_runs.file_operations import EmptyFile
from mlflow_spark_tools.failed_runs.replay_outcomes import PAYLOAD_REPLAY_LOGGER
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import DONE_FORMAT, FORMAT
from mlflow_spark_tools.failed_runs.verification import Verifier

log = logging.getLogger(PAYLOAD_REPLAY_LOGGER)


class DoneRecords:
    """The records of replayed payloads in a store's ``done/``.

    Args:
        store: the failed-run store.
        verifier: checks the records read back and signs the ones written.
        owner: the replayer that writes them.
        on_foreign: told of each file in ``done/`` quarantined as foreign.
    """

    def __init__(self, store: FailedRunStore, verifier: Verifier, owner: str, on_foreign: Callable[[], None]) -> None:
        self.store = store
        self.verifier = verifier
        self.owner = owner
        self.on_foreign = on_foreign

    def read(self, payload_id: str) -> dict[str, Any] | None:
        """The record of a replayed payload in ``done/``; None when there is none. A file there
        that is not a valid record of this payload (unsigned with a key, malformed, planted) is
        quarantined as foreign and does not count."""
        try:
            record = self.store.read_done(payload_id)
            problem = None if record is None else self.problem(payload_id, record)
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
            self.on_foreign()
        return None

    def problem(self, payload_id: str, record: dict[str, Any]) -> str | None:
        """What is wrong with a done record; None if it is a valid record of this payload."""
        if record.get("payload_id") != payload_id:
            return "it names another payload"
        if record.get("format") == FORMAT:  # an earlier release moved the replayed document here
            if self.verifier.key is not None and not self.verifier.signed_by_us(record):
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
        if not self.verifier.signed_by_us(record):
            return "not signed by this replay's key"
        return None

    def write(self, payload: Payload, data: bytes, run_id: str | None, attempts: int) -> None:
        """Write the record of a payload replayed from the document ``data``."""
        record: dict[str, Any] = {
            "format": DONE_FORMAT, "payload_id": payload.payload_id, "run_id": run_id,
            "experiment_id": payload.run.experiment_id, "replayed_at": int(time.time() * 1000),
            "attempts": attempts, "owner": self.owner, "document_sha256": hashlib.sha256(data).hexdigest()}
        self.verifier.sign(record)
        try:
            self.store.write_done(payload.payload_id, record)
        except FileExistsError:
            # one appeared while this replay ran (it checked before the first request): not ours
            self.read(payload.payload_id)
            self.store.write_done(payload.payload_id, record)
