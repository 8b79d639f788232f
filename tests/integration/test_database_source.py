"""build-tables --source database: the same tables as through the REST API, cell by cell.

The experiments are logged through a real ``mlflow server`` (sqlite store here, PostgreSQL in
test_database_source_postgres.py); the same experiment is built once through REST into one
database and once from the server's backend database into another, and every table (runs,
column mapping, metric history, dataset inputs, logged models) is compared cell by cell, after
a full build and after incremental refreshes that see new, finished, deleted and changed runs.
The database builds run with a tracking URI nobody answers: they send no API request.
"""

from __future__ import annotations

import math
import warnings

import mlflow
import pytest
from mlflow.entities import Metric

from mlflow_spark_tools.backend_store.connection import BackendDatabase
from mlflow_spark_tools.backend_store.schema import UnknownSchemaError, schema_revision
from mlflow_spark_tools.spark.arrow import to_arrow
from mlflow_spark_tools.tables.build import build_experiment_tables
from tests.support.local_server import free_port

from .helpers import log_run
from .run_content import MLFLOW_3
from .same_tables import assert_same_tables as same_tables
from .same_tables import build_pair
from .test_model_tables import dataset, log_inputs

REST_DB, DIRECT_DB = "via_rest", "via_database"
# the tables of one experiment and the columns that order their rows
TABLES = {"": ("run_id",), "_columns": ("column_name",), "_metrics": ("run_id", "key", "step", "timestamp"),
          "_inputs": ("run_id", "name", "digest", "context"), "_models": ("model_id",)}


def nobody_listens() -> str:
    return f"http://127.0.0.1:{free_port()}"


def build_both(settings, backend_uri, experiment_id, engine, **kwargs):
    """Build through REST into REST_DB and from the backend database into DIRECT_DB."""
    direct = settings.with_overrides(tables__database=DIRECT_DB, tables__source="database",
                                     tables__backend_store_uri=backend_uri, tracking_uri=nobody_listens())
    return build_pair(settings.with_overrides(tables__database=REST_DB), direct, experiment_id, engine, **kwargs)


def assert_same_tables(engine, experiment_id):
    same_tables(engine, experiment_id, REST_DB, DIRECT_DB, TABLES)


def same_summary(rest, direct):
    fields = ("mode", "runs_fetched", "rows_inserted", "rows_updated", "rows_deleted", "row_count",
              "columns_added", "columns_widened", "history_points", "inputs", "models")
    return {f: getattr(rest, f) for f in fields} == {f: getattr(direct, f) for f in fields}


def log_rich_runs(client, tracking_uri, experiment_id):
    """Runs with what tables must carry: typed params, NaN and infinite metrics, histories,
    unicode and colliding keys, nested runs, a running and a deleted run, dataset inputs and
    (MLflow 3) logged models with params, tags and metrics per dataset. Returns their ids."""
    parent = log_run(client, experiment_id, params={"lr": 0.1, "depth": 3, "opt": "adam"},
                     metrics={"loss": [(1.0, 0), (0.5, 1), (0.25, 2)], "acc": float("nan")},
                     tags={"team": "vision", "a b": "spaced"}, run_name="parent")
    child = log_run(client, experiment_id, params={"lr": 0.01, "depth": 5, "opt": "sgd", "a b": "1"},
                    metrics={"loss": [(2.0, 0), (float("inf"), 1)], "acc": 0.9, "a_b": -0.0},
                    tags={"a_b": "collides", "ключ": "значение"}, parent_run_id=parent)
    running = log_run(client, experiment_id, params={"lr": 1e-4}, metrics={"loss": 3.0}, finish=False)
    deleted = log_run(client, experiment_id, params={"lr": 0.5}, metrics={"loss": 9.0})
    client.delete_run(deleted)
    empty = client.create_run(experiment_id).info.run_id  # nothing logged, still running
    client.set_tag(empty, "note", "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = log_inputs(tracking_uri, experiment_id, [
            (dataset("train", [1.0, 2.0]), "training", {"split": "a"}),
            (dataset("eval", [3.0]), "evaluation", None)])
        models = []
        if MLFLOW_3:
            from sklearn.linear_model import LinearRegression

            mlflow.set_tracking_uri(tracking_uri)
            with mlflow.start_run(experiment_id=experiment_id) as run:
                mlflow.log_param("alpha", "0.5")
                train = dataset("train", [1.0, 2.0])
                model = mlflow.sklearn.log_model(LinearRegression().fit([[1.0], [2.0]], [1.0, 2.0]), name="ridge",
                                                 serialization_format="cloudpickle", params={"k": "v"},
                                                 tags={"team": "ml"}, model_type="regressor")
                mlflow.log_metric("rmse", 0.25, step=3, model_id=model.model_id, dataset=train)
                mlflow.log_metric("mae", float("inf"), model_id=model.model_id)
            models = [run.info.run_id]
            mlflow.initialize_logged_model(name="draft", experiment_id=experiment_id, tags={"stage": "draft"})
    return {"parent": parent, "child": child, "running": running, "deleted": deleted, "empty": empty,
            "inputs": inputs, "models": models}


@pytest.mark.compat
@pytest.mark.jvm
def test_database_source_builds_the_same_tables_as_rest_and_refreshes_them_alike(
        settings, engine, client, tracking_server, experiment):
    backend = f"sqlite:///{tracking_server.db_path}"
    runs = log_rich_runs(client, tracking_server.url, experiment)

    rest, direct = build_both(settings, backend, experiment, engine, metric_history="all")
    assert direct.mode == "full" and same_summary(rest, direct), (rest, direct)
    assert direct.runs_fetched == (6 if MLFLOW_3 else 5) and direct.history_points > 0
    assert direct.inputs == (3 if MLFLOW_3 else 2)  # the model run logs its metric's dataset as an input
    assert direct.models == (2 if MLFLOW_3 else 0) or direct.models_table is None
    assert_same_tables(engine, experiment)
    if MLFLOW_3:  # a model's metrics in one order from both sources (the comparison above sorts them)
        orders = [[[m["key"] for m in row["metrics"]] for row in engine.spark.sql(
            f"SELECT metrics FROM {database}.exp_{experiment}_models ORDER BY model_id").collect()]
            for database in (REST_DB, DIRECT_DB)]
        assert orders[0] == orders[1] and ["mae", "rmse"] in orders[0], orders

    # changes an incremental refresh sees: a run finishes with a new point and a new param
    # type, a new run, a run deleted, one restored
    client.log_batch(runs["running"], metrics=[Metric("loss", 2.5, 1_900_000_000_000, 1)])
    client.set_terminated(runs["running"])
    log_run(client, experiment, params={"lr": "warmup", "new key": "x"}, metrics={"loss": [(4.0, 0), (3.5, 7)]})
    client.delete_run(runs["child"])
    client.restore_run(runs["deleted"])
    rest, direct = build_both(settings, backend, experiment, engine, metric_history="all")
    assert same_summary(rest, direct), (rest, direct)
    assert_same_tables(engine, experiment)

    # nothing changed: both refreshes find the same nothing
    rest, direct = build_both(settings, backend, experiment, engine, metric_history="all")
    assert direct.mode == "incremental" and same_summary(rest, direct)
    assert direct.rows_inserted == direct.rows_deleted == 0

    # and with deleted runs kept, a full rebuild of both
    rest, direct = build_both(settings, backend, experiment, engine, metric_history="loss",
                              include_deleted=True, full_refresh=True)
    assert same_summary(rest, direct) and direct.row_count == (8 if MLFLOW_3 else 7)
    assert_same_tables(engine, experiment)


def test_values_as_the_api_returns_them(settings, engine, client, tracking_server, experiment, monkeypatch):
    backend = f"sqlite:///{tracking_server.db_path}"
    # answers in record batches of 2 rows: the history of `m` spans two of them
    monkeypatch.setattr(BackendDatabase.__init__, "__defaults__", (2,))
    run_id = log_run(client, experiment, metrics={"m": [(float("nan"), 0), (float("-inf"), 1), (5e-324, 2)]})
    _, direct = build_both(settings, backend, experiment, engine, metric_history="all")
    row = to_arrow(engine.spark.sql(f"SELECT * FROM {DIRECT_DB}.exp_{experiment}")).to_pylist()[0]
    assert row["run_id"] == run_id and row["_m_m"] == 5e-324 and row["_mmin_m"] == -1.7976931348623157e308
    points = to_arrow(engine.spark.sql(f"SELECT step, value FROM {DIRECT_DB}.exp_{experiment}_metrics "
                                       "ORDER BY step")).to_pylist()
    assert math.isnan(points[0]["value"]) and points[1]["value"] == -1.7976931348623157e308
    assert_same_tables(engine, experiment)


def test_experiments_by_name_and_all_come_from_the_database(settings, engine, client, tracking_server,
                                                             experiment):
    backend = f"sqlite:///{tracking_server.db_path}"
    log_run(client, experiment, params={"p": 1})
    name = client.get_experiment(experiment).name
    direct = settings.with_overrides(tables__database=DIRECT_DB, tables__source="database",
                                     tables__backend_store_uri=backend, tracking_uri=nobody_listens())
    result = build_experiment_tables(direct, experiment_names=[name, "no such experiment"], engine=engine)
    assert result.exit_code == 3
    assert [s.experiment_id for s in result.summaries if s.ok] == [experiment]
    assert "no such experiment" in [s.error for s in result.summaries if not s.ok][0]
    assert result.summaries[0].error.count("\n") == 0
    with BackendDatabase(backend) as db:
        from mlflow_spark_tools.backend_store.run_reader import DatabaseRunReader

        ids = [e.experiment_id for e in DatabaseRunReader(db).all_experiments()]
    assert experiment in ids and ids == sorted(ids, key=int)


def test_a_database_at_an_unknown_schema_revision_is_refused_before_anything_is_read(tmp_path, settings, engine):
    import sqlite3

    path = tmp_path / "future mlflow.db"  # a space in the path, as users have them
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('ffffffffffff')")
    with BackendDatabase(f"sqlite:///{path}") as db:
        with pytest.raises(UnknownSchemaError, match="ffffffffffff.*Upgrade mlflow-spark-tools"):
            schema_revision(db)
    # the refusal is a usage error raised before any table is touched
    warehouse_tables = engine.spark.catalog.listTables(DIRECT_DB) if engine.spark.catalog.databaseExists(
        DIRECT_DB) else []
    with pytest.raises(UnknownSchemaError):
        build_experiment_tables(
            settings.with_overrides(tables__database=DIRECT_DB, tables__source="database",
                                    tables__backend_store_uri=f"sqlite:///{path}"),
            experiment_ids=["1"], engine=engine)
    assert len(engine.spark.catalog.listTables(DIRECT_DB) if engine.spark.catalog.databaseExists(
        DIRECT_DB) else []) == len(warehouse_tables)


def test_the_backend_database_is_opened_read_only(tracking_server):
    with BackendDatabase(f"sqlite:///{tracking_server.db_path}") as db:
        assert schema_revision(db)
        with pytest.raises(Exception, match="readonly|read-only|read only"):
            db.scalar("DELETE FROM runs")


def test_the_command_line_builds_from_the_database_and_its_errors_are_one_line(
        settings, engine, client, tracking_server, experiment, tmp_path):
    from click.testing import CliRunner

    from mlflow_spark_tools.cli.main import cli

    log_run(client, experiment, params={"p": 1}, metrics={"m": 0.5})

    def invoke(*args):
        offline = settings.with_overrides(tracking_uri=nobody_listens(), tables__database=DIRECT_DB)
        return CliRunner().invoke(cli, list(args), obj={"settings": offline, "engine": engine})

    done = invoke("build-tables", "--experiment-ids", experiment, "--source", "database",
                  "--backend-store-uri", f"sqlite:///{tracking_server.db_path}", "--format", "json")
    assert done.exit_code == 0, done.output
    assert '"runs_fetched": 1' in done.stdout

    secret = "n0t-f0r-y0ur-eyes"
    for args, message in (
            ((), "--source database needs --backend-store-uri"),
            (("--backend-store-uri", "not a uri"), "must be a SQLAlchemy database URI"),
            (("--backend-store-uri", f"sqlite:///{tmp_path}/gone.db"), "no database file"),
            (("--backend-store-uri", f"postgresql://me:{secret}@127.0.0.1:{free_port()}/mlflow"),
             "could not be opened"),
            (("--backend-store-uri", f"sqlite:///{tracking_server.db_path}", "--experiment-ids", "999999"),
             "Experiment id '999999' is not in backend store")):
        arguments = ["build-tables", "--source", "database", *args]
        if "--experiment-ids" not in args:
            arguments += ["--experiment-ids", experiment]
        result = invoke(*arguments)
        assert result.exit_code in (1, 2), (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert any(message in line for line in lines), (args, result.output)
        assert "Traceback" not in result.output and secret not in result.output
        assert len([line for line in lines if line.startswith("Error")]) == 1, result.output


def test_tables_larger_than_one_spark_connect_message_go_in_slices(settings, engine, client, tracking_server,
                                                                   experiment, monkeypatch):
    """Above MAX_INLINE_BYTES the rows reach Spark through a staging table in slices (a Spark
    Connect message holds 128 MiB): the same tables, and no staging table left behind."""
    from mlflow_spark_tools.spark import catalog

    backend = f"sqlite:///{tracking_server.db_path}"
    for i in range(30):
        log_run(client, experiment, params={"lr": i / 10, "opt": "adam" if i % 2 else "sgd"},
                metrics={"loss": [(1.0 / (i + 1), 0), (0.5 / (i + 1), 1)]}, tags={"i": str(i)}, finish=i % 5 != 0)
    rest = build_experiment_tables(settings.with_overrides(tables__database=REST_DB),
                                   experiment_ids=[experiment], engine=engine, metric_history="all")
    monkeypatch.setattr(catalog, "MAX_INLINE_BYTES", 2048)  # a few runs per slice
    direct_settings = settings.with_overrides(tables__database=DIRECT_DB, tables__source="database",
                                              tables__backend_store_uri=backend, tracking_uri=nobody_listens())
    direct = build_experiment_tables(direct_settings, experiment_ids=[experiment], engine=engine,
                                     metric_history="all")
    assert rest.exit_code == direct.exit_code == 0
    assert_same_tables(engine, experiment)
    # the unfinished ones finish: an incremental refresh whose changes go in slices too
    unfinished = [r.info.run_id for r in client.search_runs([experiment]) if r.info.status == "RUNNING"]
    for run_id in unfinished:
        client.set_terminated(run_id)
    build_experiment_tables(settings.with_overrides(tables__database=REST_DB), experiment_ids=[experiment],
                            engine=engine, metric_history="all")
    again = build_experiment_tables(direct_settings, experiment_ids=[experiment], engine=engine,
                                    metric_history="all").summaries[0]
    assert again.mode == "incremental" and again.rows_updated == len(unfinished) == 6
    assert_same_tables(engine, experiment)
    leftovers = [t.name for t in engine.spark.catalog.listTables(DIRECT_DB) if "__" in t.name]
    assert leftovers == []


@pytest.mark.jvm
def test_builds_staged_chunk_by_chunk_make_the_same_tables(settings, engine, client, tracking_server, experiment):
    """An experiment bigger than tables.chunk_runs is staged in Spark chunk by chunk and shaped
    there (from the database, and through REST with parallel page intervals): the tables are
    those of a build that holds every run, after a first build, after a full rebuild whose
    new values widen a column, and after an incremental refresh that follows it."""
    backend = f"sqlite:///{tracking_server.db_path}"
    runs = log_rich_runs(client, tracking_server.url, experiment)
    for i in range(7):  # runs that start in the same millisecond as others, across pages
        log_run(client, experiment, params={"depth": i, "lr": i / 8}, metrics={"loss": [(1.0 / (i + 1), 0)]},
                tags={"k": f"{i}"}, finish=i % 3 != 0)
    staged = {"tables__chunk_runs": 2, "tables__page_size": 2, "tables__fetch_workers": 3}

    def build(database, source, **kwargs):
        overrides = {"tables__database": database}
        if source != "rest":
            overrides.update(tables__source="database", tables__backend_store_uri=backend,
                             tracking_uri=nobody_listens())
        if source.endswith("staged"):
            overrides.update(staged)
        result = build_experiment_tables(settings.with_overrides(**overrides), experiment_ids=[experiment],
                                         engine=engine, metric_history="all", **kwargs)
        assert result.exit_code == 0, [s.error for s in result.summaries]
        return result.summaries[0]

    rest = build(REST_DB, "rest")
    direct = build(DIRECT_DB, "database staged")
    assert same_summary(rest, direct) and direct.row_count == rest.row_count > 2, (rest, direct)
    assert_same_tables(engine, experiment)
    assert [t.name for t in engine.spark.catalog.listTables(DIRECT_DB) if "__" in t.name] == []

    # a full rebuild of an existing table: a new value widens `depth` from bigint to string
    log_run(client, experiment, params={"depth": "deep"}, metrics={"loss": 0.1})
    client.delete_run(runs["parent"])
    rest = build(REST_DB, "rest", full_refresh=True)
    direct = build(DIRECT_DB, "rest staged", full_refresh=True)  # through REST this time
    assert same_summary(rest, direct) and direct.columns_widened == ["_p_depth"], (rest, direct)
    assert direct.rows_deleted == 1 and direct.rows_updated == direct.row_count - 1
    assert_same_tables(engine, experiment)

    # the staged table refreshes incrementally like any other
    client.set_terminated(runs["running"])
    rest, direct = build(REST_DB, "rest"), build(DIRECT_DB, "database staged")
    assert direct.mode == "incremental" and same_summary(rest, direct), (rest, direct)
    assert_same_tables(engine, experiment)


@pytest.mark.parametrize("share", [0.0, 1e9], ids=["joined-with-runs", "by-run-id"])
def test_entries_read_by_run_id_or_joined_with_runs_are_the_same(settings, engine, client, tracking_server,
                                                                  experiment, monkeypatch, share):
    """An experiment with few of the store's runs has its params, metrics and tags read by run
    id (index lookups), chunk by chunk when staged; a big one by joining with runs, staged in
    one query per table spilled per chunk. Both give the tables REST gives."""
    from mlflow_spark_tools.backend_store import run_reader

    monkeypatch.setattr(run_reader, "BY_ID_SHARE", share)
    monkeypatch.setattr(run_reader, "IDS_PER_QUERY", 2)  # several queries per read
    log_rich_runs(client, tracking_server.url, experiment)
    for i in range(4):
        log_run(client, experiment, params={"i": i}, metrics={"m": i / 3}, tags={"t": str(i)})
    rest, direct = build_both(settings, f"sqlite:///{tracking_server.db_path}", experiment, engine)
    assert same_summary(rest, direct) and direct.row_count > 2, (rest, direct)
    assert_same_tables(engine, experiment)
    # staged in chunks of 3 runs
    direct = build_experiment_tables(
        settings.with_overrides(tables__database=DIRECT_DB, tables__source="database", tables__chunk_runs=3,
                                tables__backend_store_uri=f"sqlite:///{tracking_server.db_path}",
                                tracking_uri=nobody_listens()),
        experiment_ids=[experiment], engine=engine, full_refresh=True).summaries[0]
    assert direct.ok and direct.row_count == rest.row_count and direct.rows_updated == rest.row_count, direct
    assert_same_tables(engine, experiment)


@pytest.fixture(scope="module")
def workspace_server(tmp_path_factory):
    """A tracking server with MLflow workspaces (3.17's --enable-workspaces): experiment names
    are unique within a workspace only."""
    from tests.support.local_server import LocalTrackingServer

    server = LocalTrackingServer(tmp_path_factory.mktemp("workspaces"), workers=1,
                                 server_args=("--enable-workspaces",)).start()
    yield server
    server.stop()


@pytest.mark.skipif(not hasattr(mlflow, "create_workspace"), reason="MLflow before workspaces")
def test_the_database_source_reads_the_workspace_the_rest_source_reads(settings, engine, workspace_server,
                                                                        monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_WORKSPACE", raising=False)
    client = MlflowClient(workspace_server.url)
    mlflow.set_tracking_uri(workspace_server.url)
    try:
        mlflow.create_workspace("team-b")
        mlflow.set_workspace("team-b")  # team-b's experiment comes first: the lower id
        theirs = client.create_experiment("forecast-prod")
        log_run(client, theirs, params={"team": "b"})
    finally:
        mlflow.set_workspace(None)
    ours = client.create_experiment("forecast-prod")
    log_run(client, ours, params={"team": "default"})
    assert int(theirs) < int(ours)
    backend = f"sqlite:///{workspace_server.db_path}"
    through_rest = settings.with_overrides(tracking_uri=workspace_server.url, tables__database="ws_rest")
    direct = settings.with_overrides(tables__database="ws_direct", tables__source="database",
                                     tables__backend_store_uri=backend, tracking_uri=nobody_listens())

    for chosen in (through_rest, direct):
        by_name = build_experiment_tables(chosen, experiment_names=["forecast-prod"], engine=engine)
        assert [s.experiment_id for s in by_name.summaries] == [ours], chosen.tables.source
        everything = build_experiment_tables(chosen, all_experiments=True, engine=engine)
        assert theirs not in [s.experiment_id for s in everything.summaries], chosen.tables.source
        assert ours in [s.experiment_id for s in everything.summaries]
    assert engine.spark.sql(f"SELECT _p_team FROM ws_direct.exp_{ours}").collect()[0][0] == "default"

    refused = build_experiment_tables(direct, experiment_ids=[theirs], engine=engine)
    assert refused.exit_code == 2 and not refused.summaries[0].ok
    assert "'team-b'" in refused.summaries[0].error and "MLFLOW_WORKSPACE=team-b" in refused.summaries[0].error

    monkeypatch.setenv("MLFLOW_WORKSPACE", "team-b")
    theirs_by_name = build_experiment_tables(direct, experiment_names=["forecast-prod"], engine=engine)
    assert [s.experiment_id for s in theirs_by_name.summaries] == [theirs]
    assert engine.spark.sql(f"SELECT _p_team FROM ws_direct.exp_{theirs}").collect()[0][0] == "b"


def test_a_dataset_with_a_big_profile_reused_by_many_runs_builds_from_every_source(
        settings, engine, client, tracking_server, experiment):
    """One user logs a dataset whose profile is 8 MB and reuses it in 40 runs: 320 MB of
    inputs rows, more than one Spark Connect message holds. Every source builds it, the
    experiment's inputs table holds every row with the whole profile."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = json.dumps({"histogram": "x" * (8 << 20)})
    big = Dataset(name="big", digest="d1g35t", source_type="local", source='{"uri": "/data/big"}',
                  schema='{"mlflow_colspec": []}', profile=profile)
    run_ids = []
    for _ in range(40):
        run = client.create_run(experiment)
        client.log_inputs(run.info.run_id, [DatasetInput(big, [InputTag("mlflow.data.context", "training")])])
        client.set_terminated(run.info.run_id)
        run_ids.append(run.info.run_id)
    rest, direct = build_both(settings, f"sqlite:///{tracking_server.db_path}", experiment, engine)
    for summary, database in ((rest, REST_DB), (direct, DIRECT_DB)):
        assert summary.inputs == 40, database
        rows = engine.spark.sql(f"SELECT run_id, length(profile) AS n, context FROM {database}.exp_{experiment}_inputs"
                                ).collect()
        assert sorted(r["run_id"] for r in rows) == sorted(run_ids)
        assert {(r["n"], r["context"]) for r in rows} == {(len(profile), "training")}


def test_an_incremental_refresh_says_how_many_back_dated_runs_it_could_not_see(
        settings, engine, client, tracking_server, experiment):
    """A run created with start and end times before the last refresh (an import, a
    back-dated run) is not among the runs an incremental refresh selects. The database source
    counts the store's runs and says how many the table lacks; a full build takes them."""
    from click.testing import CliRunner

    from mlflow_spark_tools.cli.main import cli

    log_run(client, experiment, metrics={"m": 1.0})
    direct = settings.with_overrides(tables__database=DIRECT_DB, tables__source="database",
                                     tables__backend_store_uri=f"sqlite:///{tracking_server.db_path}",
                                     tracking_uri=nobody_listens())
    first = build_experiment_tables(direct, experiment_ids=[experiment], engine=engine).summaries[0]
    assert first.mode == "full" and first.runs_not_seen is None
    old = client.create_run(experiment, start_time=1_500_000_000_000)
    client.set_terminated(old.info.run_id, end_time=1_500_000_060_000)
    built = CliRunner().invoke(cli, ["build-tables", "--experiment-ids", experiment],
                               obj={"settings": direct, "engine": engine})
    assert built.exit_code == 0, built.output
    assert (f"Experiment {experiment}: 1 runs of the store are not in the table" in built.stdout
            and "--full-refresh" in built.stdout), built.stdout
    rest = build_experiment_tables(settings.with_overrides(tables__database=REST_DB), experiment_ids=[experiment],
                                   engine=engine).summaries[0]
    assert rest.runs_not_seen is None  # the REST API cannot count without reading every run
    full = build_experiment_tables(direct, experiment_ids=[experiment], engine=engine, full_refresh=True).summaries[0]
    assert full.row_count == 2 and full.runs_not_seen is None
    again = build_experiment_tables(direct, experiment_ids=[experiment], engine=engine).summaries[0]
    assert again.mode == "incremental" and again.runs_not_seen is None
