"""The progress of a table build counts each run once, however its searches overlap."""

from __future__ import annotations

import pytest

from mlflow_spark_tools.tables.fetch import RunFetcher
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
    # unfinished one is asked for by id as well
    changes = fetcher.fetch_changes(experiment, 0, [unfinished], include_deleted=True)
    assert changes.num_rows == 8 and sum(counted) == 8
    counted.clear()
    fetcher.on_runs = counted.append  # setting it starts a new count
    full = fetcher.fetch_all(experiment)  # pages of 2 over start-time intervals that share bounds
    assert full.num_rows == 7 and sum(counted) == 7
