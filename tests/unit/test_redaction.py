import logging

import pytest

from mlflow_spark_tools.config import load_settings
from mlflow_spark_tools.core.redaction import RedactingFormatter, redact, redact_uri
from mlflow_spark_tools.failed_runs.collector import FailedRunCollector
from mlflow_spark_tools.tracking.rate_limit_errors import error_summary

PASSWORD = "S3cretPW-7f3a"


@pytest.mark.parametrize(
    "text",
    [
        f"Run 'nope' does not exist on http://alice:{PASSWORD}@127.0.0.1:5000.",
        f"HTTPSConnectionPool(host='h'): https://bob:{PASSWORD}@h/api/2.0/mlflow/runs/get",
        f"headers={{'Authorization': 'Bearer {PASSWORD}'}}",
        f"Authorization: Basic {PASSWORD}",
        f"GET /x?token={PASSWORD}&run_id=1",
        f'{{"password": "{PASSWORD}"}}',
        f"DATABRICKS_CLIENT_SECRET={PASSWORD}",
    ],
)
def test_credentials_are_masked(text):
    out = redact(text)
    assert PASSWORD not in out and "***" in out


def test_a_pat_and_a_secret_from_the_environment_are_masked(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "plain words here")
    out = redact("token dapi0123456789abcdef0123456789abcdef-2 and plain words here")
    assert "dapi0123" not in out and "plain words here" not in out


def test_ordinary_text_is_left_alone():
    text = "Took over a claim: each request takes a token of its class; see https://mlflow.org/docs"
    assert redact(text) == text


def test_uris_keep_host_port_and_path():
    assert redact_uri(f"http://alice:{PASSWORD}@127.0.0.1:5000/base") == "http://***@127.0.0.1:5000/base"
    assert redact_uri("databricks") == "databricks"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_error_summaries_reprs_and_log_records_hide_the_password(tmp_path):
    uri = f"http://alice:{PASSWORD}@127.0.0.1:1"
    assert PASSWORD not in error_summary(ValueError(f"cannot reach {uri}"))
    assert PASSWORD not in repr(FailedRunCollector(tmp_path, tracking_uri=uri))
    settings = load_settings(environ={}).with_overrides(tracking_uri=uri)
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    try:
        raise RuntimeError(f"failed on {uri}")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "talking to %s", (uri,), True)
        import sys

        record.exc_info = sys.exc_info()
    assert PASSWORD not in RedactingFormatter("%(message)s").format(record)
