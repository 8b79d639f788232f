"""A durable store of runs that could not be logged, on a Volume, DBFS or a local directory.

Layout under the root::

    pending/<payload_id>.<written ms>.<digest>.json   run documents waiting for replay, each
                                  written once, whole, by the collector (see store_entries)
    data/<payload_id>/            artifacts/<i>/... and models/<i>.pkl (the collector's);
                                  progress/ (the replay's checkpoints: begun.json, then
                                  <requests done>-<replayer>.json, a new file each)
    done/<payload_id>.json        the record of a replayed payload: the run it became
                                  (removed with data/<payload_id>/ after the retention period)
    failed/<payload_id>.json      quarantined documents, beside <payload_id>.reason.json

The store is built from what object storage gives (docs/REPLAY.md cites the sources):
creating a folder; creating a new file, writing it once from its first byte and closing it;
reading; listing; removing a file or an empty folder. Nothing here renames, links, appends,
rewrites a file, sets a time or reads one: Unity Catalog volumes and DBFS are FUSE mounts
over object storage, where rename and link are reported to answer ``ENOSYS``. A document is
visible to the replay when its bytes hash to its name, so no rename is needed to publish it
whole. Quarantine moves a document with :func:`~mlflow_spark_tools.failed_runs.file_operations.move_entry`:
a rename where the file system has one (a local disk), else a copy and a removal.

Who may replay a store is decided by a lease held through a Delta table's commits
(:mod:`mlflow_spark_tools.failed_runs.lease`), not by anything in the store.

Stores written by earlier releases hold ``claimed/<payload_id>@<owner>.json`` (documents their
replayers held), ``data/<payload_id>/progress.json`` and ``result.json``, and ``tmp/``: their
documents are replayed from where their checkpoints say, and those files are never written.

The store is shared storage that other users can write, so it is read as untrusted: its
folders are opened once, without following links, and every listing and file access happens
relative to those handles; names that are not payload ids are never used as paths; documents
are opened without following links and refused unread above a size limit; a reason file is
never overwritten (the first reason keeps its name, later ones are numbered).
"""

from __future__ import annotations

import errno
import math
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_spark_tools.databricks.paths import to_fuse_path
from mlflow_spark_tools.failed_runs.document import PayloadError
from mlflow_spark_tools.failed_runs.file_operations import (
    FILE_FLAGS,
    json_bytes,
    read_json_file,
    remove_entry,
    tree_size,
    write_once,
)
from mlflow_spark_tools.failed_runs.files import ManifestRow, PayloadFolder, copy_tree_hashed
from mlflow_spark_tools.failed_runs.quarantine import move_to_failed
from mlflow_spark_tools.failed_runs.store_entries import (
    DONE_FORMAT,
    DocumentFile,
    PendingDocument,
    claim_parts,
    document_name,
    is_payload_id,
    parse_document_name,
)
from mlflow_spark_tools.failed_runs.store_folders import CLAIMED, STATES, StoreFolders

LEASE_MARKER = "lease.json"  # where the store's lease lives, written by its first replay
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass
class PruneResult:
    """What :meth:`FailedRunStore.prune_replayed` removed (or, in a dry run, would remove: then
    its counts are named ``would_prune`` and ``would_prune_bytes``)."""

    payloads: int = 0
    bytes: int = 0
    kept_recent: int = 0
    errors: list[str] = field(default_factory=list)  # payloads that could not be removed, and why
    untouched: dict[str, int] = field(default_factory=dict)  # payloads pending, claimed, quarantined
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        done = "would_prune" if self.dry_run else "pruned"
        out: dict[str, Any] = {done: self.payloads, f"{done}_bytes": self.bytes,
                               "kept_recent": self.kept_recent, "untouched": self.untouched}
        if self.errors:
            out["prune_errors"] = self.errors[:20]
            out["prune_error_count"] = len(self.errors)
        return out


class FailedRunStore:
    """The folders of a failed-run store; see the module docstring.

    Use it as a context manager, or call :meth:`close`, to release the folder handles.

    Args:
        root: a local, ``/dbfs/...``, ``dbfs:/...`` or ``/Volumes/...`` directory.
        create: make the root and the folders that are missing; without, only the folders
            that exist are opened (a store that is only looked at is never made).
    """

    def __init__(self, root: str | os.PathLike, *, create: bool = True) -> None:
        self.root = Path(to_fuse_path(os.fspath(root)))
        self.create = create
        self.folders = StoreFolders(self.root, create)

    def ensure(self) -> FailedRunStore:
        """Create the folders that are missing and open every folder without following links.

        Raises:
            InvalidStoreError: a folder of the store is a link or not a directory, or it cannot
                be created here (a read-only mount, no permission).
        """
        self.folders.open()
        return self

    def check_usable(self) -> None:
        """Try each operation the store is built from once (see :meth:`StoreFolders.check_usable`).

        Raises:
            InvalidStoreError: naming the path and the operation that failed.
        """
        self.folders.check_usable()

    def close(self) -> None:
        self.folders.close()

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
        return self.folders.fd(folder)

    def exists_at(self) -> bool:
        return self.folders.is_open or self.root.is_dir()

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
        """Write a run document into ``pending/``, whole, once (its data files must be written
        already); returns its path."""
        data = json_bytes(document)
        name = document_name(payload_id, int(time.time() * 1000), data)
        write_once(self._fd("pending"), name, data)
        return self.root / "pending" / name

    def copy_into(self, payload_id: str, source: Path, relative: str) -> list[ManifestRow]:
        """Copy a file or directory into the payload's data folder; returns its manifest."""
        target = self.data_dir(payload_id) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return copy_tree_hashed(source, target)

    def write_blob(self, payload_id: str, relative: str, data: bytes) -> None:
        target = self.data_dir(payload_id) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        try:
            write_once(folder, target.name, data)
        finally:
            os.close(folder)

    # ---- listing -------------------------------------------------------------------------

    def _entries(self, state: str) -> list[str]:
        if not self.exists_at() or self.folders.get(state) is None:
            return []
        return os.listdir(self._fd(state))

    def documents(self) -> list[PendingDocument]:
        """Every document waiting for replay, oldest payload first: ``pending/`` and the claims
        of an earlier release's replayers."""
        out = []
        for entry in self._entries("pending"):
            parsed = parse_document_name(entry)
            if parsed is not None:
                out.append(PendingDocument(parsed.payload_id, "pending", entry, parsed.written_ms, parsed.digest))
        for entry in self._entries(CLAIMED):
            parts = claim_parts(entry)
            if parts is not None:
                out.append(PendingDocument(parts[0], CLAIMED, entry))
        return sorted(out, key=lambda d: (d.payload_id, d.state != CLAIMED, d.name))

    def ids(self, state: str) -> list[str]:
        """Payload ids in a state (``pending``, ``claimed``, ``done``, ``failed``), oldest first
        (ids start with their creation time)."""
        if state in ("pending", CLAIMED):
            return sorted({d.payload_id for d in self.documents() if d.state == state})
        return sorted(e[:-5] for e in self._entries(state) if e.endswith(".json") and is_payload_id(e[:-5]))

    def foreign_files(self, state: str = "pending") -> list[Path]:
        """Entries of ``pending`` (or an earlier release's ``claimed``) that are not documents
        of this package (by name): never replayed, never used as paths."""
        out = []
        for entry in sorted(self._entries(state)):
            known = (claim_parts(entry) if state == CLAIMED else parse_document_name(entry)) is not None
            if not known and not entry.startswith(".nfs"):
                out.append(self.root / state / entry)
        return out

    # ---- reading ---------------------------------------------------------------------

    def open_document(self, document: PendingDocument | Path) -> DocumentFile:
        """A run document opened without following a link, with its size known before it is read.

        Raises:
            FileNotFoundError: the document is gone.
            ValueError: a link, not a regular file, or a file with other hard links.
        """
        if isinstance(document, PendingDocument):
            state, name = document.state, document.name
        else:
            state, name = document.parent.name, document.name
            if document.parent != self.root / state:
                raise ValueError(f"{document} is not in a folder of this store")
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=self._fd(state))
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

    def read_document(self, document: PendingDocument | Path, max_bytes: int | None = None) -> dict[str, Any]:
        """Parse a run document (see :meth:`open_document`); raises ``ValueError`` naming what is
        wrong (over ``max_bytes``, corrupt, foreign, newer version)."""
        with self.open_document(document) as handle:
            return handle.read(max_bytes)

    def read_done(self, payload_id: str) -> dict[str, Any] | None:
        """``done/<payload_id>.json`` as a JSON object, looked up by name; None if absent.

        Raises:
            PayloadError: it cannot be read, or is a link, a special file, too large or not a
                JSON object.
        """
        if not is_payload_id(payload_id):
            raise ValueError(f"{payload_id[:80]!r} is not a payload id")
        try:
            return read_json_file(self._fd("done"), f"{payload_id}.json", f"done/{payload_id}.json")
        except OSError as exc:
            raise PayloadError(f"done/{payload_id}.json cannot be read: {exc.strerror or exc}") from None

    def result(self, payload_id: str) -> dict[str, Any] | None:
        """The record of a payload's replay (its ``run_id``, ``attempts``, ``replayed_at``), or
        None when it is not replayed (or its record cannot be read). Unchecked: the replay
        checks a record's signature before it relies on it."""
        try:
            return self.read_done(payload_id) if self.exists_at() else None
        except (PayloadError, OSError):
            return None

    def document_of(self, payload_id: str) -> PendingDocument | None:
        """The first document waiting for replay of a payload, or None."""
        return next((d for d in self.documents() if d.payload_id == payload_id), None)

    def path_of(self, document: PendingDocument) -> Path:
        return self.root / document.state / document.name

    def read_lease_marker(self) -> dict[str, Any] | None:
        """``lease.json`` at the store's root (where the store's lease lives), looked up by name;
        None if absent.

        Raises:
            PayloadError: it cannot be read, or is a link, a special file, too large or not a
                JSON object.
        """
        root = os.open(self.ensure().root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        try:
            return read_json_file(root, LEASE_MARKER, LEASE_MARKER)
        except OSError as exc:
            raise PayloadError(f"{LEASE_MARKER} cannot be read: {exc.strerror or exc}") from None
        finally:
            os.close(root)

    def write_lease_marker(self, marker: dict[str, Any]) -> None:
        """Write ``lease.json`` once.

        Raises:
            FileExistsError: it exists (seen by this host).
        """
        root = os.open(self.ensure().root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        try:
            write_once(root, LEASE_MARKER, json_bytes(marker))
        finally:
            os.close(root)

    # ---- finishing -------------------------------------------------------------------

    def write_done(self, payload_id: str, record: dict[str, Any]) -> None:
        """Write the record of a replayed payload, once.

        Raises:
            FileExistsError: a record of this payload exists.
        """
        if not is_payload_id(payload_id):
            raise ValueError(f"{payload_id[:80]!r} is not a payload id")
        write_once(self._fd("done"), f"{payload_id}.json", json_bytes(record))

    def remove_empty_done(self, payload_id: str) -> bool:
        """Remove ``done/<payload_id>.json`` if it is an empty regular file (a record whose
        writer was killed before it wrote it: it says nothing); whether it was removed."""
        if not is_payload_id(payload_id):
            raise ValueError(f"{payload_id[:80]!r} is not a payload id")
        name, folder = f"{payload_id}.json", self._fd("done")
        try:
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or info.st_size:
                return False
            os.unlink(name, dir_fd=folder)
        except FileNotFoundError:
            return False
        return True

    def remove(self, document: PendingDocument) -> None:
        """Remove a document that is replayed (its record is written) or quarantined."""
        try:
            os.unlink(document.name, dir_fd=self._fd(document.state))
        except FileNotFoundError:
            pass

    def quarantine(self, path: Path, payload_id: str, reason: str, details: dict[str, Any] | None = None) -> bool:
        """Move a document that cannot be replayed (or any entry of ``pending/``, ``claimed/``
        or ``done/``) to ``failed`` and write its reason file; False if it is gone.

        The reason file of a payload quarantined before keeps its content; the new reason goes
        to ``<id>.reason.<n>.json``, and the document to ``<id>.<random>.json``.
        """
        state = path.parent.name
        if state not in (*STATES, CLAIMED) or state == "failed" or path.parent != self.root / state:
            raise ValueError(f"{path} is not in a folder of this store")
        return move_to_failed(path.name, self._fd(state), state, self._fd("failed"), payload_id, reason, details)

    # ---- retention -----------------------------------------------------------------------

    def prune_replayed(self, older_than_seconds: float, *, dry_run: bool = False,
                       now: float | None = None) -> PruneResult:
        """Remove what replayed payloads leave behind once older than the retention period.

        For every payload in ``done/`` replayed more than ``older_than_seconds`` ago (the time
        its record says, on the replaying host's clock; never a file's modification time, which
        comes from the storage's clock): ``data/<id>/`` (artifact copies, model blobs,
        checkpoints) and then ``done/<id>.json``. The replay ledger table keeps the
        payload-to-run record. Nothing pending, claimed or quarantined is touched, nor a data
        folder without a replayed record. Removal works on the folder handles and never
        follows a link.
        """
        result = PruneResult(dry_run=dry_run)
        if not self.exists_at():
            return result
        if not math.isfinite(older_than_seconds) or older_than_seconds < 0:
            raise ValueError(f"a retention of {older_than_seconds!r} seconds")
        now = time.time() if now is None else now
        done_fd, data_fd = self.folders.get("done"), self.folders.get("data")
        if done_fd is None:
            return result
        # a payload also pending, claimed or quarantined (a copy put back, a planted document)
        # is not only replayed: its data stays
        listed = {state: self.ids(state) for state in ("pending", CLAIMED, "failed")}
        result.untouched = {state: len(ids) for state, ids in listed.items()}
        elsewhere = {i for ids in listed.values() for i in ids}
        for payload_id in self.ids("done"):
            if payload_id in elsewhere:
                continue
            # An id starts with its creation time (ms), and a payload is replayed after it was
            # created: a young id is kept without a read (thousands of them on a fuse mount).
            created = int(payload_id.split("-", 1)[0]) / 1000.0
            if now - created < older_than_seconds:
                result.kept_recent += 1
                continue
            if now - self._replayed_at(payload_id, created) < older_than_seconds:
                result.kept_recent += 1
                continue
            try:
                info = os.stat(f"{payload_id}.json", dir_fd=done_fd, follow_symlinks=False)
                size = info.st_size + (tree_size(payload_id, data_fd) if data_fd is not None else 0)
                if not dry_run:
                    if data_fd is not None:
                        remove_entry(payload_id, data_fd)
                    os.unlink(f"{payload_id}.json", dir_fd=done_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:  # one payload that cannot go does not stop the others
                result.errors.append(f"data/{payload_id}: {exc.strerror or type(exc).__name__}")
                continue
            result.payloads += 1
            result.bytes += size
        return result

    def _replayed_at(self, payload_id: str, created: float) -> float:
        """When a payload was replayed (seconds), from its record; an earlier release's record
        is the document itself, its time in ``data/<id>/result.json``. The creation time when
        neither says (a damaged record prunes no later than an intact one would)."""
        try:
            record = self.read_done(payload_id) or {}
            when = record.get("replayed_at")
            if record.get("format") != DONE_FORMAT:
                folder = self.payload_folder(payload_id)
                if folder is not None:
                    with folder:
                        when = (folder.read_json("result.json") or {}).get("replayed_at")
        except (PayloadError, OSError):
            return created
        if isinstance(when, bool) or not isinstance(when, int) or not 0 < when < 2**53:
            return created
        return max(created, when / 1000.0)
