"""The command line and the job entry points, in process and as subprocesses."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_spark_tools.cli.main import cli
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.tables.queries import best_run, last_run
from mlflow_spark_tools.tracking.ratelimit import RateLimiter
from mlflow_spark_tools.tracking.source import TrackingSource
from tests.support.local_server import free_port

from .helpers import build, log_run, table_dir, warehouse_dir

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DB = "mlflow_exp"


def invoke(settings, engine, *args):
    return CliRunner().invoke(cli, list(args), obj={"settings": settings, "engine": engine})


def _env(tracking_uri):
    env = dict(os.environ)
    env.update(MLFLOW_TRACKING_URI=tracking_uri, RUST_LOG="error", PYSPARK_PYTHON=sys.executable,
               MLFLOW_SPARK_TOOLS_PROFILE="unlimited")
    # pyspark marks a process that opened a Spark Connect session (this one did) in the
    # environment; the child processes choose their own engine, whatever engine the tests run on.
    for name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "MLFLOW_SPARK_TOOLS_TEST_ENGINE"):
        env.pop(name, None)
    return env


@pytest.mark.compat
@pytest.mark.jvm
def test_unknown_experiment_is_named_and_the_others_are_built(settings, engine, client, experiment):
    log_run(client, experiment, metrics={"m": 1.0})
    result = invoke(settings, engine, "build-tables", "--experiment-ids", f"{experiment},987654",
                    "--experiment-names", "no-such-experiment")
    assert result.exit_code == 3, result.output
    assert "987654" in result.stderr and "no-such-experiment" in result.stderr
    assert engine.spark.sql(f"SELECT count(*) FROM {DB}.exp_{experiment}").collect()[0][0] == 1
    only_unknown = invoke(settings, engine, "build-tables", "--experiment-ids", "987654")
    assert only_unknown.exit_code == 2
    assert "987654" in only_unknown.stderr and "Traceback" not in only_unknown.output


@pytest.mark.compat
def test_best_run_from_python_asks_the_configured_server_by_default(tracking_server, client, experiment,
                                                                    monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.url)
    monkeypatch.setenv("MLFLOW_SPARK_TOOLS_PROFILE", "unlimited")
    best = log_run(client, experiment, metrics={"rmse": 0.1})
    log_run(client, experiment, metrics={"rmse": 0.4})
    choice = best_run(experiment, "rmse")
    assert (choice.run_id, choice.source, choice.start_time.utcoffset().total_seconds()) == (best, "tracking server", 0)
    assert last_run(experiment).source == "tracking server"


@pytest.mark.compat
def test_best_and_last_run_of_an_unknown_or_malformed_experiment_are_usage_errors(settings, engine):
    for experiment_id in ("987654", "abc"):
        for args in (["best-run", "--metric", "loss"], ["last-run"]):
            result = invoke(settings, engine, *args, "--experiment-id", experiment_id)
            assert result.exit_code == 2, result.output
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and f"Experiment id '{experiment_id}' does not exist" in lines[0], result.stderr


@pytest.mark.compat
def test_an_experiment_name_with_commas_and_spaces_is_taken_as_it_is(settings, engine, client):
    name = f" sweep, v2 {uuid.uuid4().hex[:6]} "
    experiment = client.create_experiment(name)
    log_run(client, experiment, metrics={"m": 1.0})
    result = invoke(settings, engine, "build-tables", "--experiment-name", name, "--format", "json")
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.stdout)
    assert (summary["experiment_id"], summary["experiment_name"], summary["row_count"]) == (experiment, name, 1)


@pytest.mark.compat
@pytest.mark.jvm
def test_invalid_database_is_rejected_before_anything_is_written(settings, engine, experiment):
    before = sorted(p.name for p in warehouse_dir(engine).iterdir())
    result = invoke(settings, engine, "build-tables", "--experiment-ids", experiment,
                    "--database", "bad-name;drop")
    assert result.exit_code == 2
    assert "bad-name;drop" in result.stderr
    assert sorted(p.name for p in warehouse_dir(engine).iterdir()) == before
    schemas = [r[0] for r in engine.spark.sql("SHOW SCHEMAS").collect()]
    assert not any("bad" in s for s in schemas)


def test_a_mistyped_warehouse_is_said_and_not_created(settings, engine, client, experiment, tmp_path):
    """sql and report read tables: a --warehouse that does not exist is a usage error, and the
    folder is not created; best-run then asks the tracking server, creating nothing either."""
    typo = tmp_path / "wherehouse"
    for args in (["sql", "SELECT 1"],
                 ["report", "--experiment-id", experiment, "--metric", "m", "--out", str(tmp_path / "r.html")]):
        result = invoke(settings, engine, "--warehouse", str(typo), *args)
        assert result.exit_code == 2, result.output
        assert f"No warehouse at {typo}: no table was built there" in result.stderr
    log_run(client, experiment, metrics={"m": 0.5})
    best = invoke(settings, engine, "--warehouse", str(typo), "best-run", "--experiment-id", experiment,
                  "--metric", "m", "--format", "json")
    assert best.exit_code == 0 and json.loads(best.stdout)["source"] == "tracking server", best.output
    assert not typo.exists() and not (tmp_path / "r.html").exists()


def test_the_rate_limit_profile_is_taken_after_the_command_too(settings, engine, client, experiment):
    """The README lists --profile among the flags: build-tables, best-run and last-run take it
    after their name (as a wheel task passes it); an unknown one is a one-line usage error."""
    log_run(client, experiment, params={"a": 1}, metrics={"m": 0.5})
    built = invoke(settings, engine, "build-tables", "--experiment-ids", experiment, "--profile", "unlimited")
    assert built.exit_code == 0, built.output
    for command in (["best-run", "--metric", "m"], ["last-run"]):
        bad = invoke(settings, engine, *command, "--experiment-id", experiment, "--profile", "nosuch")
        assert bad.exit_code == 2 and "Unknown rate-limit profile 'nosuch'" in bad.stderr, bad.output
        assert "Traceback" not in bad.output


def test_escape_sequences_in_run_names_do_not_reach_the_terminal(settings, engine, client, experiment):
    """best-run and last-run print run names from a shared experiment: an escape sequence
    there would set the terminal's title or clear its screen."""
    log_run(client, experiment, metrics={"m": 0.5}, run_name="x\x1b]0;owned\x07\x1b[2Jy")
    for command in (["best-run", "--metric", "m"], ["last-run"]):
        shown = invoke(settings, engine, *command, "--experiment-id", experiment)
        assert shown.exit_code == 0, shown.output
        assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
        assert "x\\x1b]0;owned\\x07\\x1b[2Jy" in shown.stdout


def test_keys_that_share_a_column_name_are_listed_under_the_table(settings, engine, client, experiment):
    log_run(client, experiment, metrics={"Test-RMSE": 0.5, "test_rmse": 0.4})
    built = invoke(settings, engine, "build-tables", "--experiment-ids", experiment)
    assert built.exit_code == 0, built.output
    assert (f"Experiment {experiment}: metric 'Test-RMSE' is _m_test_rmse_2: _m_test_rmse is metric 'test_rmse'"
            in built.stdout.splitlines())


@pytest.mark.jvm
def test_a_full_build_nobody_asked_for_says_why(settings, engine, client, experiment):
    log_run(client, experiment, params={"batch": "32"})
    first = invoke(settings, engine, "build-tables", "--experiment-ids", experiment)
    assert first.exit_code == 0 and "full build" not in first.stdout  # a first build: obvious
    log_run(client, experiment, params={"batch": "auto"})
    widened = invoke(settings, engine, "build-tables", "--experiment-ids", experiment)
    assert widened.exit_code == 0
    assert f"Experiment {experiment}: full build: columns no longer fit their type: _p_batch" in widened.stdout


@pytest.mark.compat
@pytest.mark.jvm
def test_unreachable_tracking_server_leaves_tables_untouched(settings, engine, client, experiment):
    log_run(client, experiment, metrics={"m": 1.0})
    build(settings, experiment, engine)
    log_dir = table_dir(engine, DB, f"exp_{experiment}") / "_delta_log"
    commits = sorted(log_dir.glob("*.json"))
    dead = settings.with_overrides(tracking_uri=f"http://127.0.0.1:{free_port()}")
    result = invoke(dead, engine, "build-tables", "--experiment-ids", experiment)
    assert result.exit_code == 1
    assert "Tracking server" in result.stderr and "Traceback" not in result.output
    assert sorted(log_dir.glob("*.json")) == commits


@pytest.mark.compat
@pytest.mark.jvm
def test_sql_prints_table_json_and_csv(settings, engine, client, experiment):
    a = log_run(client, experiment, params={"depth": 3}, metrics={"rmse": 0.5})
    b = log_run(client, experiment, params={"depth": 5}, metrics={"rmse": math.nan})
    build(settings, experiment, engine)
    query = f"SELECT run_id, _p_depth, _m_rmse FROM {DB}.exp_{experiment} ORDER BY _p_depth"
    as_json = invoke(settings, engine, "sql", "--format", "json", query)
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == [
        {"run_id": a, "_p_depth": 3, "_m_rmse": 0.5},
        {"run_id": b, "_p_depth": 5, "_m_rmse": "NaN"},
    ]
    as_csv = invoke(settings, engine, "sql", "--format", "csv", query)
    assert as_csv.stdout.splitlines() == ["run_id,_p_depth,_m_rmse", f"{a},3,0.5", f"{b},5,nan"]
    as_table = invoke(settings, engine, "sql", query)
    assert a in as_table.stdout and "(2 rows)" in as_table.stdout
    bad = invoke(settings, engine, "sql", "SELECT * FROM no_such_table")
    assert bad.exit_code == 2 and "table or view no_such_table does not exist" in bad.stderr
    # engine wording replaced by what is wrong, with the close columns of the table read
    typo = invoke(settings, engine, "sql", f"SELECT _m_rmze FROM {DB}.exp_{experiment}")
    assert typo.exit_code == 2, typo.output
    assert "column _m_rmze does not exist (did you mean _m_rmse?)" in typo.stderr
    assert "ObjectName" not in typo.stderr and len(typo.stderr.strip().splitlines()) == 1
    for query, says in (("SELEC 1", "syntax error"), ("SELECT nofunc(1)", "unknown function nofunc"),
                        ("SELECT 1 / 0", None)):
        failed = invoke(settings, engine, "sql", query)
        assert failed.exit_code in (0, 2) and "Traceback" not in failed.output, failed.output
        if says is not None:
            assert failed.exit_code == 2 and says in failed.stderr, failed.output
    # DESCRIBE and SHOW COLUMNS list the table's columns on every engine, with what each holds
    for describe in (f"DESCRIBE {DB}.exp_{experiment}", f"describe table `{DB}`.`exp_{experiment}`;"):
        described = invoke(settings, engine, "sql", "--format", "json", describe)
        assert described.exit_code == 0, described.output
        rows = {r["col_name"]: (r["data_type"], r["comment"]) for r in json.loads(described.stdout)}
        assert rows["_p_depth"] == ("bigint", "param depth") and rows["_m_rmse"] == ("double", "metric rmse")
        assert rows["run_id"] == ("string", "run info") and rows["start_time"][0] == "timestamp"
    shown = invoke(settings, engine, "sql", "--format", "csv", f"SHOW COLUMNS IN exp_{experiment} IN {DB}")
    assert shown.exit_code == 0 and "_p_depth" in shown.stdout.splitlines(), shown.output
    missing = invoke(settings, engine, "sql", f"DESCRIBE {DB}.exp_nosuch")
    assert missing.exit_code == 2 and "Traceback" not in missing.output, missing.output
    assert f"table or view {DB}.exp_nosuch does not exist" in missing.stderr, missing.output


@pytest.mark.compat
@pytest.mark.jvm
def test_sql_exports_every_row_and_a_cut_table_says_so(settings, engine):
    query = "SELECT id FROM range(1500)"
    for fmt in ("csv", "json"):
        export = invoke(settings, engine, "sql", "--format", fmt, query)
        assert export.exit_code == 0 and export.stderr == "", export.output
        rows = export.stdout.splitlines()[1:] if fmt == "csv" else json.loads(export.stdout)
        assert len(rows) == 1500
    shown = invoke(settings, engine, "sql", query)
    assert "(1000 rows)" in shown.stdout and "only the first 1000 rows" in shown.stderr
    capped = invoke(settings, engine, "sql", "--format", "json", "--max-rows", "10", query)
    assert len(json.loads(capped.stdout)) == 10 and "--max-rows" in capped.stderr
    whole = invoke(settings, engine, "sql", "--max-rows", "1500", query)
    assert "(1500 rows)" in whole.stdout and whole.stderr == ""


@pytest.mark.compat
@pytest.mark.jvm
def test_best_and_last_run_agree_between_table_and_server(settings, engine, client, experiment):
    top = log_run(client, experiment, metrics={"rmse": 0.3, "acc": 0.7}, run_name="top")
    log_run(client, experiment, metrics={"rmse": math.nan, "acc": 0.1})
    log_run(client, experiment, metrics={"rmse": 0.5, "acc": 0.95})
    child = log_run(client, experiment, metrics={"rmse": 0.1, "acc": 0.2}, parent_run_id=top)
    log_run(client, experiment, params={"no_metrics": 1})
    last = log_run(client, experiment, metrics={"acc": 0.99}, parent_run_id=top)
    source = TrackingSource(settings.tracking_uri, RateLimiter(settings.profile()))
    server_answers = [
        best_run(experiment, "rmse", ascending=True, ignore_nested=False, source=source).run_id,
        best_run(experiment, "rmse", ascending=True, ignore_nested=True, source=source).run_id,
        best_run(experiment, "acc", ascending=False, ignore_nested=True, source=source).run_id,
        last_run(experiment, ignore_nested=False, source=source).run_id,
        last_run(experiment, ignore_nested=True, source=source).run_id,
    ]
    assert server_answers[:2] == [child, top]
    assert server_answers[3] == last
    build(settings, experiment, engine)
    table_choice = best_run(experiment, "rmse", engine=engine, source=source)
    assert table_choice.source == "table" and table_choice.value == 0.1
    table_answers = [
        best_run(experiment, "rmse", ascending=True, ignore_nested=False, engine=engine).run_id,
        best_run(experiment, "rmse", ascending=True, ignore_nested=True, engine=engine).run_id,
        best_run(experiment, "acc", ascending=False, ignore_nested=True, engine=engine).run_id,
        last_run(experiment, ignore_nested=False, engine=engine).run_id,
        last_run(experiment, ignore_nested=True, engine=engine).run_id,
    ]
    assert table_answers == server_answers
    cli_answer = invoke(settings, engine, "best-run", "--experiment-id", experiment,
                        "--metric", "acc", "--descending", "--ignore-nested", "--format", "json")
    assert json.loads(cli_answer.stdout)["run_id"] == server_answers[2]
    # an answer from the table says when it was refreshed; a metric logged since comes from the server
    assert table_choice.table_refreshed_at is not None and json.loads(cli_answer.stdout)["table_refreshed_at"]
    late = log_run(client, experiment, metrics={"late_metric": 1.0})
    from_server = best_run(experiment, "late_metric", engine=engine, source=source)
    assert (from_server.run_id, from_server.source) == (late, "tracking server")
    assert "table_refreshed_at" not in from_server.as_dict()
    # a metric no run logged is a mistyped name (exit 2 on the command line, as report's);
    # one whose only values are NaN, or only on nested runs, is no run qualifying (exit 1)
    with pytest.raises(UsageError, match=r"logged the metric 'rmsee'\. Did you mean 'rmse'\?"):
        best_run(experiment, "rmsee", source=source)
    only_nan = log_run(client, experiment, metrics={"diverged": math.nan})
    assert best_run(experiment, "diverged", source=source) is None and only_nan
    for aggregate in ("min", "max"):
        with pytest.raises(UsageError, match="logged the metric 'rmsee'"):
            best_run(experiment, "rmsee", aggregate=aggregate, source=source)
    typo = invoke(settings, engine, "best-run", "--experiment-id", experiment, "--metric", "rmsee")
    assert typo.exit_code == 2 and "Did you mean 'rmse'?" in typo.stderr and "Traceback" not in typo.output
    assert invoke(settings, engine, "best-run", "--experiment-id", experiment, "--metric", "diverged").exit_code == 1


@pytest.mark.compat
def test_python_job_entry_point_and_a_new_process_reading_the_tables(tmp_path, tracking_server, client, experiment):
    log_run(client, experiment, params={"alpha": 0.1}, metrics={"rmse": 0.7})
    env = _env(tracking_server.url)
    warehouse = tmp_path / "my wh é"  # a space and a non-ASCII letter: both kept as given
    job = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "build_experiment_tables.py"),
         "--experiment-ids", experiment, "--warehouse", str(warehouse)],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert job.returncode == 0, job.stderr
    assert f"exp_{experiment}" in job.stdout and "full" in job.stdout
    table_dir = warehouse / DB / f"exp_{experiment}"
    assert (table_dir / "_delta_log").is_dir() and list(table_dir.glob("*.parquet"))
    assert not [p.name for p in tmp_path.iterdir() if "%" in p.name]  # nothing percent-encoded beside it
    query = subprocess.run(
        [str(BIN / "mlflow-spark-tools"), "--warehouse", str(warehouse), "sql", "--format", "json",
         f"SELECT _p_alpha, _m_rmse FROM {DB}.exp_{experiment}"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout) == [{"_p_alpha": 0.1, "_m_rmse": 0.7}]
    # A user in New York: the answer from the table prints the start time as the server does (UTC)
    server = json.loads(subprocess.run(
        [str(BIN / "mlflow-spark-tools"), "--warehouse", str(tmp_path / "empty"), "last-run",
         "--experiment-id", experiment, "--format", "json"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=True).stdout)
    from_table = json.loads(subprocess.run(
        [str(BIN / "mlflow-spark-tools"), "--warehouse", str(warehouse), "last-run", "--experiment-id", experiment,
         "--format", "json"],
        env={**env, "TZ": "America/New_York"}, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        check=True).stdout)
    assert (server["source"], from_table["source"]) == ("tracking server", "table")
    assert from_table["start_time"] == server["start_time"] and server["start_time"].endswith("+00:00")
    assert not {"metric", "value"} & (set(server) | set(from_table))
    # No tracking URI set: the table answers, and no ./mlflow.db (MLflow 3's default store) is made
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    offline = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    best = subprocess.run(
        [str(BIN / "mlflow-spark-tools"), "--warehouse", str(warehouse), "best-run", "--experiment-id", experiment,
         "--metric", "rmse", "--format", "json"],
        env=offline, capture_output=True, text=True, timeout=300, cwd=elsewhere)
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)["source"] == "table" and list(elsewhere.iterdir()) == []


@pytest.fixture
def sail_server(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "sail"), "spark", "server", "--ip", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "error"},
    )
    try:
        import socket
        import time

        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        yield f"sc://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.compat
def test_spark_submit_with_remote(tmp_path, tracking_server, client, experiment, sail_server):
    log_run(client, experiment, params={"alpha": 0.2}, metrics={"rmse": 0.4})
    env = {**_env(tracking_server.url), "SPARK_REMOTE": sail_server}
    warehouse = str(tmp_path / "external")
    job = subprocess.run(
        [str(BIN / "spark-submit"), "--remote", sail_server,
         str(ROOT / "jobs" / "build_experiment_tables.py"), "--experiment-ids", experiment,
         "--warehouse", warehouse],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert f"exp_{experiment}" in job.stdout
    query = subprocess.run(
        [str(BIN / "mlflow-spark-tools"), "--remote", sail_server, "--warehouse", warehouse,
         "sql", "--format", "json",
         f"SELECT _p_alpha, _m_rmse FROM {DB}.exp_{experiment}"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert query.returncode == 0, query.stderr
    assert json.loads(query.stdout) == [{"_p_alpha": 0.2, "_m_rmse": 0.4}]


def test_classic_spark_submit_without_delta_fails_with_a_clear_error(tmp_path, tracking_server, client, experiment):
    log_run(client, experiment, metrics={"rmse": 0.4})
    job = subprocess.run(
        [str(BIN / "spark-submit"), "--master", "local[2]",
         str(ROOT / "jobs" / "build_experiment_tables.py"), "--experiment-ids", experiment],
        env=_env(tracking_server.url), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert job.returncode == 1
    # spark-submit passes the application's stderr through its own stdout
    errors = [line for line in (job.stdout + job.stderr).splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "cannot write Delta tables" in errors[0], job.stdout[-2000:]
    # the jars it names are the release that matches this Spark: the ones `make jars` fetched for it
    import pyspark

    from mlflow_spark_tools.spark.catalog import delta_package
    from tests.support.classic_spark import delta_jars

    package = delta_package(pyspark.__version__)
    assert f"--packages {package} " in errors[0]
    _, artifact, version = package.split(":")
    assert f"{artifact}-{version}.jar" in [jar.name for jar in delta_jars()]
    assert "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog" in errors[0]


def _deferred_payloads(make_proxy, store_path, experiment, n=2):
    from mlflow_spark_tools.failed_runs.collector import FailedRunCollector

    proxy = make_proxy({"other": 0.001})
    collector = FailedRunCollector(store_path, tracking_uri=proxy.url, fail_fast_seconds=0.2)
    payloads = []
    for i in range(n + 1):  # the proxy's one token lets the first create through
        with collector.start_run(experiment_id=experiment, run_name=f"deferred-{i}") as run:
            run.log_params({"i": i})
            run.log_metric("loss", 1.0 / (i + 1), step=3)
        if run.payload_id:
            payloads.append(run.payload_id)
    assert len(payloads) >= n
    return sorted(payloads)


def test_replay_job_with_spark_submit_remote_writes_the_ledger(tmp_path, tracking_server, client, experiment,
                                                               sail_server, make_proxy):
    store_path = tmp_path / "store"
    payloads = _deferred_payloads(make_proxy, store_path, experiment)
    env = {**_env(tracking_server.url), "SPARK_REMOTE": sail_server}
    warehouse = str(tmp_path / "external")
    job = subprocess.run(
        [str(BIN / "spark-submit"), "--remote", sail_server, str(ROOT / "jobs" / "replay_failed_runs.py"),
         "--replay-dir", str(store_path), "--until-empty", "--warehouse", warehouse],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert f'"ledger_rows": {len(payloads)}' in job.stdout
    query = subprocess.run(
        [str(BIN / "mlflow-spark-tools"), "--remote", sail_server, "--warehouse", warehouse, "sql", "--format",
         "json", f"SELECT payload_id, run_id FROM {DB}.replay_log ORDER BY payload_id"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert query.returncode == 0, query.stderr
    rows = json.loads(query.stdout)
    assert [r["payload_id"] for r in rows] == payloads
    for row in rows:
        run = client.get_run(row["run_id"])
        assert run.info.run_name.startswith("deferred-") and run.info.status == "FINISHED"
        assert run.data.params["i"] == run.info.run_name.split("-")[1]


def test_replay_on_spark_without_delta_refuses_before_sending_anything(tmp_path, tracking_server, client,
                                                                       experiment, make_proxy):
    """The store's lease is a Delta table: without Delta no replay may hold the store, so none
    starts (one line saying how to add Delta), and every payload stays pending."""
    store_path = tmp_path / "store"
    payloads = _deferred_payloads(make_proxy, store_path, experiment)
    before = {r.info.run_id for r in client.search_runs([experiment])}
    job = subprocess.run(
        [str(BIN / "spark-submit"), "--master", "local[2]", str(ROOT / "jobs" / "replay_failed_runs.py"),
         "--replay-dir", str(store_path), "--until-empty"],
        env=_env(tracking_server.url), capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert job.returncode == 1, job.stdout[-3000:]
    errors = [line for line in (job.stdout + job.stderr).splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "replay_lease" in errors[0] and "cannot write Delta tables" in errors[0], errors
    assert "Traceback" not in job.stdout + job.stderr
    from mlflow_spark_tools.failed_runs.store import FailedRunStore

    assert FailedRunStore(store_path).ids("pending") == payloads
    assert {r.info.run_id for r in client.search_runs([experiment])} == before
