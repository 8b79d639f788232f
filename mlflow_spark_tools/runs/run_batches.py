"""Pages of runs from the tracking server as Arrow tables.

A page of runs (in the REST API's JSON shape) becomes one Arrow table right away, so that the
driver holds runs as compact columns and never as a long list of Python objects. Param, metric
and tag columns carry raw names (:func:`raw_name`) until the table's final column names are
known. The dataset inputs of each run (MLflow 2.4+) travel in one more column,
:data:`INPUTS_COLUMN`, so that they come from the pages a build fetches anyway;
:func:`dataset_inputs` turns them into a table of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlflow_spark_tools.core.json_values import json_millis
from mlflow_spark_tools.runs.columns import INFO_COLUMNS, METRIC, PARAM, TAG

PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
CONTEXT_TAG = "mlflow.data.context"
_SEP = "\x1f"  # cannot occur in an MLflow key

INFO_ARROW_TYPES = {
    "string": pa.string(),
    "timestamp": pa.timestamp("ms", tz="UTC"),
    "double": pa.float64(),
}
INFO_SCHEMA = pa.schema([(name, INFO_ARROW_TYPES[t]) for name, t in INFO_COLUMNS])

# The dataset inputs of a run: a list column of a page table (not a run table column: the name
# has no key separator, so the table builder and the search layout leave it out).
INPUTS_COLUMN = "__dataset_inputs"
KEY_VALUE = pa.struct([("key", pa.string()), ("value", pa.string())])
DATASET_FIELDS = ("name", "digest", "source_type", "source", "context", "schema", "profile")
DATASET_INPUT = pa.struct([*((name, pa.string()) for name in DATASET_FIELDS), ("tags", pa.list_(KEY_VALUE))])
INPUTS_SCHEMA = pa.schema([("run_id", pa.string()), *((name, pa.string()) for name in DATASET_FIELDS),
                           ("tags", pa.list_(KEY_VALUE))])


def run_tags(run: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a run in the REST API's JSON shape, as a mapping."""
    return {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", ())}


def run_name_of(run_info: dict[str, Any], tags: dict[str, str]) -> str | None:
    """A run's name: ``info.run_name``, else its ``mlflow.runName`` tag (older servers set only
    the tag)."""
    return run_info.get("run_name") or tags.get(RUN_NAME_TAG) or None


def raw_name(kind: str, key: str) -> str:
    """The column name a key has inside a page table."""
    return f"{kind}{_SEP}{key}"


def split_raw_name(name: str) -> tuple[str, str] | None:
    """``(kind, key)`` of a raw column name, or None for a run info column."""
    if _SEP not in name:
        return None
    kind, key = name.split(_SEP, 1)
    return kind, key


def _metric_value(value: Any) -> float:
    # The REST API writes NaN and infinities as the strings "NaN", "Infinity", "-Infinity".
    return float(value)


def _dataset_inputs_of(run: Mapping[str, Any], documents: dict[str, str]) -> list[dict[str, Any]]:
    """A run's ``inputs.dataset_inputs`` as :data:`DATASET_INPUT` values (the context is the
    input's ``mlflow.data.context`` tag). Each schema and profile is kept once in
    ``documents``: the server repeats a dataset's (up to 16 MB) in every run that logged it."""
    found = []
    for entry in (run.get("inputs") or {}).get("dataset_inputs") or ():
        dataset = dict(entry.get("dataset") or {})
        for name in ("schema", "profile"):
            if isinstance(dataset.get(name), str):
                dataset[name] = documents.setdefault(dataset[name], dataset[name])
        tags = [{"key": t["key"], "value": t.get("value", "")} for t in entry.get("tags") or ()]
        context = next((t["value"] for t in tags if t["key"] == CONTEXT_TAG), None)
        found.append({**{name: dataset.get(name) for name in DATASET_FIELDS}, "context": context, "tags": tags})
    return found


def runs_to_table(runs: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Convert runs in the REST API's JSON shape into one Arrow table.

    Metric columns hold the latest value the server returns, exactly (NaN stays NaN); params
    and tags are strings; a key a run did not log is null. The last column,
    :data:`INPUTS_COLUMN`, lists each run's dataset inputs (empty for none).
    """
    info: dict[str, list[Any]] = {name: [] for name, _ in INFO_COLUMNS}
    inputs: list[list[dict[str, Any]]] = []
    documents: dict[str, str] = {}
    data: dict[str, list[Any]] = {}
    metric_columns: set[str] = set()
    n = 0
    for run in runs:
        run_info = run.get("info", {})
        run_data = run.get("data", {})
        tags = run_tags(run)
        start, end = json_millis(run_info.get("start_time")), json_millis(run_info.get("end_time"))
        info["run_id"].append(run_info.get("run_id") or run_info.get("run_uuid"))
        info["experiment_id"].append(str(run_info.get("experiment_id")))
        info["run_name"].append(run_name_of(run_info, tags))
        info["status"].append(run_info.get("status"))
        info["lifecycle_stage"].append(run_info.get("lifecycle_stage"))
        info["user_id"].append(run_info.get("user_id") or None)
        info["start_time"].append(start)
        info["end_time"].append(end)
        info["duration_seconds"].append(
            (end - start) / 1000.0 if start is not None and end is not None else None
        )
        info["artifact_uri"].append(run_info.get("artifact_uri"))
        info["parent_run_id"].append(tags.get(PARENT_RUN_TAG))
        inputs.append(_dataset_inputs_of(run, documents))
        for kind, entries in (
            (PARAM, run_data.get("params", ())),
            (METRIC, run_data.get("metrics", ())),
        ):
            for entry in entries:
                name = raw_name(kind, entry["key"])
                column = data.get(name)
                if column is None:
                    column = data[name] = [None] * n
                    if kind == METRIC:
                        metric_columns.add(name)
                value = entry.get("value")
                column.append(_metric_value(value) if kind == METRIC else (value or ""))
        for key, value in tags.items():
            name = raw_name(TAG, key)
            column = data.get(name)
            if column is None:
                column = data[name] = [None] * n
            column.append(value)
        n += 1
        for column in data.values():
            if len(column) < n:
                column.append(None)
    arrays = [pa.array(info[name], type=INFO_SCHEMA.field(name).type) for name in INFO_SCHEMA.names]
    names = list(INFO_SCHEMA.names)
    for name in sorted(data):
        arrays.append(pa.array(data[name], type=pa.float64() if name in metric_columns else pa.string()))
        names.append(name)
    arrays.append(pa.array(inputs, type=pa.list_(DATASET_INPUT)))
    names.append(INPUTS_COLUMN)
    return pa.Table.from_arrays(arrays, names=names)


def dataset_inputs(runs: pa.Table) -> pa.Table:
    """One row per dataset input of the runs of a page table (:data:`INPUTS_SCHEMA`): the run's
    id, the dataset's name, digest, source type, source, schema and profile as the server
    sends them, the input's context and its tags; in run order, each run's inputs in the
    server's order."""
    if INPUTS_COLUMN not in runs.column_names or runs.num_rows == 0:
        return INPUTS_SCHEMA.empty_table()
    lists = runs[INPUTS_COLUMN].combine_chunks()
    if pa.types.is_null(lists.type):  # every page lacked the column (an empty fetch)
        return INPUTS_SCHEMA.empty_table()
    flat = pc.list_flatten(lists)
    run_ids = runs["run_id"].combine_chunks().take(pc.list_parent_indices(lists))
    columns = [run_ids, *(flat.field(name) for name in DATASET_FIELDS), flat.field("tags")]
    return pa.Table.from_arrays(columns, schema=INPUTS_SCHEMA)


def empty_table() -> pa.Table:
    return INFO_SCHEMA.empty_table()


def concat_pages(pages: list[pa.Table]) -> pa.Table:
    """One table from page tables with different columns (a missing column is null)."""
    if not pages:
        return empty_table()
    return pa.concat_tables(pages, promote_options="default").combine_chunks()


def dedupe_latest(table: pa.Table) -> pa.Table:
    """Keep the last row of every run_id (pages fetched later hold the newer state)."""
    if table.num_rows == 0:
        return table
    indices = pa.array(range(table.num_rows), pa.int64())
    table = table.append_column("__row", indices)
    last = table.group_by("run_id", use_threads=False).aggregate([("__row", "max")])
    keep = pc.sort_indices(last["__row_max"])
    rows = pc.take(last["__row_max"], keep)
    return table.take(rows).drop_columns(["__row"])
