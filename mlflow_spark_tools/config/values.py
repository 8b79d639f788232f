"""Checks of single configuration values, with errors that name the key."""

from __future__ import annotations

from typing import Any

from mlflow_spark_tools.errors import InvalidConfigError


def positive_int(section: str, key: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; else an error naming
    ``section.key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidConfigError(f"{section}.{key} must be an integer >= {minimum}, got {value!r}.")
    return value


def number(where: str, value: Any, minimum: float = 0.0) -> float:
    """``value`` as a float if it is a number (not a bool) of at least ``minimum``; else an error
    naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise InvalidConfigError(f"{where} must be a number >= {minimum:g}, got {value!r}.")
    return float(value)
