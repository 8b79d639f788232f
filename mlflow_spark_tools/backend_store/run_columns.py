"""Runs read from the backend database in long form, turned into the columns REST pages give
(:func:`~mlflow_spark_tools.runs.run_batches.runs_to_table`): the run info columns of run rows,
and one column per param, latest metric and tag key pivoted from (run, key, value) entries."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlflow_spark_tools.runs.columns import TAG
from mlflow_spark_tools.runs.run_batches import INFO_SCHEMA, PARENT_RUN_TAG, RUN_NAME_TAG, raw_name


def info_columns(runs: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """The run info columns (:data:`INFO_SCHEMA`) of run rows and their pivoted tags."""
    n = runs.num_rows

    def tag(key: str) -> pa.Array:
        return columns.get(raw_name(TAG, key), pa.nulls(n, pa.string()))

    names = runs["name"].combine_chunks()
    run_name = pc.if_else(pc.fill_null(pc.not_equal(names, ""), False), names, tag(RUN_NAME_TAG))
    start, end = runs["start_time"].combine_chunks(), runs["end_time"].combine_chunks()
    user = runs["user_id"].combine_chunks()
    milliseconds = pa.timestamp("ms", tz="UTC")
    values = {
        "run_id": runs["run_id"],
        "experiment_id": runs["experiment_id"].cast(pa.string()),
        "run_name": run_name,
        "status": runs["status"],
        "lifecycle_stage": runs["lifecycle_stage"],
        "user_id": pc.if_else(pc.fill_null(pc.not_equal(user, ""), False), user, pa.scalar(None, pa.string())),
        "start_time": start.cast(milliseconds),
        "end_time": end.cast(milliseconds),
        "duration_seconds": pc.divide(pc.subtract(end, start).cast(pa.float64()), 1000.0),
        "artifact_uri": runs["artifact_uri"],
        "parent_run_id": tag(PARENT_RUN_TAG),
    }
    return pa.table([values[name] for name in INFO_SCHEMA.names], schema=INFO_SCHEMA)


def pivot(run_ids: pa.Array, entries: pa.Table, kind: str) -> dict[str, pa.Array]:
    """One array per key of long-form ``entries`` (``run_id``, ``key``, ``value``), aligned with
    ``run_ids`` (null where a run has no value), named :func:`raw_name` (kind, key).

    Entries of runs not in ``run_ids`` are ignored; a (run, key) pair occurs at most once (the
    store's primary keys)."""
    if entries.num_rows == 0:
        return {}
    entries = entries.combine_chunks()
    position = pc.index_in(entries["run_id"].chunk(0), value_set=run_ids)
    keep = pc.is_valid(position)
    entries, position = entries.filter(keep), position.filter(keep)
    encoded = entries["key"].combine_chunks().dictionary_encode()
    return pivot_numbered(len(run_ids), encoded.dictionary.to_pylist(),
                          encoded.indices.to_numpy(zero_copy_only=False),
                          position.to_numpy(zero_copy_only=False).astype(np.int64),
                          entries["value"].combine_chunks(), kind)


def pivot_numbered(n: int, keys: list[str], key_numbers: np.ndarray, positions: np.ndarray, values: pa.Array,
                   kind: str) -> dict[str, pa.Array]:
    """One array of ``n`` per key: entry ``i`` (key ``keys[key_numbers[i]]``, value
    ``values[i]``) goes to row ``positions[i]``; rows without an entry are null. One pass over
    ``n`` rows per key, after one sort of the entries by key."""
    order = np.argsort(key_numbers, kind="stable")
    sorted_keys = key_numbers[order]
    rows = positions[order]
    values = values.take(pa.array(order))
    bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
    starts = np.concatenate(([0], bounds)).astype(np.int64)
    ends = np.concatenate((bounds, [len(sorted_keys)])).astype(np.int64)
    out: dict[str, pa.Array] = {}
    slot = np.empty(n, dtype=np.int64)
    for start, end in zip(starts.tolist(), ends.tolist()):
        if end <= start:
            continue
        slot.fill(-1)
        slot[rows[start:end]] = np.arange(end - start, dtype=np.int64)
        out[raw_name(kind, keys[int(sorted_keys[start])])] = values.slice(start, end - start).take(
            pa.array(slot, mask=slot < 0))
    return out
