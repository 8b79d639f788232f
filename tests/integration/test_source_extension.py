"""A fourth source, added as one module and one registry entry (tests/support/snapshot_source),
builds the same tables as REST from the same runs, and refreshes them alike."""

from __future__ import annotations

from mlflow_spark_tools.runs.run_batches import concat_pages
from mlflow_spark_tools.tables.fetch import RunFetcher
from mlflow_spark_tools.tables.source_registry import SOURCES, SourceEntry
from mlflow_spark_tools.tracking.ratelimit import RateLimiter
from mlflow_spark_tools.tracking.source import TrackingSource
from tests.support.snapshot_source import SNAPSHOT_DIR, write_snapshot

from .helpers import log_run
from .same_tables import assert_same_tables, build_pair

REST_DB, SNAPSHOT_DB = "via_rest_ext", "via_snapshot"


def snapshot(settings, experiment_id, folder):
    tracking = TrackingSource(settings.tracking_uri, RateLimiter(settings.profile()))
    runs = concat_pages(list(RunFetcher(tracking).iter_all(experiment_id, include_deleted=True)))
    write_snapshot(folder, experiment_id, tracking.experiment_by_id(experiment_id).name, runs)


def test_a_source_added_by_one_module_and_one_entry_builds_the_tables_rest_builds(
        settings, engine, client, experiment, tmp_path, monkeypatch):
    monkeypatch.setitem(SOURCES, "snapshot", SourceEntry("snapshot", "runs saved as Arrow files",
                                                         "tests.support.snapshot_source", "SnapshotSource"))
    monkeypatch.setenv(SNAPSHOT_DIR, str(tmp_path))
    ids = [log_run(client, experiment, params={"lr": str(0.1 * i), "depth": str(i)}, metrics={"loss": [(1.0 / (i + 1), 0)]},
                   tags={"team": "a"}) for i in range(5)]
    client.delete_run(ids[0])
    snapshot(settings, experiment, tmp_path)
    rest_settings = settings.with_overrides(tables__database=REST_DB)
    snapshot_settings = settings.with_overrides(tables__database=SNAPSHOT_DB, tables__source="snapshot")
    rest, other = build_pair(rest_settings, snapshot_settings, experiment, engine)
    assert other.mode == "full" and other.row_count == rest.row_count == 4
    assert other.columns_added == rest.columns_added and "_p_lr" in other.columns_added
    assert other.models_table is None and other.inputs_table == f"{SNAPSHOT_DB}.exp_{experiment}_inputs"
    assert_same_tables(engine, experiment, REST_DB, SNAPSHOT_DB, {"": ("run_id",), "_columns": ("column_name",)})

    # a new run and a param that no longer fits its type: both refresh alike
    log_run(client, experiment, params={"lr": "warmup"}, metrics={"loss": [(0.05, 0)]})
    snapshot(settings, experiment, tmp_path)
    rest, other = build_pair(rest_settings, snapshot_settings, experiment, engine)
    assert other.columns_widened == rest.columns_widened == ["_p_lr"] and other.row_count == 5
    assert_same_tables(engine, experiment, REST_DB, SNAPSHOT_DB, {"": ("run_id",), "_columns": ("column_name",)})
