"""The names of a failed-run store's entries (payload ids, claim files) and reading one run
document: its format and version checked, no more bytes read than the file held when opened."""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from typing import Any

FORMAT = "mlflow-spark-tools/failed-run"
VERSION = 1
_ID = re.compile(r"[0-9]{13}-[A-Za-z0-9_.-]{1,64}-[0-9]{1,10}-[0-9a-f]{24}", re.ASCII)
_OWNER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,80}", re.ASCII)
_OWNER = re.compile(r"[^A-Za-z0-9_.-]")


def new_payload_id() -> str:
    """A collision-free, time-ordered payload id."""
    host = _OWNER.sub("_", socket.gethostname())[:64] or "host"
    return f"{int(time.time() * 1000):013d}-{host}-{os.getpid()}-{uuid.uuid4().hex[:24]}"


def is_owner_name(text: str) -> bool:
    """Whether ``text`` can be the owner part of a claim file name."""
    return _OWNER_NAME.fullmatch(text) is not None and text not in (".", "..")


def safe_name(text: str) -> str:
    """``text`` with every character that is not safe in a file name replaced by ``_``."""
    return _OWNER.sub("_", text)


def is_payload_id(text: str) -> bool:
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def new_owner() -> str:
    """A replayer's identity for its claims."""
    host = _OWNER.sub("_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def claim_parts(entry: str) -> tuple[str, str] | None:
    """(payload id, owner) of a well-formed claim file name, else None."""
    if not entry.endswith(".json") or "@" not in entry:
        return None
    payload_id, owner = entry[:-5].split("@", 1)
    if not is_payload_id(payload_id) or not _OWNER_NAME.fullmatch(owner) or owner in (".", ".."):
        return None
    return payload_id, owner


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


class DocumentFile:
    """An open run document: its size is known before its bytes are read, and no more bytes
    than that size are ever read (a file that grows or is swapped meanwhile is refused)."""

    def __init__(self, fd: int, size: int) -> None:
        self._file = os.fdopen(fd, "rb")
        self.size = size

    def read(self, max_bytes: int | None = None) -> dict[str, Any]:
        if max_bytes is not None and self.size > max_bytes:
            raise ValueError(f"over the limits: the document holds {self.size} bytes, the limit is "
                             f"{max_bytes} (replay.limits.max_document_bytes)")
        data = self._file.read(self.size + 1)
        if len(data) > self.size:
            raise ValueError("the document grew while it was read")
        return parse_document(data)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> DocumentFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
