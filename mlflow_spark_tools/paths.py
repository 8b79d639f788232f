"""Databricks path rules: ``dbfs:/`` URIs, their ``/dbfs/`` fuse paths, and Volumes.

MLflow and plain Python file APIs do not understand ``dbfs:/`` URIs; on a Databricks node the
same files are at ``/dbfs/...``. Unity Catalog volumes are mounted at
``/Volumes/<catalog>/<schema>/<volume>/...``.
"""

from __future__ import annotations

import re

from mlflow_spark_tools.errors import UsageError

_VOLUME = re.compile(r"^/Volumes/[^/]+/[^/]+/[^/]+(/.*)?$")


def to_fuse_path(path: str) -> str:
    """The local (fuse) path of ``path``: ``dbfs:/x`` -> ``/dbfs/x``; ``file:`` stripped.

    Raises:
        UsageError: for an empty path, a malformed ``dbfs:`` URI, a ``/Volumes`` path that
            lacks catalog, schema or volume, or a cloud URI (``s3://`` ...) with no fuse path.
    """
    if not isinstance(path, str) or not path.strip():
        raise UsageError("The path is empty.")
    path = path.strip()
    if path.startswith("dbfs:"):
        rest = path[len("dbfs:"):]
        if not rest.startswith("/") or rest.startswith("//"):
            raise UsageError(f"Malformed DBFS URI {path!r}: write dbfs:/path/to/dir.")
        return "/dbfs" + rest
    if path.startswith("file:"):
        rest = re.sub(r"^file:(//)?", "", path)
        return rest if rest.startswith("/") else "/" + rest
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path):
        raise UsageError(
            f"{path!r} is not a file path: use a /dbfs/..., /Volumes/... or local path."
        )
    if path.startswith("/Volumes") and not _VOLUME.match(path):
        raise UsageError(
            f"Malformed Volumes path {path!r}: write /Volumes/<catalog>/<schema>/<volume>/..."
        )
    return path


def to_dbfs_uri(path: str) -> str:
    """The ``dbfs:/`` URI of a ``/dbfs/`` fuse path (other paths are returned as they are)."""
    path = to_fuse_path(path)
    if path == "/dbfs" or path.startswith("/dbfs/"):
        return "dbfs:" + (path[len("/dbfs"):] or "/")
    return path
