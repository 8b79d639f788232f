"""Types of param columns: bigint, double or boolean when every value parses as one, else string.

MLflow stores params as strings. A column whose values all parse as integers becomes
``bigint``, else as numbers ``double``, else as ``true``/``false`` (any case) ``boolean``,
else it stays ``string``. The same rules decide, on an incremental refresh, whether new values
still fit a column's type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

BIGINT, DOUBLE, BOOLEAN, STRING = "bigint", "double", "boolean", "string"
TYPE_ORDER = (BIGINT, DOUBLE, BOOLEAN)

ARROW_TYPES = {
    BIGINT: pa.int64(),
    DOUBLE: pa.float64(),
    BOOLEAN: pa.bool_(),
    STRING: pa.string(),
}

PATTERNS = {
    BIGINT: r"^-?[0-9]{1,19}$",
    DOUBLE: r"^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[nN][aA][nN]|[iI][nN][fF]([iI][nN][iI][tT][yY])?)$",
    BOOLEAN: r"^([tT][rR][uU][eE]|[fF][aA][lL][sS][eE])$",
}


def fits(values: pa.Array | pa.ChunkedArray, data_type: str) -> bool:
    """Whether every non-null value parses as ``data_type`` (always true for string)."""
    if data_type == STRING:
        return True
    values = values.drop_null()
    if len(values) == 0:
        return True
    if not pc.all(pc.match_substring_regex(values, PATTERNS[data_type])).as_py():
        return False
    try:
        pc.cast(values, ARROW_TYPES[data_type])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False  # for example an integer outside the bigint range
    return True


def infer(values: pa.Array | pa.ChunkedArray) -> str:
    """The narrowest type every value of a param column parses as."""
    if len(values.drop_null()) == 0:
        return STRING
    for data_type in TYPE_ORDER:
        if fits(values, data_type):
            return data_type
    return STRING


def cast(values: pa.Array | pa.ChunkedArray, data_type: str) -> pa.Array | pa.ChunkedArray:
    """Convert string values to ``data_type`` (which they must fit)."""
    return pc.cast(values, ARROW_TYPES[data_type])


@dataclass
class KeyStats:
    """One key of a set of runs, as naming and typing its column needs it: how many runs have it
    and, for a param, which types all its values parse as (the rules above).

    Counted in Arrow chunk by chunk (:meth:`add`, runs staged in Spark) or given whole by an
    aggregate inside Spark (runs held there).
    """

    kind: str
    key: str
    runs: int = 0
    parses_as: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(TYPE_ORDER, True))

    def add(self, values: pa.Array | pa.ChunkedArray, *, param: bool) -> None:
        """Count another chunk's values of the key (params: narrow the types they parse as)."""
        having = len(values) - values.null_count
        self.runs += having
        if param and having:
            for data_type in TYPE_ORDER:
                if self.parses_as[data_type]:
                    self.parses_as[data_type] = fits(values, data_type)

    def fits(self, data_type: str) -> bool:
        """Whether every value of this key parses as ``data_type`` (always for string)."""
        return self.parses_as.get(data_type, True)

    def inferred_type(self) -> str:
        """The narrowest type every value parses as (:func:`infer`): string for a key no run has."""
        if self.runs == 0:
            return STRING
        return next((t for t in TYPE_ORDER if self.parses_as[t]), STRING)
