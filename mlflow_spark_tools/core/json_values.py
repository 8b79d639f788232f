"""Values in JSON the way MLflow's REST API writes them: strict JSON has no NaN or infinities,
so floats travel as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``; 64-bit integers
such as epoch milliseconds as numbers or strings (proto3 JSON), empty or absent when unset."""

from __future__ import annotations

import math
from typing import Any


def json_float(value: float) -> float | str:
    """``value``, or its string form when JSON cannot hold it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def json_millis(value: Any) -> int | None:
    """Epoch milliseconds (or any int64 field) as the API sends them; None when unset."""
    return None if value is None or value == "" else int(value)
