"""A password in the tracking URI never reaches any output of a failure path.

The URI ``http://alice:<password>@host:port`` is how MLflow users give basic-auth credentials.
Every command below fails in its own way (a run that does not exist, a server that is down,
with and without ``--debug`` and ``--traceback``); all of stdout and stderr is searched for the planted password.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlflow_spark_tools.failed_runs.collector import DEFERRED, FailedRunCollector
from tests.support.local_server import free_port

from .run_content import log_sample_run
from .store_files import document_path

PASSWORD = "S3cretPW-planted"


def _cli(tracking_uri: str, args: list[str], conf: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "SPARK_"))}
    env.update(MLFLOW_SPARK_TOOLS_CONF=conf, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", RUST_LOG="error")
    command = [sys.executable, "-m", "mlflow_spark_tools.cli", "--tracking-uri", tracking_uri, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def one_try_conf(tmp_path):
    """Configuration whose client tries each request once, so that a down server fails fast."""
    path = tmp_path / "one-try.yaml"
    path.write_text(
        "client:\n  retries:\n"
        "    default: {attempts: 1, initial_wait: 0.1, max_wait: 0.1, jitter: 0}\n"
        "    search_runs: {attempts: 1}\n    search_experiments: {attempts: 1}\n"
    )
    return str(path)


def test_no_command_prints_the_password(tracking_server, experiment, tmp_path, one_try_conf):
    up = tracking_server.url.replace("http://", f"http://alice:{PASSWORD}@")
    down = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    warehouse = str(tmp_path / "warehouse")
    cases = [
        (up, ["dump-run", "--run-id", "nope"], 2, "Run 'nope' does not exist on http://***@"),
        (up, ["--debug", "--traceback", "dump-run", "--run-id", "nope"], 2, "Traceback"),
        (up, ["dump-experiment", "--experiment-id", "987654"], 2, "does not exist on http://***@"),
        (down, ["--warehouse", warehouse, "build-tables", "--experiment-ids", experiment], None, "Error:"),
        (down, ["--traceback", "--warehouse", warehouse, "build-tables", "--experiment-ids", experiment], None,
         "Traceback"),
        (down, ["--warehouse", warehouse, "best-run", "--experiment-id", experiment, "--metric", "loss"], None,
         "Error:"),
        (down, ["-v", "--warehouse", warehouse, "last-run", "--experiment-id", experiment], None, "Error:"),
        (down, ["--debug", "--traceback", "dump-run", "--run-id", "nope"], None, "Traceback"),
        (down, ["--debug", "dump-run", "--run-id", "nope"], None, "Error:"),
    ]
    def run(case):
        uri, args, code, expected = case
        return case, _cli(uri, args, one_try_conf)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, cases))
    for (_, args, code, expected), result in results:
        output = result.stdout + result.stderr
        assert PASSWORD not in output, (args, output[-2000:])
        assert result.returncode != 0 and (code is None or result.returncode == code), (args, output[-2000:])
        assert expected in output, (args, output[-2000:])
        if not {"--debug", "--traceback", "-v"} & set(args):
            assert "Traceback" not in output and len(result.stderr.strip().splitlines()) == 1, (args, output)


def test_the_collector_keeps_the_password_out_of_documents_logs_and_repr(closed_proxy, experiment, tmp_path,
                                                                         caplog):
    uri = closed_proxy.url.replace("http://", f"http://alice:{PASSWORD}@")
    collector = FailedRunCollector(tmp_path / "store", tracking_uri=uri, fail_fast_seconds=0.2)
    status, _, payload_id = log_sample_run(collector, experiment, 0, with_model=False)
    assert status == DEFERRED
    document = document_path(tmp_path / "store", payload_id).read_text()
    assert PASSWORD not in document and json.loads(document)["reason"].startswith("rate_limited")
    assert PASSWORD not in caplog.text and "deferred" in caplog.text
    assert PASSWORD not in repr(collector)


def test_the_replayer_keeps_the_password_out_of_logs_summaries_and_the_store(experiment, tmp_path, caplog,
                                                                              make_replayer):
    import logging

    from mlflow_spark_tools.config import RateLimitProfile
    from mlflow_spark_tools.core.redaction import RedactingFormatter
    from mlflow_spark_tools.tracking.retries import RetryPolicy

    down = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    store = tmp_path / "store"
    collector = FailedRunCollector(store, tracking_uri=down, fail_fast_seconds=0.2, defer_transient=True)
    assert log_sample_run(collector, experiment, 0, with_model=False)[0] == DEFERRED
    caplog.set_level(logging.DEBUG, logger="mlflow_spark_tools")
    replayer = make_replayer(store, down, RateLimitProfile.load("unlimited"),
                             retry=RetryPolicy(attempts=1, deadline=1.0))
    summary = replayer.run()
    assert summary.released == 1 and "stays pending" in caplog.text
    formatter = RedactingFormatter("%(message)s")
    shown = "\n".join(formatter.format(r) for r in caplog.records) + json.dumps(summary.as_dict())
    assert PASSWORD not in shown
    for path in store.rglob("*"):
        if path.is_file():
            assert PASSWORD not in path.read_text(errors="replace"), path
