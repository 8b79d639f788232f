"""The progress of a table build counts each run once, however its searches overlap."""

from __future__ import annotations

import pytest

from mlflow_spark_tools.runs.run_batches import concat_pages
from mlflow_spark_tools.tables.fetch import RunFetcher, merge_changes, missing_ids
from mlflow_spark_tools.tracking.ratelimit import RateLimiter
from mlflow_spark_tools.tracking.source import TrackingSource

from .helpers import log_run


@pytest.mark.compat
def test_runs_fetched_are_counted_once(settings, client, experiment):
    ids = [log_run(client, experiment, metrics={"m": float(i)}) for i in range(7)]
    unfinished = log_run(client, experiment, finish=False)
    client.delete_run(ids[0])
    fetcher = RunFetcher(TrackingSource(settings.tracking_uri, RateLimiter(settings.profile())),
                         page_size=2, workers=2)
    counted: list[int] = []
    fetcher.on_runs = counted.append
    # finished runs match both time searches, the deleted one the deleted search too, the
    # unfinished one is asked for by id as well (an incremental refresh's reads)
    recent = fetcher.fetch_recent(experiment, 0, include_deleted=True)
    by_id = fetcher.fetch_by_ids(experiment, [unfinished])
    assert missing_ids(recent, [unfinished]) == [] and by_id.num_rows == 1
    changes = merge_changes(recent, by_id)
    assert changes.num_rows == 8 and sum(counted) == 8
    counted.clear()
    fetcher.on_runs = counted.append  # setting it starts a new count
    # pages of 2 over start-time intervals that share bounds
    full = concat_pages(list(fetcher.iter_all(experiment)))
    assert full.num_rows == 7 and sum(counted) == 7
