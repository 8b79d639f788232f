"""The MLflow this package runs with: installed, and not older than the oldest tested release.

The wheel does not require MLflow (see setup.py): a Databricks ML runtime ships the full
``mlflow`` distribution, other places ``mlflow-skinny``, and both install the same ``mlflow``
package. The check reads the distributions' metadata and the package's own version file without
importing MLflow (an import the collector's Spark tasks should not pay for).
"""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata
from pathlib import Path

from mlflow_spark_tools.errors import MissingDependencyError

MLFLOW_FLOOR = (2, 13, 1)  # Databricks Runtime 15.4 LTS ML; keep in step with setup.py
MLFLOW_DISTRIBUTIONS = ("mlflow", "mlflow-skinny")
INSTALL_HINT = (
    "On a Databricks ML runtime use the runtime's MLflow (15.4 LTS ML or newer); elsewhere "
    "pip install 'mlflow-spark-tools[mlflow]' (mlflow-skinny) or pip install 'mlflow>={floor}'."
)
_VERSION_LINE = re.compile(r"""^VERSION\s*=\s*["']([^"']+)["']""", re.M)


def version_tuple(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version string: ``"2.13.1rc0"`` -> ``(2, 13, 1)``."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def installed_mlflow() -> dict[str, str]:
    """The installed distributions that provide the ``mlflow`` package, with their versions."""
    found = {}
    for name in MLFLOW_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def mlflow_package_version() -> str | None:
    """The version in the ``mlflow`` package's files (``mlflow/version.py``), the one an import
    gets whichever distribution wrote them last; None without an ``mlflow`` package, ``""``
    when its version file cannot be read."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or ():
        try:
            match = _VERSION_LINE.search((Path(folder) / "version.py").read_text(encoding="utf-8"))
        except OSError:
            continue
        if match:
            return match.group(1)
    return ""


def check_mlflow(found: dict[str, str] | None = None, package_version: str | None = None) -> str:
    """The MLflow version this package will use.

    Args:
        found: distribution name -> version; None reads the installed ones.
        package_version: the ``mlflow`` package's version (None: no package); not given, it is
            read from the installed package.

    Raises:
        MissingDependencyError: neither ``mlflow`` nor ``mlflow-skinny`` is installed, or the
            installed one is older than :data:`MLFLOW_FLOOR`.
    """
    if found is None:
        found = installed_mlflow()
        package_version = mlflow_package_version()
    floor = ".".join(map(str, MLFLOW_FLOOR))
    hint = INSTALL_HINT.format(floor=floor)
    if not found or package_version is None:
        raise MissingDependencyError(
            f"mlflow-spark-tools needs MLflow {floor} or newer (the mlflow or mlflow-skinny "
            f"distribution), and none is installed. {hint}", name="mlflow")
    version = package_version or max(found.values(), key=version_tuple)
    if version_tuple(version) < MLFLOW_FLOOR:
        installed = ", ".join(f"{name} {v}" for name, v in sorted(found.items()))
        raise MissingDependencyError(
            f"mlflow-spark-tools needs MLflow {floor} or newer; MLflow {version} is installed "
            f"({installed}). {hint}", name="mlflow")
    return version
