"""What a replay trusts: documents that pass the checks and carry a valid signature, records
signed with its own key, and model blobs that match their digest and signature.

The store is writable by more users than the replay job's identity (docs/REPLAY.md has the
threat model). With a signing key every document must be signed with it, and every checkpoint
and done record the replay reads back must carry its own signature; without one, nothing can be
verified, and only ``trust_unsigned`` lets unsigned models and local artifact roots through.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from mlflow_spark_tools.config import ReplayLimits
from mlflow_spark_tools.failed_runs.document import (
    ModelEntry,
    Payload,
    PayloadError,
    canonical_json,
    check_document,
)
from mlflow_spark_tools.failed_runs.files import PayloadFolder
from mlflow_spark_tools.failed_runs.replay_outcomes import Quarantine
from mlflow_spark_tools.failed_runs.store_entries import parse_document

if TYPE_CHECKING:
    from mlflow_spark_tools.failed_runs.signing import SigningKey


class Verifier:
    """Checks what a replay reads from the store, and signs what it writes there.

    Args:
        key: verifies documents and model blobs, and signs the replay's own records.
        trust_unsigned: accept documents and model blobs without a signature.
        limits: sizes and counts a payload may have.
    """

    def __init__(self, key: SigningKey | None, trust_unsigned: bool, limits: ReplayLimits) -> None:
        self.key = key
        self.trust_unsigned = trust_unsigned
        self.limits = limits

    def read(self, payload_id: str, data: bytes) -> tuple[Payload, bool]:
        """The checked payload of a document's bytes and whether its signature verified."""
        try:
            raw = parse_document(data)
        except ValueError as exc:
            raise Quarantine(str(exc)) from None
        signed = self._signature_verified(raw)
        try:
            payload = check_document(raw, payload_id, self.limits)
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

    def signed_by_us(self, record: dict[str, Any]) -> bool:
        """Whether a record the replay reads back (a checkpoint, a done record, the lease
        marker) is signed with this replay's key; without a key, there is nothing to check."""
        return self.key is None or self.key.verify(canonical_json(record), record.get("signature"))

    def sign(self, record: dict[str, Any]) -> None:
        """Add this replay's signature to a record it writes (nothing without a key)."""
        if self.key is not None:
            record["signature"] = self.key.sign(canonical_json(record))

    def verified_blob(self, folder: PayloadFolder | None, entry: ModelEntry) -> bytes:
        """A model's pickled blob, once its digest matches and (unless unsigned models are
        trusted) its signature verifies."""
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
