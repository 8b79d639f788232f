"""Quarantine: a document that cannot be replayed (or any entry of ``pending/``, ``claimed/``
or ``done/`` that is not the package's) moved to ``failed/``, beside a reason file.

A reason file is never overwritten: the first reason of a payload keeps its name, later ones
are numbered (``<id>.reason.<n>.json``), and a document quarantined again goes to
``<id>.<random>.json``. A name that is not a payload id is never used as a path: it becomes
``foreign-<random>-<safe name>``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from mlflow_spark_tools.failed_runs.file_operations import exists_at, json_bytes, move_entry, write_once
from mlflow_spark_tools.failed_runs.store_entries import is_payload_id, safe_name

_MAX_REASON_FILES = 1000


def move_to_failed(name_in_source: str, source_fd: int, state: str, failed: int, payload_id: str, reason: str,
                   details: dict[str, Any] | None = None) -> bool:
    """Move the entry ``name_in_source`` of the folder ``state`` (handle ``source_fd``) to the
    ``failed`` folder (handle ``failed``) and write its reason file; False if it is gone."""
    if is_payload_id(payload_id):
        name = payload_id
    else:
        name = f"foreign-{uuid.uuid4().hex[:12]}-{safe_name(payload_id)[:80]}"
    document = f"{name}.json"
    if exists_at(document, failed):  # quarantined before: keep that file as it is
        document = f"{name}.{uuid.uuid4().hex[:8]}.json"
    try:
        move_entry(name_in_source, source_fd, document, failed)
    except FileNotFoundError:
        return False
    reason_doc = {"payload_id": payload_id, "reason": reason, "at": int(time.time() * 1000),
                  "source": f"{state}/{name_in_source}", "document": document, **(details or {})}
    data = json_bytes(reason_doc)
    for n in range(1, _MAX_REASON_FILES + 1):
        target = f"{name}.reason.json" if n == 1 else f"{name}.reason.{n}.json"
        try:
            write_once(failed, target, data)
            return True
        except FileExistsError:
            continue
    return True
