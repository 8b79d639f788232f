"""A durable store of runs that could not be logged, on DBFS, a Volume or a local directory.

Layout under the root::

    data/<payload_id>/            artifacts, signed model blobs, progress.json (replay checkpoint)
    pending/<payload_id>.json     run documents waiting for replay
    claimed/<payload_id>@<owner>.json   documents a replayer holds (its lease: the file's mtime)
    done/<payload_id>.json        replayed; data/<payload_id>/result.json holds the run id
    failed/<payload_id>.json      quarantined, beside failed/<payload_id>.reason.json
    tmp/                          documents being written

A payload appears in ``pending`` only when complete: its data files are written first, then
the document is written under ``tmp/`` and renamed into ``pending/``. Every state change is
the rename of one file, which is atomic on local disks and on the DBFS and Volumes fuse mounts,
so two replayers can never both claim a document: the second rename finds no source.

Payload ids hold the time, the host, the process and 12 random bytes: collision-free across
thousands of tasks on many hosts. Run documents are JSON; only models are pickled, and those
blobs carry an HMAC signature (:mod:`mlflow_spark_tools.signing`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_spark_tools.paths import to_fuse_path

FORMAT = "mlflow-spark-tools/failed-run"
VERSION = 1
STATES = ("pending", "claimed", "done", "failed")
_ID = re.compile(r"^[0-9]{13}-[A-Za-z0-9_.-]{1,64}-[0-9]{1,10}-[0-9a-f]{24}$")
_OWNER = re.compile(r"[^A-Za-z0-9_.-]")


def new_payload_id() -> str:
    """A collision-free, time-ordered payload id."""
    host = _OWNER.sub("_", socket.gethostname())[:64] or "host"
    return f"{int(time.time() * 1000):013d}-{host}-{os.getpid()}-{uuid.uuid4().hex[:24]}"


def is_payload_id(text: str) -> bool:
    return bool(_ID.match(text))


def new_owner() -> str:
    """A replayer's identity for its claims."""
    host = _OWNER.sub("_", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _write_json_atomic(path: Path, data: Any, tmp_dir: Path) -> None:
    tmp = tmp_dir / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, allow_nan=True, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class Claim:
    """A replayer's hold on one payload: the claimed document's path."""

    payload_id: str
    owner: str
    path: Path


class FailedRunStore:
    """The folders of a failed-run store; see the module docstring.

    Args:
        root: a local, ``/dbfs/...``, ``dbfs:/...`` or ``/Volumes/...`` directory.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(to_fuse_path(os.fspath(root)))

    def ensure(self) -> FailedRunStore:
        for name in (*STATES, "data", "tmp"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        return self

    def data_dir(self, payload_id: str) -> Path:
        return self.root / "data" / payload_id

    # ---- writing ---------------------------------------------------------------------

    def publish(self, payload_id: str, document: dict[str, Any]) -> Path:
        """Make a payload visible in ``pending`` (its data files must be written already)."""
        self.ensure()
        path = self.root / "pending" / f"{payload_id}.json"
        _write_json_atomic(path, document, self.root / "tmp")
        return path

    def copy_into(self, payload_id: str, source: Path, relative: str) -> None:
        """Copy a file or directory into the payload's data folder, streaming (no full read)."""
        target = self.data_dir(payload_id) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)

    def write_blob(self, payload_id: str, relative: str, data: bytes) -> None:
        target = self.data_dir(payload_id) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    # ---- listing and claiming ----------------------------------------------------------

    def ids(self, state: str) -> list[str]:
        """Payload ids in a state, oldest first (ids start with their creation time)."""
        folder = self.root / state
        if not folder.is_dir():
            return []
        out = []
        for entry in os.listdir(folder):
            if entry.endswith(".json") and not entry.endswith(".reason.json"):
                out.append(entry[:-5].split("@", 1)[0])
        return sorted(out)

    def claims(self) -> list[tuple[Claim, float]]:
        """Every claimed document with the time of its owner's last heartbeat."""
        folder = self.root / "claimed"
        if not folder.is_dir():
            return []
        out = []
        for entry in os.listdir(folder):
            if not entry.endswith(".json") or "@" not in entry:
                continue
            payload_id, owner = entry[:-5].split("@", 1)
            path = folder / entry
            try:
                out.append((Claim(payload_id, owner, path), path.stat().st_mtime))
            except FileNotFoundError:
                continue
        return out

    def claim(self, payload_id: str, owner: str) -> Claim | None:
        """Take a pending payload; None if another replayer took it first."""
        return self._rename_to_claim(self.root / "pending" / f"{payload_id}.json", payload_id, owner)

    def take_over(self, stale: Claim, owner: str) -> Claim | None:
        """Take a claim whose lease expired; None if someone else did first."""
        return self._rename_to_claim(stale.path, stale.payload_id, owner)

    def _rename_to_claim(self, source: Path, payload_id: str, owner: str) -> Claim | None:
        """One rename decides who holds a payload; the winner's lease starts now."""
        target = self.root / "claimed" / f"{payload_id}@{owner}.json"
        try:
            os.rename(source, target)
        except FileNotFoundError:
            return None
        os.utime(target)
        return Claim(payload_id, owner, target)

    def holds(self, claim: Claim) -> bool:
        """Whether the claim is still this owner's (no one took the lease over)."""
        return claim.path.exists()

    def heartbeat(self, claim: Claim) -> bool:
        """Renew the lease; False when it was lost."""
        try:
            os.utime(claim.path)
            return True
        except FileNotFoundError:
            return False

    def release(self, claim: Claim) -> None:
        """Give a payload back to ``pending`` (for example after too many 429s)."""
        try:
            os.rename(claim.path, self.root / "pending" / f"{claim.payload_id}.json")
        except FileNotFoundError:
            pass

    # ---- reading ---------------------------------------------------------------------

    def read_document(self, path: Path) -> dict[str, Any]:
        """Parse a run document; raises ``ValueError`` naming what is wrong."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON (corrupt or truncated): {exc}") from None
        except UnicodeDecodeError:
            raise ValueError("not a text file") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a failed-run document of this package (foreign file)")
        version = data.get("version")
        if not isinstance(version, int) or version > VERSION or version < 1:
            raise ValueError(f"format version {version!r} is not supported (this reader: {VERSION})")
        return data

    def read_progress(self, payload_id: str) -> dict[str, Any]:
        path = self.data_dir(payload_id) / "progress.json"
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def write_progress(self, payload_id: str, progress: dict[str, Any]) -> None:
        """Checkpoint replay progress (atomic replace)."""
        folder = self.data_dir(payload_id)
        folder.mkdir(parents=True, exist_ok=True)
        self.ensure()
        _write_json_atomic(folder / "progress.json", progress, self.root / "tmp")

    # ---- finishing -------------------------------------------------------------------

    def finish(self, claim: Claim, result: dict[str, Any]) -> bool:
        """Move a replayed payload to ``done`` with its result; False if the lease was lost."""
        self.ensure()
        _write_json_atomic(self.data_dir(claim.payload_id) / "result.json", result, self.root / "tmp")
        try:
            os.rename(claim.path, self.root / "done" / f"{claim.payload_id}.json")
            return True
        except FileNotFoundError:
            return False

    def quarantine(self, path: Path, payload_id: str, reason: str, details: dict[str, Any] | None = None) -> None:
        """Move a document that cannot be replayed to ``failed`` with a reason file."""
        self.ensure()
        name = payload_id if is_payload_id(payload_id) else f"foreign-{uuid.uuid4().hex[:12]}-{_OWNER.sub('_', payload_id)[:80]}"
        reason_doc = {"payload_id": payload_id, "reason": reason, "at": int(time.time() * 1000),
                      "source": path.name, **(details or {})}
        _write_json_atomic(self.root / "failed" / f"{name}.reason.json", reason_doc, self.root / "tmp")
        try:
            os.rename(path, self.root / "failed" / f"{name}.json")
        except FileNotFoundError:
            pass

    def result(self, payload_id: str) -> dict[str, Any] | None:
        path = self.data_dir(payload_id) / "result.json"
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def foreign_files(self) -> list[Path]:
        """Files in ``pending`` that are not run documents of this package (by name)."""
        folder = self.root / "pending"
        if not folder.is_dir():
            return []
        return [
            folder / e for e in sorted(os.listdir(folder))
            if not (e.endswith(".json") and is_payload_id(e[:-5]))
        ]
