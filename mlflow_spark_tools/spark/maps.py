"""Maps built inside Spark from lists of key/value structs, correct on every engine.

The embedded engine (Sail 0.7, on DataFusion's Spark functions) pairs the keys of a *sliced*
list with values of other rows in ``map_from_entries`` and ``map_from_arrays``
(apache/datafusion#25419). The lists an aggregate such as ``collect_list`` emits are slices
once a partition holds more groups than one output batch, so a map of each run's latest
metrics built straight from ``collect_list`` gave some runs other runs' values, with no error.
Sorting the entries first builds a new list, which those functions read correctly; a map has
no order, so the result is the same. Only Sail gets the sort; Spark reads lists as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlflow_spark_tools.spark.engine import SAIL, executor_of

if TYPE_CHECKING:
    from pyspark.sql import Column


def map_from_entries(entries: Column | str, spark: Any) -> Column:
    """``map_from_entries(entries)`` for an array of ``key``/``value`` structs with distinct keys,
    in an expression for the session ``spark``."""
    from pyspark.sql import functions as F

    if executor_of(spark) == SAIL:
        return F.map_from_entries(F.array_sort(entries))
    return F.map_from_entries(entries)
