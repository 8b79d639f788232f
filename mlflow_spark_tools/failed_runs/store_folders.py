"""The folders of a failed-run store, opened once without following links.

The root is the operator's choice and may be a link; the folders below it are not: each is
opened once, relative to the root's handle, with ``O_NOFOLLOW``, and every listing and file
access of the store happens relative to those handles. A store that is only looked at
(``create=False``) is never made: only the folders that exist are opened.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from pathlib import Path

from mlflow_spark_tools.errors import InvalidStoreError
from mlflow_spark_tools.failed_runs.document import PayloadError
from mlflow_spark_tools.failed_runs.file_operations import FILE_FLAGS, open_dir, write_once

STATES = ("pending", "done", "failed")
FOLDERS = (*STATES, "data")
CLAIMED = "claimed"  # documents held by an earlier release's replayers; read, never written
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class StoreFolders:
    """The handles of a store's folders (``pending``, ``done``, ``failed``, ``data`` and an
    earlier release's ``claimed``), opened on first use.

    Args:
        root: the store's root directory.
        create: make the root and the folders that are missing.
    """

    def __init__(self, root: Path, create: bool) -> None:
        self.root = root
        self.create = create
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the folders that are missing (with ``create``) and open every folder without
        following links; nothing when they are open.

        Raises:
            InvalidStoreError: a folder of the store is a link or not a directory, or it cannot
                be created here (a read-only mount, no permission).
        """
        with self._lock:
            if self._fds:
                return
            try:
                if self.create:
                    self.root.mkdir(parents=True, exist_ok=True)
                # the root is the operator's choice and may be a link; what is below it is not
                root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
            except OSError as exc:
                raise _unusable(self.root, "creating and opening the store's folder" if self.create
                                else "opening the store's folder", exc) from None
            fds: dict[str, int] = {}
            try:
                for name in (*FOLDERS, CLAIMED):
                    if self.create and name != CLAIMED:
                        try:
                            os.mkdir(name, 0o755, dir_fd=root_fd)
                        except FileExistsError:
                            pass
                        except OSError as exc:
                            raise _unusable(self.root, f"creating the folder {name}/", exc) from None
                    try:
                        fds[name] = open_dir(name, root_fd, f"{name}/")
                    except FileNotFoundError:
                        pass  # an earlier release's claimed/, or a folder of a store only looked at
            except PayloadError as exc:
                for fd in fds.values():
                    os.close(fd)
                raise InvalidStoreError(
                    f"The failed-run store {self.root} is not safe to use: {exc}. Only this package "
                    "writes its folders; remove what replaced the folder and run again."
                ) from None
            except BaseException:
                for fd in fds.values():
                    os.close(fd)
                raise
            finally:
                os.close(root_fd)
            self._fds = fds

    @property
    def is_open(self) -> bool:
        return bool(self._fds)

    def fd(self, name: str) -> int:
        """The handle of folder ``name`` (opening the folders first)."""
        self.open()
        return self._fds[name]

    def get(self, name: str) -> int | None:
        """The handle of folder ``name``, None when the store has no such folder."""
        self.open()
        return self._fds.get(name)

    def check_usable(self) -> None:
        """Try each operation the store is built from once, in a folder of its own under
        ``data/``: make a folder, write a new file, read it, list the folder, remove both.

        Raises:
            InvalidStoreError: naming the path and the operation that failed (a read-only
                mount, a file system without one of them, no permission).
        """
        data = self.fd("data")
        probe = f".probe-{uuid.uuid4().hex}"
        content = b'{"probe": "mlflow-spark-tools"}'
        step = "creating a folder"
        try:
            os.mkdir(probe, 0o755, dir_fd=data)
            fd = open_dir(probe, data, f"data/{probe}")
            try:
                step = "creating and writing a new file"
                write_once(fd, "probe.json", content)
                step = "reading a file"
                read_fd = os.open("probe.json", FILE_FLAGS, dir_fd=fd)
                with os.fdopen(read_fd, "rb") as f:
                    if f.read(len(content) + 1) != content:
                        raise OSError(errno.EIO, "the file read back differs from what was written")
                step = "listing a folder"
                os.listdir(fd)
                step = "removing a file"
                os.unlink("probe.json", dir_fd=fd)
            finally:
                os.close(fd)
            step = "removing a folder"
            os.rmdir(probe, dir_fd=data)
        except (OSError, PayloadError) as exc:
            raise _unusable(self.root / "data" / probe, step, exc) from None

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def _unusable(path: Path, operation: str, exc: BaseException) -> InvalidStoreError:
    detail = getattr(exc, "strerror", None) or str(exc)
    return InvalidStoreError(
        f"The failed-run store cannot be used at {path}: {operation} failed ({detail}). It needs a "
        "directory where new files can be created, written once, read, listed and removed (a Unity "
        "Catalog volume, DBFS or a local directory) and that this identity may write."
    )
