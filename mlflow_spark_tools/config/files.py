"""Where the configuration files are, and reading one of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlflow_spark_tools.errors import InvalidConfigError


def conf_dir() -> Path:
    """The directory holding the defaults and rate-limit profiles.

    A checkout (and an editable install) reads the top-level ``conf/``; the wheel ships the
    same files as ``mlflow_spark_tools._conf``.
    """
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "conf"
    if (package.parent / "setup.py").is_file() and (checkout / "defaults.yaml").is_file():
        return checkout
    # A directory without __init__.py inside the installed package (importlib.resources would
    # see a namespace package and answer with a MultiplexedPath).
    return package / "_conf"


def read_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidConfigError(f"Configuration file {path} does not exist.") from None
    except yaml.YAMLError as exc:
        raise InvalidConfigError(f"Configuration file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidConfigError(f"Configuration file {path} must hold a mapping at the top.")
    return data
