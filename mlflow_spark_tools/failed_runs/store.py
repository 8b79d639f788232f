"""A durable store of runs that could not be logged, on DBFS, a Volume or a local directory.

Layout under the root::

    data/<payload_id>/            artifacts, signed model blobs, progress.json (replay checkpoint)
    pending/<payload_id>.json     run documents waiting for replay
    claimed/<payload_id>@<owner>.json   documents a replayer holds (its lease: the file's mtime)
    done/<payload_id>.json        replayed; data/<payload_id>/result.json holds the run id
                                  (both removed by :meth:`FailedRunStore.prune_replayed` once
                                  older than the retention period)
    failed/<payload_id>.json      quarantined, beside failed/<payload_id>.reason.json
    tmp/                          documents being written

A payload appears in ``pending`` only when complete: its data files are written first, then
the document is written under ``tmp/`` and renamed into ``pending/``. Every state change is
the rename of one file, which is atomic on local disks and on the DBFS and Volumes fuse mounts,
so two replayers can never both claim a document: the second rename finds no source.

The store is shared storage that other users can write, so it is read as untrusted: its
folders are opened once, without following links, and every rename, listing and file access
happens relative to those handles (a folder swapped for a link later redirects nothing);
names that are not payload ids or claims of this package are never used as paths; documents
are opened without following links and refused unread above a size limit; a reason file is
never overwritten (the first reason keeps its name, later ones are numbered).

Payload ids hold the time, the host, the process and 12 random bytes: collision-free across
thousands of tasks on many hosts. Run documents are JSON; only models are pickled, and those
blobs carry an HMAC signature (:mod:`mlflow_spark_tools.failed_runs.signing`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_spark_tools.databricks.paths import to_fuse_path
from mlflow_spark_tools.errors import InvalidStoreError
from mlflow_spark_tools.failed_runs.document import PayloadError
from mlflow_spark_tools.failed_runs.files import (
    FILE_FLAGS,
    ManifestRow,
    PayloadFolder,
    copy_tree_hashed,
    exists_at,
    link_first,
    open_dir,
)
from mlflow_spark_tools.failed_runs.store_entries import (
    DocumentFile,
    claim_parts,
    is_owner_name,
    is_payload_id,
    safe_name,
)

STATES = ("pending", "claimed", "done", "failed")
FOLDERS = (*STATES, "data", "tmp")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_MAX_REASON_FILES = 1000


@dataclass
class PruneResult:
    """What :meth:`FailedRunStore.prune_replayed` removed (or, in a dry run, would remove)."""

    payloads: int = 0
    bytes: int = 0
    kept_recent: int = 0
    errors: list[str] = field(default_factory=list)  # payloads that could not be removed, and why
    untouched: dict[str, int] = field(default_factory=dict)  # payloads pending, claimed, quarantined

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pruned": self.payloads, "pruned_bytes": self.bytes,
                               "kept_recent": self.kept_recent, "untouched": self.untouched}
        if self.errors:
            out["prune_errors"] = self.errors[:20]
            out["prune_error_count"] = len(self.errors)
        return out


@dataclass(frozen=True)
class Claim:
    """A replayer's hold on one payload: the claimed document's path."""

    payload_id: str
    owner: str
    path: Path


class FailedRunStore:
    """The folders of a failed-run store; see the module docstring.

    Use it as a context manager, or call :meth:`close`, to release the folder handles.

    Args:
        root: a local, ``/dbfs/...``, ``dbfs:/...`` or ``/Volumes/...`` directory.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(to_fuse_path(os.fspath(root)))
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def ensure(self) -> FailedRunStore:
        """Create the folders that are missing and open every folder without following links.

        Raises:
            InvalidStoreError: a folder of the store is a link or not a directory.
        """
        with self._lock:
            if self._fds:
                return self
            self.root.mkdir(parents=True, exist_ok=True)
            # the root is the operator's choice and may be a link; what is below it is not
            root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
            fds: dict[str, int] = {}
            try:
                for name in FOLDERS:
                    try:
                        os.mkdir(name, 0o755, dir_fd=root_fd)
                    except FileExistsError:
                        pass
                    fds[name] = open_dir(name, root_fd, f"{name}/")
            except PayloadError as exc:
                for fd in fds.values():
                    os.close(fd)
                raise InvalidStoreError(
                    f"The failed-run store {self.root} is not safe to use: {exc}. Only this package "
                    "writes its folders; remove what replaced the folder and run again."
                ) from None
            finally:
                os.close(root_fd)
            self._fds = fds
        return self

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> FailedRunStore:
        return self.ensure()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _fd(self, folder: str) -> int:
        return self.ensure()._fds[folder]

    def exists_at(self) -> bool:
        return bool(self._fds) or self.root.is_dir()

    def data_dir(self, payload_id: str) -> Path:
        """The path of a payload's data folder (for display and for the collector's writes)."""
        if not is_payload_id(payload_id):
            raise ValueError(f"{payload_id[:80]!r} is not a payload id")
        return self.root / "data" / payload_id

    def payload_folder(self, payload_id: str, *, create: bool = False) -> PayloadFolder | None:
        """A payload's data folder held open without following links; None if it is missing."""
        if not is_payload_id(payload_id):
            raise ValueError(f"{payload_id[:80]!r} is not a payload id")
        return PayloadFolder.open(self._fd("data"), payload_id, create=create)

    # ---- writing (the collector) ---------------------------------------------------------

    def publish(self, payload_id: str, document: dict[str, Any]) -> Path:
        """Make a payload visible in ``pending`` (its data files must be written already)."""
        name = f"{payload_id}.json"
        self._write_json(self._fd("tmp"), name, document, self._fd("pending"))
        return self.root / "pending" / name

    def copy_into(self, payload_id: str, source: Path, relative: str) -> list[ManifestRow]:
        """Copy a file or directory into the payload's data folder; returns its manifest."""
        target = self.data_dir(payload_id) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return copy_tree_hashed(source, target)

    def write_blob(self, payload_id: str, relative: str, data: bytes) -> None:
        target = self.data_dir(payload_id) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _write_json(self, tmp_fd: int, name: str, data: Any, target_fd: int, *, exclusive: bool = False) -> bool:
        """Write ``name`` into the folder of ``target_fd`` atomically; with ``exclusive`` only if
        no file of that name exists (False then)."""
        tmp = f".{name}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o644, dir_fd=tmp_fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, allow_nan=True, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            if not exclusive:
                os.replace(tmp, name, src_dir_fd=tmp_fd, dst_dir_fd=target_fd)
                return True
            return link_first(tmp, name, tmp_fd, target_fd, data)
        finally:
            try:
                os.unlink(tmp, dir_fd=tmp_fd)
            except FileNotFoundError:
                pass

    # ---- listing and claiming ----------------------------------------------------------

    def _entries(self, state: str) -> list[str]:
        if not self.exists_at():
            return []
        return os.listdir(self._fd(state))

    def ids(self, state: str) -> list[str]:
        """Payload ids in a state, oldest first (ids start with their creation time)."""
        out = []
        for entry in self._entries(state):
            if state == "claimed":
                parts = claim_parts(entry)
                if parts is not None:
                    out.append(parts[0])
            elif entry.endswith(".json") and is_payload_id(entry[:-5]):
                out.append(entry[:-5])
        return sorted(out)

    def claims(self) -> list[tuple[Claim, float]]:
        """Every well-formed claim with the time of its owner's last heartbeat."""
        out = []
        folder = self.root / "claimed"
        for entry in self._entries("claimed"):
            parts = claim_parts(entry)
            if parts is None:
                continue
            try:
                mtime = os.stat(entry, dir_fd=self._fd("claimed"), follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            out.append((Claim(parts[0], parts[1], folder / entry), mtime))
        return out

    def claim(self, payload_id: str, owner: str) -> Claim | None:
        """Take a pending payload; None if another replayer took it first."""
        return self._rename_to_claim("pending", f"{payload_id}.json", payload_id, owner)

    def take_over(self, stale: Claim, owner: str) -> Claim | None:
        """Take a claim whose lease expired; None if someone else did first."""
        return self._rename_to_claim("claimed", stale.path.name, stale.payload_id, owner)

    def _rename_to_claim(self, state: str, source: str, payload_id: str, owner: str) -> Claim | None:
        """One rename decides who holds a payload; the winner's lease starts now."""
        if not is_payload_id(payload_id) or not is_owner_name(owner):
            raise ValueError(f"not a claim of a payload: {payload_id[:80]!r}@{owner[:80]!r}")
        target = f"{payload_id}@{owner}.json"
        claimed = self._fd("claimed")
        if exists_at(target, claimed):
            return None  # a rename would replace it: never two holds of one name
        try:
            os.rename(source, target, src_dir_fd=self._fd(state), dst_dir_fd=claimed)
        except FileNotFoundError:
            return None
        self._touch(target)
        return Claim(payload_id, owner, self.root / "claimed" / target)

    def _touch(self, name: str) -> bool:
        try:
            os.utime(name, dir_fd=self._fd("claimed"), follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def is_done(self, payload_id: str) -> bool:
        """Whether ``done/`` holds a document of this payload."""
        return exists_at(f"{payload_id}.json", self._fd("done"))

    def holds(self, claim: Claim) -> bool:
        """Whether the claim is still this owner's (no one took the lease over)."""
        try:
            os.stat(claim.path.name, dir_fd=self._fd("claimed"), follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def heartbeat(self, claim: Claim) -> bool:
        """Renew the lease; False when it was lost."""
        return self._touch(claim.path.name)

    def release(self, claim: Claim) -> None:
        """Give a payload back to ``pending`` (for example after a crash of its replay)."""
        try:
            os.rename(claim.path.name, f"{claim.payload_id}.json",
                      src_dir_fd=self._fd("claimed"), dst_dir_fd=self._fd("pending"))
        except FileNotFoundError:
            pass

    def foreign_files(self, state: str = "pending") -> list[Path]:
        """Entries of ``pending`` or ``claimed`` that are not documents or claims of this package
        (by name): never replayed, never used as paths."""
        out = []
        for entry in sorted(self._entries(state)):
            if state == "claimed":
                known = claim_parts(entry) is not None
            else:
                known = entry.endswith(".json") and is_payload_id(entry[:-5])
            if not known and not entry.startswith(".nfs"):
                out.append(self.root / state / entry)
        return out

    # ---- reading ---------------------------------------------------------------------

    def open_document(self, path: Path) -> DocumentFile:
        """A run document opened without following a link, with its size known before it is read.

        Raises:
            FileNotFoundError: the document is gone (another replayer moved it).
            ValueError: a link, not a regular file, or a file with other hard links.
        """
        state = path.parent.name
        dir_fd = self._fd(state) if state in STATES and path.parent == self.root / state else None
        try:
            fd = os.open(path.name if dir_fd is not None else str(path), FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ValueError("the document is a symbolic link, not a file") from None
            if exc.errno in (errno.ENXIO, errno.ENODEV):
                raise ValueError("the document is not a regular file") from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            os.close(fd)
            raise ValueError("the document is not a regular file" if not stat.S_ISREG(info.st_mode)
                             else "the document has other hard links: not a file this package wrote")
        return DocumentFile(fd, info.st_size)

    def read_document(self, path: Path, max_bytes: int | None = None) -> dict[str, Any]:
        """Parse a run document (see :meth:`open_document`); raises ``ValueError`` naming what is
        wrong (over ``max_bytes``, corrupt, foreign, newer version)."""
        with self.open_document(path) as document:
            return document.read(max_bytes)

    def read_progress(self, payload_id: str) -> dict[str, Any]:
        """The replay checkpoint of a payload ({} if none).

        Raises:
            PayloadError: the folder or the file is a link, special, too large or not JSON.
        """
        folder = self.payload_folder(payload_id)
        if folder is None:
            return {}
        with folder:
            return folder.read_json("progress.json") or {}

    def write_progress(self, payload_id: str, progress: dict[str, Any]) -> None:
        """Checkpoint replay progress (atomic replace, never through a link)."""
        folder = self.payload_folder(payload_id, create=True)
        assert folder is not None
        with folder:
            folder.write_json("progress.json", progress)

    def result(self, payload_id: str) -> dict[str, Any] | None:
        """What the replay of a payload recorded (its run id), or None."""
        if not self.exists_at():
            return None
        try:
            folder = self.payload_folder(payload_id)
        except PayloadError:
            return None
        if folder is None:
            return None
        with folder:
            try:
                return folder.read_json("result.json")
            except PayloadError:
                return None

    # ---- finishing -------------------------------------------------------------------

    def finish(self, claim: Claim, result: dict[str, Any]) -> bool:
        """Move a replayed payload to ``done`` with its result; False if the lease was lost."""
        if not self.holds(claim):
            return False
        folder = self.payload_folder(claim.payload_id, create=True)
        assert folder is not None
        with folder:
            folder.write_json("result.json", result)
        try:
            os.rename(claim.path.name, f"{claim.payload_id}.json",
                      src_dir_fd=self._fd("claimed"), dst_dir_fd=self._fd("done"))
            return True
        except FileNotFoundError:
            return False

    # ---- retention -----------------------------------------------------------------------

    def prune_replayed(self, older_than_seconds: float, *, dry_run: bool = False,
                       now: float | None = None) -> PruneResult:
        """Remove what replayed payloads leave behind once older than the retention period.

        For every payload in ``done/`` whose document has not changed for ``older_than_seconds``
        (its last heartbeat, about when it finished): ``data/<id>/`` (artifact copies, model
        blobs, progress and result) and then ``done/<id>.json``. The replay ledger table keeps
        the payload-to-run record. Nothing pending, claimed or quarantined is touched, nor a
        data folder without a replayed document. Removal works on the folder handles and never
        follows a link.
        """
        result = PruneResult()
        if not self.exists_at():
            return result
        if not math.isfinite(older_than_seconds) or older_than_seconds < 0:
            raise ValueError(f"a retention of {older_than_seconds!r} seconds")
        now = time.time() if now is None else now
        done_fd, data_fd = self._fd("done"), self._fd("data")
        # a payload also pending, claimed or quarantined (a copy put back, a planted document)
        # is not only replayed: its data stays
        listed = {state: self.ids(state) for state in ("pending", "claimed", "failed")}
        result.untouched = {state: len(ids) for state, ids in listed.items()}
        elsewhere = {i for ids in listed.values() for i in ids}
        for payload_id in self.ids("done"):
            if payload_id in elsewhere:
                continue
            # An id starts with its creation time (ms), and a payload is replayed after it was
            # created: a young id is kept without a stat (thousands of them on a fuse mount).
            if now - int(payload_id.split("-", 1)[0]) / 1000.0 < older_than_seconds:
                result.kept_recent += 1
                continue
            try:
                info = os.stat(f"{payload_id}.json", dir_fd=done_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            if now - info.st_mtime < older_than_seconds:
                result.kept_recent += 1
                continue
            try:
                size = info.st_size + _tree_size(payload_id, data_fd)
                if not dry_run:
                    _remove_entry(payload_id, data_fd)
                    os.unlink(f"{payload_id}.json", dir_fd=done_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:  # one payload that cannot go does not stop the others
                result.errors.append(f"data/{payload_id}: {exc.strerror or type(exc).__name__}")
                continue
            result.payloads += 1
            result.bytes += size
        return result

    def quarantine(self, path: Path, payload_id: str, reason: str, details: dict[str, Any] | None = None) -> bool:
        """Move a document that cannot be replayed to ``failed`` and write its reason file.

        The document moves first: if it is gone (another replayer took the claim over) nothing
        is written and False comes back. The reason file of a payload quarantined before keeps
        its content; the new reason goes to ``<id>.reason.<n>.json``.
        """
        state = path.parent.name
        if state not in STATES or path.parent != self.root / state:
            raise ValueError(f"{path} is not in a folder of this store")
        if is_payload_id(payload_id):
            name = payload_id
        else:
            name = f"foreign-{uuid.uuid4().hex[:12]}-{safe_name(payload_id)[:80]}"
        failed = self._fd("failed")
        document = f"{name}.json"
        if exists_at(document, failed):  # quarantined before: keep that file as it is
            document = f"{name}.{uuid.uuid4().hex[:8]}.json"
        try:
            os.rename(path.name, document, src_dir_fd=self._fd(state), dst_dir_fd=failed)
        except FileNotFoundError:
            return False
        reason_doc = {"payload_id": payload_id, "reason": reason, "at": int(time.time() * 1000),
                      "source": path.name, "document": document, **(details or {})}
        for n in range(1, _MAX_REASON_FILES + 1):
            target = f"{name}.reason.json" if n == 1 else f"{name}.reason.{n}.json"
            if self._write_json(failed, target, reason_doc, failed, exclusive=True):
                return True
        return True


def _tree_size(name: str, dir_fd: int) -> int:
    """Bytes of the regular files below ``name`` (a folder under ``dir_fd``), links not followed."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size if stat.S_ISREG(info.st_mode) else 0
    total = 0
    for _, _, files, fd in os.fwalk(name, dir_fd=dir_fd, follow_symlinks=False):
        for file in files:
            try:
                entry = os.stat(file, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(entry.st_mode):
                total += entry.st_size
    return total


def _remove_entry(name: str, dir_fd: int) -> None:
    """Remove ``name`` under ``dir_fd``: a folder with what it holds (links removed, never
    followed), or a file or link planted under that name."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
