"""The files of one payload, opened without following links, and copies made with their digests.

Every path below a payload's folder is opened one component at a time relative to its
parent's handle (:mod:`~mlflow_spark_tools.failed_runs.file_operations`): the replay job must
never read or write through a link someone put into the store; it would upload a file of its
own host (a credentials file, another payload's model) into a run the writer can read, or
write its checkpoints wherever the link points. Artifact files are copied into a private
staging directory while their SHA-256 is computed; the replay uploads the copy, so a file
changed after the check is never what gets uploaded.

The collector, which writes the payload from the task's own files, uses :func:`copy_hashed`
and :func:`copy_tree_hashed` to record the same digests (the run document's ``manifest``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mlflow_spark_tools.failed_runs.document import PayloadError
from mlflow_spark_tools.failed_runs.file_operations import (
    CHUNK_BYTES,
    MAX_DEPTH,
    exists_at,
    json_bytes,
    open_dir,
    open_entry,
    read_json_file,
    sync,
    write_once,
)

ManifestRow = tuple[str, int, str]  # (path inside the entry, size, sha256)


def copy_hashed(source: IO[bytes], target: Path, limit: int | None = None, what: str = "file",
                *, durable: bool = True) -> tuple[int, str]:
    """Copy a readable binary stream to a new file ``target``; returns (size, sha256).

    ``durable`` syncs the copy to disk (the store's copies must survive a crash; a replay's
    staging copies live only as long as the upload).

    Raises:
        PayloadError: more than ``limit`` bytes.
    """
    digest = hashlib.sha256()
    size = 0
    with open(target, "xb") as out:
        while True:
            chunk = source.read(CHUNK_BYTES)
            if not chunk:
                break
            size += len(chunk)
            if limit is not None and size > limit:
                raise PayloadError(f"{what} holds more than the {limit} bytes allowed for it (it grew while "
                                   "copied, or is over replay.limits.max_artifact_bytes)")
            digest.update(chunk)
            out.write(chunk)
        if durable:
            out.flush()
            sync(out.fileno())
    return size, digest.hexdigest()


def copy_tree_hashed(source: Path, target: Path) -> list[ManifestRow]:
    """Copy a local file or directory (the task's own files) to ``target`` with its manifest.

    Files reached through links are copied as files; directory links are not followed (as
    MLflow's ``log_artifacts`` walks), and special files are skipped.
    """
    if not source.is_dir():
        with open(source, "rb") as f:
            size, sha = copy_hashed(f, target)
        return [("", size, sha)]
    rows = []
    target.mkdir()
    for directory, dirnames, names in os.walk(source):
        dirnames.sort()
        rel_dir = os.path.relpath(directory, source)
        out_dir = target if rel_dir == "." else target / rel_dir
        for name in dirnames:
            if not os.path.islink(os.path.join(directory, name)):
                (out_dir / name).mkdir()
        for name in sorted(names):
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                size, sha = copy_hashed(f, out_dir / name)
            rel = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
            rows.append((rel, size, sha))
    return sorted(rows)


class Budget:
    """Files and bytes one payload may still stage (its share of :class:`ReplayLimits`).

    A file is admitted by the size it shows before it is copied and charged by the bytes
    actually copied; the copy itself stops at what is left, so a file that grows meanwhile
    (or a sparse one) cannot take more.
    """

    def __init__(self, files: int, size: int) -> None:
        self.files = files
        self.bytes = size

    def admit(self, size: int, what: str) -> None:
        if self.files < 1:
            raise PayloadError("over the limits: too many files in the artifacts (replay.limits.max_files)")
        if size > self.bytes:
            raise PayloadError(f"over the limits: {what} brings the artifacts over "
                               "replay.limits.max_artifact_bytes")

    def charge(self, size: int) -> None:
        self.files -= 1
        self.bytes -= size


class PayloadFolder:
    """``data/<payload_id>/`` of one payload, held open by a handle (see the module docstring)."""

    def __init__(self, fd: int, payload_id: str) -> None:
        self.fd = fd
        self.payload_id = payload_id

    @classmethod
    def open(cls, data_fd: int, payload_id: str, *, create: bool = False) -> PayloadFolder | None:
        """The folder of ``payload_id`` under the store's ``data`` handle; None if it is missing
        (and ``create`` is False)."""
        what = f"data/{payload_id}"
        if create:
            try:
                os.mkdir(payload_id, 0o755, dir_fd=data_fd)
            except FileExistsError:
                pass
        try:
            return cls(open_dir(payload_id, data_fd, what), payload_id)
        except FileNotFoundError:
            return None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PayloadFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _parent(self, relative: str) -> Iterator[tuple[int, str]]:
        """The handle of the directory holding ``relative`` and the last name in it."""
        parts = relative.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise PayloadError(f"{relative!r} is not a plain relative path")
        fds: list[int] = []
        try:
            current = self.fd
            for i, part in enumerate(parts[:-1]):
                current = open_dir(part, current, "/".join(parts[: i + 1]))
                fds.append(current)
            yield current, parts[-1]
        finally:
            for fd in fds:
                os.close(fd)

    def read_bytes(self, relative: str, limit: int) -> bytes:
        """A regular file's content, refused unread when over ``limit`` bytes."""
        with self._parent(relative) as (parent, name):
            fd, info = open_entry(name, parent, relative)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                raise PayloadError(f"{relative} is not a regular file")
            with os.fdopen(fd, "rb") as f:
                if info.st_size > limit:
                    raise PayloadError(f"over the limits: {relative} holds {info.st_size} bytes, the limit is "
                                       f"{limit} (replay.limits.max_model_bytes)")
                data = f.read(limit + 1)
        if len(data) > limit:
            raise PayloadError(f"over the limits: {relative} grew over {limit} bytes while read")
        return data

    def read_json(self, relative: str) -> dict[str, Any] | None:
        """A small JSON object the replay wrote here (see :func:`read_json_file`); None if absent."""
        try:
            with self._parent(relative) as (parent, name):
                return read_json_file(parent, name, f"data/{self.payload_id}/{relative}")
        except FileNotFoundError:
            return None

    def names(self, folder: str) -> list[str]:
        """The entries of a subfolder of this payload's folder ([] if it is missing)."""
        try:
            fd = open_dir(folder, self.fd, f"data/{self.payload_id}/{folder}")
        except FileNotFoundError:
            return []
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def exists(self, relative: str) -> bool:
        """Whether ``relative`` names an entry here (looked up by name, not in a listing)."""
        try:
            with self._parent(relative) as (parent, name):
                return exists_at(name, parent)
        except FileNotFoundError:
            return False

    def write_new_json(self, relative: str, data: Any) -> None:
        """Write a new JSON file at ``relative`` (its folders made as needed), once, never
        through a link.

        Raises:
            FileExistsError: a file of that name exists.
        """
        parts = relative.split("/")
        for i in range(1, len(parts)):
            with self._parent("/".join(parts[:i])) as (parent, folder):
                try:
                    os.mkdir(folder, 0o755, dir_fd=parent)
                except FileExistsError:
                    pass
        with self._parent(relative) as (parent, name):
            write_once(parent, name, json_bytes(data))

    def stage(self, relative: str, is_dir: bool, target: Path, budget: Budget,
              manifest: tuple[ManifestRow, ...] | None = None) -> list[ManifestRow]:
        """Copy a file or directory of this payload to ``target`` (a new path in a private
        directory); returns its manifest, sorted.

        With the document's ``manifest``, a file it does not name, or whose size differs, is
        refused before a byte is copied, and no file is copied past its recorded size.

        Raises:
            FileNotFoundError: it is missing.
            PayloadError: a link, a special file, the wrong kind, unknown to the manifest or over
                the budget.
        """
        sizes = None if manifest is None else {row[0]: row[1] for row in manifest}
        with self._parent(relative) as (parent, name):
            fd, info = open_entry(name, parent, relative)
        try:
            if stat.S_ISDIR(info.st_mode) != is_dir:
                raise PayloadError(f"{relative} is {'a directory' if not is_dir else 'a file'} "
                                   f"where the document says {'a directory' if is_dir else 'a file'}")
            if not is_dir:
                return [_stage_file(fd, info, "", relative, target, budget, sizes)]
            rows: list[ManifestRow] = []
            target.mkdir()
            self._stage_tree(fd, relative, target, "", budget, sizes, rows, 0)
            return sorted(rows)
        finally:
            os.close(fd)

    def _stage_tree(self, dir_fd: int, where: str, target: Path, prefix: str, budget: Budget,
                    sizes: dict[str, int] | None, rows: list[ManifestRow], depth: int) -> None:
        if depth > MAX_DEPTH:
            raise PayloadError(f"{where} is nested more than {MAX_DEPTH} levels deep")
        with os.scandir(dir_fd) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            what = f"{where}/{name}"
            fd, info = open_entry(name, dir_fd, what)
            try:
                rel = f"{prefix}{name}"
                if stat.S_ISDIR(info.st_mode):
                    (target / name).mkdir()
                    self._stage_tree(fd, what, target / name, rel + "/", budget, sizes, rows, depth + 1)
                else:
                    rows.append(_stage_file(fd, info, rel, what, target / name, budget, sizes))
            finally:
                os.close(fd)


def _stage_file(fd: int, info: os.stat_result, rel: str, what: str, target: Path, budget: Budget,
                sizes: dict[str, int] | None) -> ManifestRow:
    """Copy one open regular file with its digest, within the budget and its recorded size."""
    limit = budget.bytes
    if sizes is not None:
        if rel not in sizes:
            raise PayloadError(f"{what} is not in the document's manifest")
        if sizes[rel] != info.st_size:
            raise PayloadError(f"{what} changed after it was collected (size or SHA-256 differs)")
        limit = min(limit, sizes[rel])
    budget.admit(info.st_size, what)
    with os.fdopen(os.dup(fd), "rb") as f:
        size, sha = copy_hashed(f, target, limit, what, durable=False)
    budget.charge(size)
    return rel, size, sha


def manifest_difference(expected: tuple[ManifestRow, ...], actual: list[ManifestRow]) -> str | None:
    """What differs between a document's manifest and the staged files; None if nothing."""
    want = {row[0]: row for row in expected}
    have = {row[0]: row for row in actual}
    for rel in sorted(set(want) | set(have)):
        shown = rel or "the file"
        if rel not in have:
            return f"{shown} is missing"
        if rel not in want:
            return f"{shown} is not in the document's manifest"
        if want[rel] != have[rel]:
            return f"{shown} changed after it was collected (size or SHA-256 differs)"
    return None
