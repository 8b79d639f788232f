"""A pass-through FUSE file system with the semantics reported for Databricks' object-store mounts.

Unity Catalog volumes (``/Volumes``) and DBFS (``/dbfs``) are FUSE mounts over object storage.
Databricks documents that they take no direct appends and no non-sequential writes; public
reports say rename, renameat2, link and linkat answer ``ENOSYS`` there (earth-mover/icechunk#474
and #2341, developmentseed/obstore#748, delta-io/delta-rs#2540). This file system serves a
backing directory the same way, so that the failed-run store is tested on what the platform
gives rather than on what a local disk gives:

- rename, link, symlink and utime(s) answer ``ENOSYS``; so do chmod, chown and mknod (FIFOs);
- a file is written once: only a new file (``create``) may be written, sequentially from its
  first byte, until it is closed; an append, a write at another offset, opening an existing
  file for writing and truncating it answer ``EOPNOTSUPP``;
- modification times come from another clock (30 days behind this host's): nothing may compare
  them with the local clock;
- with ``--listing-delay S``, a listing shows a new entry only ``S`` seconds after it was
  created (a lookup by name sees it at once), as a listing cache would;
- every file has one link (``st_nlink`` 1), as objects have.

Run as ``python -m tests.support.object_store_fuse BACKING MOUNTPOINT [--listing-delay S]``;
:class:`ObjectStoreMount` starts it in its own process and unmounts it.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

STORAGE_CLOCK_OFFSET = -30 * 86400.0  # the storage's clock, far from this host's
_MOUNTS: dict[Path, float] = {}  # mount points of this process -> their listing delay


def mount_of(path: Path | str) -> Path | None:
    """The mount of this file system that holds ``path``, if any."""
    resolved = Path(path).resolve()
    for mountpoint in list(_MOUNTS):
        if resolved == mountpoint or mountpoint in resolved.parents:
            return mountpoint
    return None


def settle(path: Path | str) -> None:
    """Wait until a listing on the mount holding ``path`` shows what was written before (no
    wait off such a mount)."""
    mountpoint = mount_of(path)
    if mountpoint is not None:
        time.sleep(_MOUNTS.get(mountpoint, 0.0) + 0.05)


def unavailable_reason() -> str | None:
    """Why FUSE mounts cannot be made on this machine; None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine (a container without the FUSE device)"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount3 is missing (Debian package fuse3; `make fuse` installs it as root)"
    try:
        import mfusepy  # noqa: F401
    except Exception as exc:  # the library is missing, or libfuse is
        return f"mfusepy cannot load libfuse ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def _operations_class() -> type:
    import mfusepy
    from mfusepy import FuseOSError, Operations

    class ObjectStoreOperations(Operations):
        """Pass-through to ``backing`` with the object-store rules of the module docstring."""

        use_ns = True

        def __init__(self, backing: str, listing_delay: float) -> None:
            self.backing = os.path.realpath(backing)
            self.listing_delay = listing_delay
            self._lock = threading.Lock()
            self._writing: dict[int, int] = {}  # fh of a new file being written -> bytes written
            self._created: dict[str, float] = {}  # path -> when it appeared (for the listing delay)

        def _full(self, path: str) -> str:
            return os.path.join(self.backing, path.lstrip("/"))

        def _appeared(self, path: str) -> None:
            if self.listing_delay > 0:
                with self._lock:
                    self._created[path] = time.monotonic()

        # ---- metadata --------------------------------------------------------------

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            try:
                st = os.lstat(self._full(path))
            except OSError as exc:
                raise FuseOSError(exc.errno) from None
            offset = int(STORAGE_CLOCK_OFFSET * 1e9)
            return {
                "st_mode": st.st_mode, "st_size": st.st_size, "st_uid": st.st_uid, "st_gid": st.st_gid,
                "st_nlink": 1 if not stat.S_ISDIR(st.st_mode) else st.st_nlink,
                "st_atime": st.st_atime_ns + offset, "st_mtime": st.st_mtime_ns + offset,
                "st_ctime": st.st_ctime_ns + offset,
            }

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._full(path), amode):
                raise FuseOSError(errno.EACCES)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self._full(path))
            return {key: getattr(sv, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                       "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

        # ---- what object storage does not have -------------------------------------

        def rename(self, old: str, new: str) -> int:
            raise FuseOSError(errno.ENOSYS)

        def link(self, target: str, source: str) -> int:
            raise FuseOSError(errno.ENOSYS)

        def symlink(self, target: str, source: str) -> int:
            raise FuseOSError(errno.ENOSYS)

        def utimens(self, path: str, times: Any = None) -> int:
            raise FuseOSError(errno.ENOSYS)

        def chmod(self, path: str, mode: int) -> int:
            raise FuseOSError(errno.ENOSYS)

        def chown(self, path: str, uid: int, gid: int) -> int:
            raise FuseOSError(errno.ENOSYS)

        def mknod(self, path: str, mode: int, dev: int) -> int:
            raise FuseOSError(errno.ENOSYS)

        def readlink(self, path: str) -> str:
            raise FuseOSError(errno.EINVAL)

        # ---- directories -------------------------------------------------------------

        def mkdir(self, path: str, mode: int) -> int:
            try:
                os.mkdir(self._full(path), 0o755)
            except OSError as exc:
                raise FuseOSError(exc.errno) from None
            self._appeared(path)
            return 0

        def rmdir(self, path: str) -> int:
            try:
                os.rmdir(self._full(path))
            except OSError as exc:
                raise FuseOSError(exc.errno) from None
            return 0

        def readdir(self, path: str, fh: int) -> list[str]:
            try:
                names = os.listdir(self._full(path))
            except OSError as exc:
                raise FuseOSError(exc.errno) from None
            if self.listing_delay > 0:
                now = time.monotonic()
                prefix = path.rstrip("/") + "/"
                with self._lock:
                    names = [n for n in names if now - self._created.get(prefix + n, -1e18) >= self.listing_delay]
            return [".", "..", *names]

        # ---- files: written once, sequentially --------------------------------------

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            try:
                fh = os.open(self._full(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                raise FuseOSError(exc.errno) from None
            with self._lock:
                self._writing[fh] = 0
            self._appeared(path)
            return fh

        def open(self, path: str, flags: int) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
                raise FuseOSError(errno.EOPNOTSUPP)  # an existing file is never written again
            try:
                return os.open(self._full(path), os.O_RDONLY)
            except OSError as exc:
                raise FuseOSError(exc.errno) from None

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            with self._lock:
                written = self._writing.get(fh)
                if written is None or offset != written:
                    raise FuseOSError(errno.EOPNOTSUPP)  # an append, or a random write
                self._writing[fh] = written + len(data)
            return os.pwrite(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            with self._lock:
                # the kernel may send the size a new file already has; nothing else is taken
                if fh is not None and self._writing.get(fh) == length:
                    return 0
            raise FuseOSError(errno.EOPNOTSUPP)

        def flush(self, path: str, fh: int) -> int:
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            os.fsync(fh)
            return 0

        def release(self, path: str, fh: int) -> int:
            with self._lock:
                self._writing.pop(fh, None)
            os.close(fh)
            return 0

        def unlink(self, path: str) -> int:
            try:
                os.unlink(self._full(path))
            except OSError as exc:
                raise FuseOSError(exc.errno) from None
            with self._lock:
                self._created.pop(path, None)
            return 0

    del mfusepy
    return ObjectStoreOperations


def serve(backing: str, mountpoint: str, listing_delay: float, read_only: bool = False) -> None:
    from mfusepy import FUSE

    operations = _operations_class()(backing, listing_delay)
    # default_permissions: the kernel checks modes as on any mount; allow_other (root only, as
    # fuse.conf allows): Spark's Python workers use the mount too; hard_remove: a file removed
    # while open goes at once, as an object does (libfuse would rename it aside, and a release
    # arrives after close returns)
    options = {"allow_other": True, "hard_remove": True} if os.geteuid() == 0 else {"hard_remove": True}
    if read_only:
        options["ro"] = True
    FUSE(operations, mountpoint, foreground=True, nothreads=False, default_permissions=True,
         fsname="objectstore", subtype="objectstore", **options)


class ObjectStoreMount:
    """The file system above, mounted in its own process for the length of a ``with`` block.

    Args:
        backing: the directory that holds the files.
        mountpoint: an empty directory to mount on.
        listing_delay: seconds before a new entry shows in a listing.
        read_only: mount it read-only (every write answers ``EROFS``).
    """

    def __init__(self, backing: Path, mountpoint: Path, listing_delay: float = 0.0, read_only: bool = False) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.listing_delay = listing_delay
        self.read_only = read_only
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Path:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parents[2]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.object_store_fuse", str(self.backing), str(self.mountpoint),
             "--listing-delay", str(self.listing_delay), *(["--read-only"] if self.read_only else [])],
            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mountpoint):
            if self._process.poll() is not None:
                raise RuntimeError(f"the FUSE file system did not mount: {self._process.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                self._unmount()
                raise RuntimeError("the FUSE file system did not mount within 20 s")
            time.sleep(0.05)
        _MOUNTS[self.mountpoint.resolve()] = self.listing_delay
        return self.mountpoint

    def __exit__(self, *exc: object) -> None:
        self._unmount()

    def _unmount(self) -> None:
        _MOUNTS.pop(self.mountpoint.resolve(), None)
        tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
        if os.path.ismount(self.mountpoint):
            subprocess.run([tool, "-u", "-z", str(self.mountpoint)], capture_output=True)
        if self._process is not None:
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stderr is not None:
                self._process.stderr.close()
            self._process = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--listing-delay", type=float, default=0.0)
    parser.add_argument("--read-only", action="store_true")
    args = parser.parse_args()
    serve(args.backing, args.mountpoint, args.listing_delay, args.read_only)


if __name__ == "__main__":
    main()
