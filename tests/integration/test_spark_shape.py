"""Param types inferred inside Spark agree with the Arrow rules (tables.param_types) value by
value, including the edge cases: leading zeros, 20-digit integers, infinities and NaN spelled
out, booleans in any case, a trailing newline (which Java's `$` would accept)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from mlflow_spark_tools.runs.columns import ColumnNamer
from mlflow_spark_tools.spark.arrow import frame_with_maps
from mlflow_spark_tools.tables import param_types
from mlflow_spark_tools.tables.spark_shape import key_stats, shape

pytestmark = pytest.mark.jvm

VALUES = {
    "ints": ["007", "-3", "9223372036854775807"],
    "too_big": ["1", "99999999999999999999"],
    "doubles": ["1e400", "+1.5", ".5", "5.", "NaN", "-Infinity", "inf", "3"],
    "bools": ["TRUE", "false", "True"],
    "newline": ["5\n", "6"],
    "space": [" 5"],
    "mixed": ["1", "adam"],
    "empty": [""],
}


@pytest.mark.compat
def test_spark_param_types_equal_the_arrow_rules(engine):
    runs = max(len(v) for v in VALUES.values())
    rows = []
    for i in range(runs):
        params = [{"key": k, "value": v[i]} for k, v in VALUES.items() if i < len(v)]
        rows.append({"run_id": f"r{i}", "params": params, "metrics": [], "tags": []})
    entries = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
    metric_entries = pa.list_(pa.struct([("key", pa.string()), ("value", pa.float64())]))
    data = pa.Table.from_pylist(rows, schema=pa.schema([("run_id", pa.string()), ("params", entries),
                                                        ("metrics", metric_entries), ("tags", entries)]))
    frame = frame_with_maps(engine.spark, data, [("run_id", "string"), ("params", "map<string,string>"),
                                                 ("metrics", "map<string,double>"), ("tags", "map<string,string>")])
    stats = {s.key: s for s in key_stats(frame)}
    for key, values in VALUES.items():
        assert stats[key].inferred_type() == param_types.infer(pa.array(values)), key
        assert stats[key].runs == len(values)
    info = frame.selectExpr("run_id", *(f"CAST(NULL AS {t}) AS {n}" for n, t in (
        ("experiment_id", "string"), ("run_name", "string"), ("status", "string"), ("lifecycle_stage", "string"),
        ("user_id", "string"), ("start_time", "timestamp"), ("end_time", "timestamp"),
        ("duration_seconds", "double"), ("artifact_uri", "string"), ("parent_run_id", "string"))),
        "params", "metrics", "tags")
    shaped, specs, broken = shape(info, list(stats.values()), ColumnNamer(), {"_p_ints": "bigint", "_p_mixed": "double"})
    assert broken == ["_p_mixed"]
    got = {r["run_id"]: r for r in shaped.collect()}
    assert got["r0"]["_p_ints"] == 7 and got["r1"]["_p_ints"] == -3 and got["r0"]["_p_doubles"] == float("inf")
    assert got["r0"]["_p_bools"] is True and got["r0"]["_p_newline"] == "5\n" and got["r1"]["_p_mixed"] == "adam"
