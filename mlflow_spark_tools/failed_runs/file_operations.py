"""The few file operations the failed-run store is built from, and opening its entries without
following links.

Anyone who can write the failed-run store can put a symbolic link, a FIFO or a device where
the collector put a file, or swap a folder for a link between a check and a use. The replay
job must never read or write through them. So entries are opened relative to their parent's
handle, with ``O_NOFOLLOW`` (a link fails) and ``O_NONBLOCK`` (a FIFO cannot stall the open),
and only regular files and directories are accepted. Directory handles, ``O_NOFOLLOW`` and
``st_nlink`` are the kernel's, so they hold on the object-store FUSE mounts too; there a link
cannot even be made.

The store writes files only the way object storage takes them (:func:`write_once`): a new
file, written sequentially from its first byte, closed; never renamed, appended to, rewritten
or linked. :func:`move_entry` renames where the file system can and copies then removes where
it cannot (as ``dbutils.fs.mv`` does).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from typing import Any

from mlflow_spark_tools.failed_runs.document import PayloadError

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
CHUNK_BYTES = 1 << 20
MAX_DEPTH = 32
_MAX_JSON = 1 << 20  # checkpoints and done records are a few hundred bytes
# fsync of a file that the mount does not sync (it uploads at close): not an error
_NO_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# rename refused by the mount (object storage: ENOSYS), across mounts, or not allowed
_NO_RENAME = frozenset({errno.ENOSYS, errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL})


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


def open_entry(name: str, dir_fd: int, what: str) -> tuple[int, os.stat_result]:
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
        fd, info = open_entry(name, dir_fd, what)
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
        if depth > MAX_DEPTH:
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
                shutil.copyfileobj(source, sink, CHUNK_BYTES)
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
