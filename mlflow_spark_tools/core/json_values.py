"""Floats in JSON the way MLflow's REST API writes them: strict JSON has no NaN or infinities,
so they travel as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``."""

from __future__ import annotations

import math


def json_float(value: float) -> float | str:
    """``value``, or its string form when JSON cannot hold it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value
