"""The jobs as users submit them to classic JVM Spark with Delta Lake: ``spark-submit`` with the
Delta jars and settings, tables at a warehouse path that outlives each application, read back
by another Delta reader (delta-rs) and compared cell by cell with the embedded engine's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.classic_spark import submit_arguments

from ..conftest import cells_equal
from .helpers import build, log_run, read_table
from .test_cli_and_jobs import _deferred_payloads, _env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DB = "mlflow_exp"


def _submit(job: str, args: list[str], warehouse: Path, tracking_uri: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [str(BIN / "spark-submit"), *submit_arguments(cwd / "spark-warehouse"), str(ROOT / "jobs" / job),
               *args, "--warehouse", str(warehouse)]
    return subprocess.run(command, env=_env(tracking_uri), capture_output=True, text=True, timeout=600, cwd=cwd)


def _summary(job: subprocess.CompletedProcess):
    """The JSON a job prints last on its stdout (spark-submit adds its own lines before it)."""
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    text = "\n" + job.stdout
    start = max(text.rfind("\n{"), text.rfind("\n["))
    assert start >= 0, job.stdout[-3000:]
    return json.loads(text[start:])


def _delta_rows(warehouse: Path, table: str, order: str) -> list[dict]:
    """A table's rows as delta-rs reads its files: what another reader of the lake sees."""
    from deltalake import DeltaTable

    data = DeltaTable(str(warehouse / DB / table)).to_pyarrow_table()
    return data.sort_by(order).to_pylist()


def test_build_tables_with_spark_submit_full_then_incremental(tmp_path, tracking_server, client, experiment,
                                                              settings, engine):
    """The design card's first use: two spark-submit applications, the second refreshing what
    the first built. Every cell equals the embedded engine's build of the same runs."""
    warehouse = tmp_path / "lake with space"
    first = [log_run(client, experiment, params={"alpha": a, "opt": "adam"}, metrics={"rmse": 1.0 / (a + 1)})
             for a in range(6)]  # files of several rows each (local[2] writes two)
    full = _submit("build_experiment_tables.py", ["--experiment-ids", experiment, "--format", "json"], warehouse,
                   tracking_server.url, tmp_path)
    (table,) = _summary(full)
    assert (table["mode"], table["rows_inserted"]) == ("full", 6), table
    # a new run with a new key, and a changed one
    log_run(client, experiment, params={"alpha": 7, "opt": "sgd", "extra": "x"}, metrics={"rmse": 0.05})
    client.set_tag(first[0], "reviewed", "yes")
    incremental = _submit("build_experiment_tables.py", ["--experiment-ids", experiment, "--format", "json"],
                          warehouse, tracking_server.url, tmp_path)
    (table,) = _summary(incremental)
    assert table["mode"] == "incremental" and table["rows_inserted"] == 1 and table["rows_updated"] == 1, table
    assert "_p_extra" in table["columns_added"] and "_t_reviewed" in table["columns_added"]

    # tables.deletion_vectors is null: open-source Delta's default, no deletion vectors, so that
    # delta-rs' Arrow reader (which refuses them) reads the table
    log = warehouse / DB / f"exp_{experiment}" / "_delta_log"
    actions = [json.loads(line) for commit in sorted(log.glob("*.json")) for line in commit.read_text().splitlines()]
    assert not any((a.get("add") or {}).get("deletionVector") for a in actions)
    rows = _delta_rows(warehouse, f"exp_{experiment}", "run_id")
    build(settings.with_overrides(tables__database="mlflow_exp_embedded"), experiment, engine)
    expected = read_table(engine, "mlflow_exp_embedded", experiment)
    assert len(rows) == 7 and [r["run_id"] for r in rows] == [r["run_id"] for r in expected]
    assert set(rows[0]) == set(expected[0])
    for got, want in zip(rows, expected, strict=True):
        for column, value in want.items():
            assert cells_equal(got[column], value), (column, got[column], value)


def test_replay_job_with_spark_submit_and_delta_writes_its_ledger(tmp_path, tracking_server, client, experiment,
                                                                  make_proxy):
    """The replay job on classic Spark with Delta: its lease and its ledger are JVM Delta tables."""
    store_path = tmp_path / "store"
    payloads = _deferred_payloads(make_proxy, store_path, experiment)
    warehouse = tmp_path / "lake"
    job = _submit("replay_failed_runs.py", ["--replay-dir", str(store_path), "--until-empty"], warehouse,
                  tracking_server.url, tmp_path)
    summary = _summary(job)
    assert summary["replayed"] == len(payloads) and summary["ledger_rows"] == len(payloads), summary
    ledger = _delta_rows(warehouse, "replay_log", "payload_id")
    assert [r["payload_id"] for r in ledger] == payloads
    for row in ledger:
        run = client.get_run(row["run_id"])
        assert run.info.run_name.startswith("deferred-") and run.info.status == "FINISHED"
    (lease,) = _delta_rows(warehouse, "replay_lease", "store")
    assert lease["owner"] == "", lease  # given up at the end
    # a second application finds nothing left, and the lease table it takes again
    again = _summary(_submit("replay_failed_runs.py", ["--replay-dir", str(store_path), "--until-empty"], warehouse,
                             tracking_server.url, tmp_path))
    assert again["replayed"] == 0, again
    runs = client.search_runs([experiment])
    names = [r.info.run_name for r in runs]
    assert len(names) == len(set(names)) and {r["run_id"] for r in ledger} <= {r.info.run_id for r in runs}
