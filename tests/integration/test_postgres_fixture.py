"""``mlflow server`` on a local PostgreSQL store, and runs seeded straight into that store.

The seeded runs are compared, through MLflow's own reads, with the same seed loaded into a
sqlite store: both backends must hold the same runs. The role's password must not appear in
any log or output.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from tests.support.local_server import LocalTrackingServer
from tests.support.postgres_server import LocalPostgres, postgres_unavailable_reason
from tests.support.sqlite_seed import SeedSpec, create_experiment_row, seed_runs

from .helpers import log_run

SPEC = SeedSpec(1000, params=6, metrics=5, tags=4, running_fraction=0.1, seed=11)
START_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    reason = postgres_unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with LocalPostgres(tmp_path_factory.mktemp("postgres")) as pg:
        yield pg


@pytest.fixture(scope="module")
def pg_server(postgres, tmp_path_factory):
    uri = postgres.url(postgres.create_database("mlflow"))
    with LocalTrackingServer(tmp_path_factory.mktemp("mlflow-pg"), backend_store_uri=uri) as server:
        yield server


def _all_runs(search, experiment_id):
    runs, token = [], None
    while True:
        page = search([experiment_id], "", ViewType.ACTIVE_ONLY, max_results=500, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def test_server_on_postgres_logs_and_finds_seeded_runs(postgres, pg_server, tmp_path, capfd):
    client = MlflowClient(pg_server.url)
    experiment_id = client.create_experiment("on-postgres")
    logged = log_run(client, experiment_id, params={"lr": "0.01", "opt": "adam"},
                     metrics={"loss": [(0.9, 0), (0.4, 1)], "acc": 0.8}, tags={"team": "x"})
    run = client.get_run(logged)
    assert run.data.params == {"lr": "0.01", "opt": "adam"}
    assert run.data.metrics == {"loss": 0.4, "acc": 0.8}
    assert run.data.tags["team"] == "x"
    assert [m.value for m in client.get_metric_history(logged, "loss")] == [0.9, 0.4]

    seeded = seed_runs(postgres.url("mlflow"), experiment_id, SPEC, start_ms=START_MS)
    assert len(set(seeded)) == SPEC.runs

    # The same seed in a sqlite store, read back by MLflow's own store.
    reference = SqlAlchemyStore(f"sqlite:///{tmp_path / 'reference.db'}", str(tmp_path / "artifacts"))
    try:
        reference_experiment = create_experiment_row(f"sqlite:///{tmp_path / 'reference.db'}", "reference")
        assert seed_runs(tmp_path / "reference.db", reference_experiment, SPEC, start_ms=START_MS) == seeded
        expected = {r.info.run_id: r for r in _all_runs(reference.search_runs, reference_experiment)}
    finally:
        reference.engine.dispose()

    found = {r.info.run_id: r for r in _all_runs(client.search_runs, experiment_id)}
    assert set(found) == set(seeded) | {logged}
    assert set(expected) == set(seeded)
    for run_id in seeded:
        got, want = found[run_id], expected[run_id]
        assert got.data.params == want.data.params
        assert got.data.metrics == want.data.metrics
        assert got.data.tags == want.data.tags
        assert (got.info.status, got.info.start_time, got.info.end_time) == (
            want.info.status, want.info.start_time, want.info.end_time)
    sample = found[seeded[0]]
    assert len(sample.data.params) == SPEC.params and len(sample.data.metrics) == SPEC.metrics
    assert sum(r.info.status == "RUNNING" for r in found.values()) == SPEC.runs // 10

    # MLflow's search still filters on the seeded values (keys, indexes and statistics are back).
    assert len(client.search_runs([experiment_id], "params.param_2 = 'adam'", max_results=1000)) == sum(
        r.data.params["param_2"] == "adam" for r in expected.values())

    output = capfd.readouterr()
    for text in (output.out, output.err, (pg_server.root / "server.log").read_text(errors="replace"),
                 postgres.log_path.read_text(errors="replace")):
        assert postgres.password not in text


def test_postgres_takes_only_password_logins_on_loopback(postgres, pg_server):
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=postgres.port, user=postgres.user,
                         password="not-the-password", dbname="mlflow", connect_timeout=10)
    with postgres.connect("mlflow") as conn, conn.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == ("127.0.0.1",)
        cur.execute("SHOW fsync")
        assert cur.fetchone() == ("off",)
    conn.close()
    # The store URI, password included, reaches the server through its environment only.
    command_line = Path(f"/proc/{pg_server.process.pid}/cmdline").read_bytes()
    assert postgres.password.encode() not in command_line
    assert postgres.password not in repr(postgres)
