import math

import pyarrow as pa

from mlflow_spark_tools.runs.columns import METRIC, PARAM, TAG
from mlflow_spark_tools.runs.run_batches import concat_pages, dedupe_latest, raw_name, runs_to_table
from mlflow_spark_tools.tables.fetch import _chunks, range_filter, split_range


def _run(run_id, start, end=None, params=(), metrics=(), tags=(), stage="active"):
    return {
        "info": {"run_id": run_id, "experiment_id": "7", "status": "FINISHED",
                 "start_time": str(start), "end_time": end, "lifecycle_stage": stage,
                 "artifact_uri": "x", "user_id": "u"},
        "data": {
            "params": [{"key": k, "value": v} for k, v in params],
            "metrics": [{"key": k, "value": v, "step": 0, "timestamp": 1} for k, v in metrics],
            "tags": [{"key": k, "value": v} for k, v in tags],
        },
    }


def test_runs_become_columns_with_nulls_for_missing_keys():
    table = runs_to_table([
        _run("a", 1000, 3500, params=[("lr", "0.1")], metrics=[("m", "NaN")],
             tags=[("mlflow.parentRunId", "p"), ("mlflow.runName", "alpha")]),
        _run("b", 2000, metrics=[("m", "Infinity"), ("n", 2.5)]),
    ])
    rows = table.to_pylist()
    assert rows[0]["run_name"] == "alpha"
    assert rows[0]["parent_run_id"] == "p"
    assert rows[0]["duration_seconds"] == 2.5
    assert rows[1]["duration_seconds"] is None and rows[1]["end_time"] is None
    assert math.isnan(rows[0][raw_name(METRIC, "m")])
    assert rows[1][raw_name(METRIC, "m")] == math.inf
    assert rows[0][raw_name(METRIC, "n")] is None
    assert rows[1][raw_name(PARAM, "lr")] is None
    assert table.schema.field(raw_name(METRIC, "n")).type == pa.float64()
    assert table.schema.field(raw_name(TAG, "mlflow.runName")).type == pa.string()


def test_concat_fills_missing_columns_and_dedupe_keeps_last():
    p1 = runs_to_table([_run("a", 1, params=[("x", "1")]), _run("b", 2)])
    p2 = runs_to_table([_run("a", 1, params=[("y", "2")], stage="deleted")])
    table = dedupe_latest(concat_pages([p1, p2]))
    rows = {r["run_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["lifecycle_stage"] == "deleted"
    assert rows["a"][raw_name(PARAM, "y")] == "2"


def test_split_range_covers_everything_once():
    intervals = split_range(100, 200, 4)
    assert intervals[0][0] == 100 and intervals[-1][1] is None
    for (_lo, hi), (nlo, _) in zip(intervals, intervals[1:]):
        assert hi == nlo
    assert split_range(5, 5, 4) == [(5, None)]
    assert range_filter(1, 2) == "attributes.start_time >= 1 AND attributes.start_time < 2"


def _page(*run_ids):
    return runs_to_table([{"info": {"run_id": r, "experiment_id": "1"}, "data": {"params": [{"key": r, "value": "1"}]}}
                          for r in run_ids])


def test_pages_are_gathered_into_chunks_of_whole_pages():
    pages = [_page("a", "b"), _page("c"), _page(), _page("d", "e"), _page("f")]
    chunks = list(_chunks(iter(pages), 3))
    assert [c["run_id"].to_pylist() for c in chunks] == [["a", "b", "c"], ["d", "e", "f"]]
    # each chunk has the key columns of its own pages only
    assert [n for n in chunks[0].column_names if n.startswith(PARAM)] == [raw_name(PARAM, k) for k in "abc"]
    assert [c.num_rows for c in _chunks(iter(pages), None)] == [6]
    assert [c.num_rows for c in _chunks(iter(pages), 4)] == [5, 1]  # whole pages: 2 + 1 + 0 + 2
    # an experiment without runs: one empty chunk; a last page with no run adds no chunk
    assert [c.num_rows for c in _chunks(iter([_page()]), 3)] == [0]
    assert [c.num_rows for c in _chunks(iter([]), 3)] == [0]
    assert [c.num_rows for c in _chunks(iter([_page("a", "b", "c"), _page()]), 3)] == [3]
