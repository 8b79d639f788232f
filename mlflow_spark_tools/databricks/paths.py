"""Databricks path rules: ``dbfs:/`` URIs, their ``/dbfs/`` fuse paths, and Volumes.

MLflow and plain Python file APIs do not understand ``dbfs:/`` URIs; on a Databricks node the
same files are at ``/dbfs/...``. Unity Catalog volumes are mounted at
``/Volumes/<catalog>/<schema>/<volume>/...`` and are also addressed as ``dbfs:/Volumes/...``
(never ``/dbfs/Volumes/...``). Spark reads ``dbfs:/`` URIs and ``/Volumes`` paths.

Every path a command takes goes through :func:`to_fuse_path`, which rejects what cannot be a
file path (cloud URIs, malformed URIs, incomplete Volumes paths, ``..`` segments on shared
storage) with an error that says what to write instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow_spark_tools.errors import UsageError

DBFS, VOLUME, WORKSPACE, LOCAL = "dbfs", "volume", "workspace", "local"
_URI_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_VOLUME_NAME = re.compile(r"^[^/\x00-\x1f.][^/\x00-\x1f]{0,254}$")


@dataclass(frozen=True)
class VolumePath:
    """The parts of ``/Volumes/<catalog>/<schema>/<volume>/<rest>``."""

    catalog: str
    schema: str
    volume: str
    rest: str  # "" for the volume's root

    @property
    def full_name(self) -> str:
        """The volume's three-level name, ``catalog.schema.volume``."""
        return f"{self.catalog}.{self.schema}.{self.volume}"


def _check_segments(path: str, original: str) -> None:
    if any(segment == ".." for segment in path.split("/")):
        raise UsageError(f"{original!r} contains '..': write the path without parent references.")


def to_fuse_path(path: str) -> str:
    """The local (fuse) path of ``path``: ``dbfs:/x`` -> ``/dbfs/x``, ``dbfs:/Volumes/...`` ->
    ``/Volumes/...``, ``file:`` stripped, other paths as they are.

    Raises:
        UsageError: for an empty path, a malformed ``dbfs:`` URI, ``/dbfs/Volumes``, a
            ``/Volumes`` path that lacks catalog, schema or volume, ``..`` segments in a DBFS or
            Volumes path, or a cloud URI (``s3://`` ...) with no fuse path.
    """
    if not isinstance(path, str) or not path.strip():
        raise UsageError("The path is empty.")
    original, path = path, path.strip()
    if path.startswith("dbfs:"):
        rest = path[len("dbfs:"):]
        if not rest.startswith("/") or rest.startswith("//"):
            raise UsageError(f"Malformed DBFS URI {original!r}: write dbfs:/path/to/dir.")
        path = rest if rest == "/Volumes" or rest.startswith("/Volumes/") else "/dbfs" + rest
    elif path.startswith("file:"):
        rest = re.sub(r"^file:(//)?", "", path)
        return rest if rest.startswith("/") else "/" + rest
    elif _URI_SCHEME.match(path):
        raise UsageError(
            f"{original!r} is not a file path: use a /dbfs/..., /Volumes/... or local path."
        )
    kind = path_kind(path)
    if kind in (DBFS, VOLUME):
        _check_segments(path, original)
    if path == "/dbfs/Volumes" or path.startswith("/dbfs/Volumes/"):
        raise UsageError(f"{original!r}: Volumes are mounted at /Volumes/..., not under /dbfs.")
    if kind == VOLUME:
        volume_parts(path)
    return path


def path_kind(path: str) -> str:
    """``dbfs``, ``volume``, ``workspace`` or ``local`` for a fuse path or URI."""
    path = path.strip()
    if path.startswith("dbfs:/Volumes/") or path == "dbfs:/Volumes":
        return VOLUME
    if path.startswith("dbfs:") or path == "/dbfs" or path.startswith("/dbfs/"):
        return DBFS
    if path == "/Volumes" or path.startswith("/Volumes/"):
        return VOLUME
    if path == "/Workspace" or path.startswith("/Workspace/"):
        return WORKSPACE
    return LOCAL


def is_shared_storage(path: str) -> bool:
    """Whether other users of the workspace may write there (DBFS, Volumes, workspace files)."""
    return path_kind(path) != LOCAL


def volume_parts(path: str) -> VolumePath:
    """Split a Volumes path into catalog, schema, volume and the rest.

    Raises:
        UsageError: when catalog, schema or volume is missing or not a valid name.
    """
    fuse = path.strip()
    if fuse.startswith("dbfs:/Volumes"):
        fuse = fuse[len("dbfs:"):]
    parts = fuse.split("/")
    if len(parts) < 5 or parts[1] != "Volumes" or not all(_VOLUME_NAME.match(p) for p in parts[2:5]):
        raise UsageError(
            f"Malformed Volumes path {path!r}: write /Volumes/<catalog>/<schema>/<volume>/..."
        )
    return VolumePath(parts[2], parts[3], parts[4], "/".join(parts[5:]).strip("/"))


def to_dbfs_uri(path: str) -> str:
    """The ``dbfs:/`` URI of a ``/dbfs/`` or ``/Volumes/`` path (other paths are returned as
    they are): what Spark and the Databricks file APIs take."""
    path = to_fuse_path(path)
    if path == "/dbfs" or path.startswith("/dbfs/"):
        return "dbfs:" + (path[len("/dbfs"):] or "/")
    if path_kind(path) == VOLUME:
        return "dbfs:" + path
    return path
