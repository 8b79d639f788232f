import math

import pytest

from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.tools.dumps import duration_words, render, run_document, utc_words


def test_times_and_durations_in_words():
    assert utc_words(1596573697304) == "2020-08-04 20:41:37.304 UTC"
    assert utc_words(None) is None
    assert duration_words(1.471) == "1.471 seconds"
    assert duration_words(3725.5) == "3725.500 seconds (1:02:05)"
    assert duration_words(None) is None


def test_a_running_run_has_no_duration_and_formats_keep_nan():
    doc = run_document({"run_id": "r", "start_time": 1000, "end_time": None}, {"b": "2", "a": "1"},
                       {"m": math.nan}, {})
    assert doc["info"]["_duration"] is None and doc["info"]["_end_time"] is None
    assert list(doc["params"]) == ["a", "b"]
    assert '"m": "NaN"' in render(doc, "json")
    assert "  m: .nan" in render(doc, "yaml").splitlines()
    assert "  m: nan" in render(doc, "text").splitlines()
    assert "end_time:   -   -" in render(doc, "text")
    with pytest.raises(UsageError, match="xml"):
        render(doc, "xml")
