"""Changing a failed-run store's files as its other writers can: an attacker with write access,
an operator putting a document back. A file is never rewritten in place (object storage cannot):
it is removed and written anew, and a changed document gets the name its new bytes hash to."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import document_name


def document_path(store_root: Path, payload_id: str) -> Path:
    """The path of the document of ``payload_id`` waiting in the store."""
    store = FailedRunStore(store_root)
    document = store.document_of(payload_id)
    if document is None:
        raise AssertionError(f"no document of {payload_id} waits in {store_root}")
    return store.path_of(document)


def read_document(store_root: Path, payload_id: str) -> dict:
    return json.loads(document_path(store_root, payload_id).read_text())


def replace_file(path: Path, data: bytes | str) -> None:
    """Remove ``path`` (if there) and write it anew."""
    path.unlink(missing_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)


def replace_document(store_root: Path, payload_id: str, document: dict | bytes | str,
                     written_ms: int | None = None) -> Path:
    """Swap the document of ``payload_id`` (if one waits) for ``document`` (a dict is written as
    JSON), named by the digest of its bytes; returns its path."""
    data = json.dumps(document).encode() if isinstance(document, dict) else \
        document.encode() if isinstance(document, str) else document
    waiting = FailedRunStore(store_root).document_of(payload_id)
    if waiting is not None:
        FailedRunStore(store_root).path_of(waiting).unlink()
    new = Path(store_root) / "pending" / document_name(
        payload_id, written_ms if written_ms is not None else int(time.time() * 1000), data)
    replace_file(new, data)
    return new


def move(source: Path, target: Path) -> None:
    """Move a file as an operator on object storage does (``dbutils.fs.mv``): copy, then remove."""
    target.write_bytes(source.read_bytes())
    source.unlink()
