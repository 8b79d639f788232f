"""The names of a failed-run store's entries and reading one run document.

A run document is written once, straight into ``pending/``, under a name that holds the
payload id, the time it was written and the first 32 hex digits of the SHA-256 of its bytes::

    pending/<payload_id>.<written at, ms since epoch>.<digest>.json

so a reader knows a document is whole without a rename: bytes that do not hash to the name
are a document still being written (or one whose writer was killed half way). A plain
``pending/<payload_id>.json`` (a store of an earlier release, or a document put back by hand)
is taken as whole. Payload ids hold the time, the host, the process and 12 random bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

FORMAT = "mlflow-spark-tools/failed-run"
VERSION = 1
DONE_FORMAT = "mlflow-spark-tools/replayed"
DIGEST_HEX = 32
_ID = re.compile(r"[0-9]{13}-[A-Za-z0-9_.-]{1,64}-[0-9]{1,10}-[0-9a-f]{24}", re.ASCII)
_OWNER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}", re.ASCII)
_OWNER = re.compile(r"[^A-Za-z0-9_.-]")
_WRITTEN = re.compile(r"[0-9]{13}", re.ASCII)
_DIGEST = re.compile(r"[0-9a-f]{32}", re.ASCII)
_CHECKPOINT = re.compile(r"([0-9]{6})-([A-Za-z0-9_.-]{1,80})\.json", re.ASCII)
BEGUN = "begun.json"  # the first checkpoint a payload's replay ever writes


def new_payload_id() -> str:
    """A collision-free, time-ordered payload id."""
    host = _OWNER.sub("_", socket.gethostname())[:64] or "host"
    return f"{int(time.time() * 1000):013d}-{host}-{os.getpid()}-{uuid.uuid4().hex[:24]}"


def is_owner_name(text: str) -> bool:
    """Whether ``text`` can name a replayer in a file name."""
    return isinstance(text, str) and _OWNER_NAME.fullmatch(text) is not None and text not in (".", "..")


def safe_name(text: str) -> str:
    """``text`` with every character that is not safe in a file name replaced by ``_``."""
    return _OWNER.sub("_", text)


def is_payload_id(text: str) -> bool:
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def new_owner() -> str:
    """A replayer's identity: its host, process and a random part."""
    host = _OWNER.sub("_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def digest(data: bytes) -> str:
    """The digest a document's name carries."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_HEX]


def document_name(payload_id: str, written_ms: int, data: bytes) -> str:
    """The name of a run document in ``pending/``."""
    return f"{payload_id}.{written_ms:013d}.{digest(data)}.json"


@dataclass(frozen=True)
class DocumentName:
    """What a document's name says: its payload, and for a document written whole by the
    collector, when it was written and the digest of its bytes (None for a plain name)."""

    payload_id: str
    written_ms: int | None = None
    digest: str | None = None


@dataclass(frozen=True)
class PendingDocument:
    """A run document waiting for replay: ``pending/<name>``, or ``claimed/<name>`` (a claim of
    an earlier release's replayer).

    Attributes:
        written_ms: when the collector wrote it, from its name; None for a plain name.
        digest: what its bytes must hash to when whole (None for a plain name).
    """

    payload_id: str
    state: str
    name: str
    written_ms: int | None = None
    digest: str | None = None


def parse_document_name(entry: str) -> DocumentName | None:
    """The parts of ``<id>.<ms>.<digest>.json`` or ``<id>.json``; None for any other name."""
    if not entry.endswith(".json"):
        return None
    stem = entry[:-5]
    if is_payload_id(stem):
        return DocumentName(stem)
    parts = stem.rsplit(".", 2)
    if len(parts) == 3 and is_payload_id(parts[0]) and _WRITTEN.fullmatch(parts[1]) and _DIGEST.fullmatch(parts[2]):
        return DocumentName(parts[0], int(parts[1]), parts[2])
    return None


def claim_parts(entry: str) -> tuple[str, str] | None:
    """(payload id, owner) of ``claimed/<id>@<owner>.json``, a claim of an earlier release's
    replayer (which claimed by renaming); None for any other name."""
    if not entry.endswith(".json") or "@" not in entry:
        return None
    payload_id, owner = entry[:-5].split("@", 1)
    if not is_payload_id(payload_id) or not is_owner_name(owner):
        return None
    return payload_id, owner


def checkpoint_name(ops_done: int, owner: str) -> str:
    """The name of the checkpoint a replayer writes after ``ops_done`` requests."""
    return f"{ops_done:06d}-{owner}.json"


def checkpoint_ops(entry: str) -> int | None:
    """The request count a checkpoint's name says; None for other names."""
    match = _CHECKPOINT.fullmatch(entry)
    return int(match.group(1)) if match else None


def parse_document(data: bytes) -> dict[str, Any]:
    """A run document from its bytes; raises ``ValueError`` naming what is wrong."""
    try:
        document = json.loads(data)
    except UnicodeDecodeError:
        raise ValueError("not a text file") from None
    except RecursionError:
        raise ValueError("not a run document: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON (corrupt or truncated): {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError("not a failed-run document of this package (foreign file)")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version > VERSION or version < 1:
        raise ValueError(f"format version {str(version)[:20]} is not supported (this reader: {VERSION})")
    return document


class DocumentGrew(ValueError):
    """The document grew while it was read: its writer is still at work."""


class DocumentFile:
    """An open run document: its size is known before its bytes are read, and no more bytes
    than that size are ever read (a file that grows or is swapped meanwhile is refused)."""

    def __init__(self, fd: int, size: int) -> None:
        self._file = os.fdopen(fd, "rb")
        self.size = size

    def read_bytes(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and self.size > max_bytes:
            raise ValueError(f"over the limits: the document holds {self.size} bytes, the limit is "
                             f"{max_bytes} (replay.limits.max_document_bytes)")
        data = self._file.read(self.size + 1)
        if len(data) > self.size:
            raise DocumentGrew("the document grew while it was read")
        return data

    def read(self, max_bytes: int | None = None) -> dict[str, Any]:
        return parse_document(self.read_bytes(max_bytes))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> DocumentFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
