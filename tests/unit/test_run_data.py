import json
import math

import pytest

from mlflow_spark_tools.failed_runs.signing import SigningKey
from mlflow_spark_tools.runs.run_data import (
    MAX_KEY,
    RunData,
    RunDataError,
    batches,
    plan,
    tags_at_create,
)


def _run(n_params=0, n_metrics=0, n_tags=0, value_len=10):
    return RunData(
        experiment_id="1", run_name="r", start_time=1,
        params={f"p{i}": "v" * value_len for i in range(n_params)},
        metrics=[(f"m{i % 7}", float(i), 1000 + i, i) for i in range(n_metrics)],
        tags={f"t{i}": "x" for i in range(n_tags)},
    )


@pytest.mark.parametrize("n_params, n_metrics, n_tags", [(0, 0, 0), (5, 10, 3), (250, 2500, 260), (100, 900, 100)])
def test_batches_respect_mlflow_limits_and_keep_everything(n_params, n_metrics, n_tags):
    run = _run(n_params, n_metrics, n_tags)
    chunks = batches(run)
    for c in chunks:
        assert len(c.params) <= 100 and len(c.tags) <= 100 and len(c.metrics) <= 1000
        assert len(c.params) + len(c.tags) + len(c.metrics) <= 1000
    assert [p for c in chunks for p in c.params] == list(run.params.items())
    assert [m for c in chunks for m in c.metrics] == run.metrics
    sent_tags = dict(tags_at_create(run)) | {k: v for c in chunks for k, v in c.tags}
    assert sent_tags == run.tags
    assert batches(run) == chunks  # deterministic: collector and replayer plan alike


def test_small_runs_need_three_requests():
    assert [k for k, _ in plan(_run(20, 40, 20), 0, 0)] == ["create", "batch", "terminate"]


def test_batches_stay_under_a_megabyte():
    run = _run(n_params=100, value_len=6000)
    run.params.update({f"q{i}": "w" * 6000 for i in range(100)})
    for c in batches(run):
        size = len(json.dumps({"params": [{"key": k, "value": v} for k, v in c.params]}))
        assert size < 1_000_000


def test_json_round_trip_keeps_nan_and_infinities():
    run = _run(1, 0, 1)
    run.metrics = [("a", math.nan, 1, 0), ("b", math.inf, 2, 1), ("c", -math.inf, 3, 2)]
    back = RunData.from_json(json.loads(json.dumps(run.to_json())))
    assert math.isnan(back.metrics[0][1]) and back.metrics[1][1] == math.inf and back.metrics[2][1] == -math.inf
    assert back.params == run.params and back.tags == run.tags


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["params"].update({"p": "x" * 6001}), "6001 characters"),
        (lambda d: d["tags"].update({"t": "x" * 8001}), "8001 characters"),
        (lambda d: d["params"].update({"k" * (MAX_KEY + 1): "1"}), "251 characters"),
        (lambda d: d["params"].update({"../x": "1"}), "not valid"),
        (lambda d: d["metrics"].append(["m", "abc", 1, 0]), "malformed"),
        (lambda d: d.pop("start_time"), "malformed"),
    ],
)
def test_values_over_mlflow_limits_are_rejected(mutate, message):
    data = _run(1, 1, 1).to_json()
    mutate(data)
    with pytest.raises(RunDataError, match=message):
        RunData.from_json(data)


def test_signing_key_signs_verifies_and_never_prints():
    key = SigningKey("s" * 32)
    sig = key.sign(b"blob")
    assert key.verify(b"blob", sig) and not key.verify(b"blob!", sig) and not key.verify(b"blob", None)
    assert not SigningKey("t" * 32).verify(b"blob", sig)
    assert "s" * 32 not in repr(key) + str(key)
