"""The Vega, Vega-Lite and Vega-Embed libraries a report's HTML carries inline.

vl-convert bundles them (``javascript_bundle``) by running its JavaScript engine, which takes
about 3 s and 125 MB the first time in a process. The bundle is therefore kept in a cache file,
named after the vl-convert version, and later reports read it.

The cache is ``$MLFLOW_SPARK_TOOLS_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlflow-spark-tools``,
else ``~/.cache/mlflow-spark-tools``: a folder only its owner may write. A report's HTML runs
this script in the browser of whoever opens it, so a cache file is used only when the folder
and the file belong to this user and nobody else can write them; otherwise the bundle is made
again and not cached.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
CACHE_ENV = "MLFLOW_SPARK_TOOLS_CACHE_DIR"


def cache_dir() -> Path:
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlflow-spark-tools"


def _private(path: Path) -> bool:
    """Whether ``path`` belongs to this user and neither group nor others may write it."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return (not stat.S_ISLNK(info.st_mode) and info.st_uid == os.getuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def javascript_libraries() -> str:
    """The libraries' JavaScript, from the cache or made by vl-convert (and cached)."""
    from importlib.metadata import version

    folder = cache_dir()
    # the installed version names the file: vl-convert itself (12 MB) is not loaded for a cached bundle
    path = folder / f"vega-libraries-vl-convert-{version('vl-convert-python')}.js"
    if _private(folder) and _private(path):
        return path.read_text(encoding="utf-8")
    import vl_convert

    bundle: str = vl_convert.javascript_bundle()  # type: ignore[call-arg]  # its stub wants a snippet
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(folder):
            log.info("Not caching the report libraries: %s is writable by others", folder)
            return bundle
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=folder, delete=False, suffix=".tmp") as out:
            out.write(bundle)
        os.chmod(out.name, 0o600)
        os.replace(out.name, path)
    except OSError as exc:
        log.info("Not caching the report libraries in %s: %s", folder, exc)
    return bundle
