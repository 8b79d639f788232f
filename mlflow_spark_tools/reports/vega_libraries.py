"""The Vega, Vega-Lite and Vega-Embed libraries a report's HTML carries inline.

vl-convert bundles them (``javascript_bundle``) by running its JavaScript engine, which takes
about 3 s and 125 MB the first time in a process. The bundle is therefore kept in a cache file,
named after the vl-convert version, and later reports read it.

The cache is ``$MLFLOW_SPARK_TOOLS_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlflow-spark-tools``,
else ``~/.cache/mlflow-spark-tools``: a folder only its owner may write. A report's HTML runs
this script in the browser of whoever opens it, so a cache file is used only when the folder
and the file belong to this user, nobody else can write them and neither is a link; otherwise
the bundle is made again and not cached. The checks are made on the opened folder and file, and
the file is opened through the checked folder's descriptor, so that nobody can swap either
between the check and the read.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)
CACHE_ENV = "MLFLOW_SPARK_TOOLS_CACHE_DIR"


def cache_dir() -> Path:
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlflow-spark-tools"


def _private(info: os.stat_result, kind: int) -> bool:
    """Whether an opened file or folder (its ``fstat``) is of ``kind`` (``stat.S_IFREG`` or
    ``stat.S_IFDIR``), belongs to this user and neither group nor others may write it."""
    return (stat.S_IFMT(info.st_mode) == kind and info.st_uid == os.getuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _open_folder(folder: Path) -> int | None:
    """A descriptor of ``folder`` if it is private (not a link), else None. Everything after
    goes through it: a folder checked by name and then used by name could be swapped in
    between by whoever can write its parent."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    if _private(os.fstat(fd), stat.S_IFDIR):
        return fd
    os.close(fd)
    return None


def _read_cached(folder_fd: int, name: str) -> str | None:
    """The cached bundle ``name`` in the opened folder, if it is a private regular file."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as cached:
        if not _private(os.fstat(cached.fileno()), stat.S_IFREG):
            return None
        return cached.read().decode("utf-8")


def _write_cached(folder_fd: int, name: str, bundle: str) -> None:
    temporary = f".{name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=folder_fd)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(bundle.encode("utf-8"))
        os.replace(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        os.unlink(temporary, dir_fd=folder_fd)
        raise


def javascript_libraries() -> str:
    """The libraries' JavaScript, from the cache or made by vl-convert (and cached)."""
    from importlib.metadata import version

    folder = cache_dir()
    # the installed version names the file: vl-convert itself (12 MB) is not loaded for a cached bundle
    name = f"vega-libraries-vl-convert-{version('vl-convert-python')}.js"
    folder_fd = _open_folder(folder)
    try:
        cached = _read_cached(folder_fd, name) if folder_fd is not None else None
        if cached is not None:
            return cached
        import vl_convert

        bundle: str = vl_convert.javascript_bundle()  # type: ignore[call-arg]  # its stub wants a snippet
        if folder_fd is None:
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                log.info("Not caching the report libraries in %s: %s", folder, exc)
                return bundle
            folder_fd = _open_folder(folder)
            if folder_fd is None:
                log.info("Not caching the report libraries: %s is a link or writable by others", folder)
                return bundle
        try:
            _write_cached(folder_fd, name, bundle)
        except OSError as exc:
            log.info("Not caching the report libraries in %s: %s", folder, exc)
        return bundle
    finally:
        if folder_fd is not None:
            os.close(folder_fd)
