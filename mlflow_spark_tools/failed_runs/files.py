"""The files of one payload, opened without following links and copied with their digests,
and the few file operations the store is built from.

Anyone who can write the failed-run store can put a symbolic link, a FIFO or a device where
the collector put a file, or swap a folder for a link between a check and a use. The replay
job must never read or write through them: it would upload a file of its own host (a
credentials file, another payload's model) into a run the writer can read, or write its
checkpoints wherever the link points. So every path below a payload's folder is opened one
component at a time relative to its parent's handle, with ``O_NOFOLLOW`` (a link anywhere
fails) and ``O_NONBLOCK`` (a FIFO cannot stall the open), and only regular files and
directories are accepted. Artifact files are copied into a private staging directory while
their SHA-256 is computed; the replay uploads the copy, so a file changed after the check is
never what gets uploaded. Directory handles, ``O_NOFOLLOW`` and ``st_nlink`` are the kernel's,
so they hold on the object-store FUSE mounts too; there a link cannot even be made.

The store writes files only the way object storage takes them (:func:`write_once`): a new
file, written sequentially from its first byte, closed; never renamed, appended to, rewritten
or linked. :func:`move_entry` renames where the file system can and copies then removes where
it cannot (as ``dbutils.fs.mv`` does).

The collector, which writes the payload from the task's own files, uses :func:`copy_hashed`
and :func:`copy_tree_hashed` to record the same digests (the run document's ``manifest``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mlflow_spark_tools.failed_runs.document import PayloadError

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_CHUNK = 1 << 20
_MAX_DEPTH = 32
_MAX_JSON = 1 << 20  # checkpoints and done records are a few hundred bytes
# fsync of a file that the mount does not sync (it uploads at close): not an error
_NO_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# rename refused by the mount (object storage: ENOSYS), across mounts, or not allowed
_NO_RENAME = frozenset({errno.ENOSYS, errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL})

ManifestRow = tuple[str, int, str]  # (path inside the entry, size, sha256)


def open_dir(name: str, dir_fd: int | None, what: str) -> int:
    """A directory handle for ``name`` (relative to ``dir_fd``); a link or non-directory is refused.

    Raises:
        FileNotFoundError: it does not exist.
        PayloadError: it is a symbolic link or not a directory.
    """
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PayloadError(f"{what} is a symbolic link") from None
        if exc.errno == errno.ENOTDIR:
            # O_DIRECTORY with O_NOFOLLOW answers ENOTDIR for a link: say which it is
            try:
                is_link = stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            except OSError:
                is_link = False
            raise PayloadError(f"{what} is {'a symbolic link' if is_link else 'not a directory'}") from None
        if exc.errno == errno.EACCES:
            raise PayloadError(f"{what} cannot be read (permission denied)") from None
        raise


def _open_entry(name: str, dir_fd: int, what: str) -> tuple[int, os.stat_result]:
    """A handle for a file or directory that is neither a link nor a special file."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PayloadError(f"{what} is a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.ENODEV):
            raise PayloadError(f"{what} is not a regular file") from None
        if exc.errno == errno.EACCES:
            raise PayloadError(f"{what} cannot be read (permission denied)") from None
        raise
    info = os.fstat(fd)
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        os.close(fd)
        raise PayloadError(f"{what} is not a regular file or directory")
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        # a hard link to a file elsewhere looks like a regular file; the collector's copies
        # never have a second name
        os.close(fd)
        raise PayloadError(f"{what} has other hard links: not a copy the collector made")
    return fd, info


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
            chunk = source.read(_CHUNK)
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
            fd, info = _open_entry(name, parent, relative)
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
            fd, info = _open_entry(name, parent, relative)
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
        if depth > _MAX_DEPTH:
            raise PayloadError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
        with os.scandir(dir_fd) as entries:
            names = sorted(e.name for e in entries)
        for name in names:
            what = f"{where}/{name}"
            fd, info = _open_entry(name, dir_fd, what)
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


def exists_at(name: str, dir_fd: int) -> bool:
    """Whether ``name`` exists in the directory ``dir_fd`` (a link counts; it is not followed)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


class EmptyFile(PayloadError):
    """A file of the package's that holds no byte: created by a process killed before its one
    write (:func:`write_once` writes a non-empty JSON object at once), or planted empty."""


def read_json_file(dir_fd: int, name: str, what: str) -> dict[str, Any] | None:
    """A small JSON object the package wrote (a checkpoint, a done record, the lease marker),
    opened without following a link; None if absent.

    Raises:
        EmptyFile: it holds no byte (a write cut short by a kill).
        PayloadError: a link, not a regular file, one with other hard links, too large, or not
            a JSON object.
    """
    try:
        fd, info = _open_entry(name, dir_fd, what)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_JSON:
        os.close(fd)
        raise PayloadError(f"{what} is not a file of this package (not a regular file, or too large)")
    with os.fdopen(fd, "rb") as f:
        data = f.read(_MAX_JSON + 1)
    if not data:
        raise EmptyFile(f"{what} is empty (its writer was killed before it wrote it)")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise PayloadError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise PayloadError(f"{what} is not a JSON object")
    return value


def json_bytes(data: Any) -> bytes:
    """The bytes the store writes for a JSON value (NaN and infinities kept, keys sorted)."""
    return json.dumps(data, allow_nan=True, sort_keys=True).encode("utf-8")


def sync(fd: int) -> None:
    """fsync, where the file system has it (a FUSE mount over object storage may upload at
    close instead and refuse fsync)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_SYNC:
            raise


def write_once(dir_fd: int, name: str, data: bytes) -> None:
    """Create ``name`` in the folder ``dir_fd`` and write ``data`` into it: a new file,
    written sequentially from its first byte, synced and closed; what object storage takes.

    A failure (the write, the sync, or the close, where a FUSE mount over object storage
    uploads) removes what was written, so no partial file is left under the name.

    Raises:
        FileExistsError: ``name`` exists already (seen by this host).
    """
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            sync(fd)
        finally:
            os.close(fd)
    except BaseException:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def move_entry(name: str, src_fd: int, target: str, dst_fd: int) -> None:
    """Give the file or folder ``name`` under ``src_fd`` the new name ``target`` under
    ``dst_fd`` (which the caller made sure is free). A rename where the file system has one
    (a local disk); where it has none (object storage answers ``ENOSYS``), a copy, then the
    removal of the original, as ``dbutils.fs.mv`` does. Links are moved or removed, never
    followed; a special file (a FIFO) has no content to copy and is removed.

    Raises:
        FileNotFoundError: ``name`` is gone.
    """
    try:
        os.rename(name, target, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return
    except OSError as exc:
        if exc.errno not in _NO_RENAME:
            raise
    _copy_entry(name, src_fd, target, dst_fd, 0)
    remove_entry(name, src_fd)


def _copy_entry(name: str, src_fd: int, target: str, dst_fd: int, depth: int) -> None:
    info = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
    if stat.S_ISDIR(info.st_mode):
        if depth > _MAX_DEPTH:
            return
        os.mkdir(target, 0o755, dir_fd=dst_fd)
        inner_src = open_dir(name, src_fd, name)
        inner_dst = open_dir(target, dst_fd, target)
        try:
            for child in sorted(os.listdir(inner_src)):
                _copy_entry(child, inner_src, child, inner_dst, depth + 1)
        finally:
            os.close(inner_src)
            os.close(inner_dst)
    elif stat.S_ISREG(info.st_mode):
        fd = os.open(name, FILE_FLAGS, dir_fd=src_fd)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o644,
                      dir_fd=dst_fd)
        try:
            with os.fdopen(fd, "rb") as source, os.fdopen(out, "wb") as sink:
                shutil.copyfileobj(source, sink, _CHUNK)
                sink.flush()
                sync(sink.fileno())
        except BaseException:
            try:
                os.unlink(target, dir_fd=dst_fd)
            except OSError:
                pass
            raise


def remove_entry(name: str, dir_fd: int) -> None:
    """Remove ``name`` under ``dir_fd``: a folder with what it holds (links removed, never
    followed), or a file or link; nothing if it is gone."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def tree_size(name: str, dir_fd: int) -> int:
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
