"""Fetching the runs of an experiment as Arrow tables, in parallel where the rate limit allows.

A full fetch reads the first page ordered by start time. If there are more, it splits the rest
of the start-time range into intervals and pages through them in parallel threads; the
``search_runs`` token bucket keeps the request rate at the configured qps however many threads
run. Each page becomes an Arrow table in the thread that fetched it.

An incremental fetch reads runs that started or ended since a watermark, the runs that were
unfinished at the last refresh (by id), and the deleted runs.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mlflow_spark_tools.runs.run_batches import concat_pages, dedupe_latest, runs_to_table
from mlflow_spark_tools.tracking.pages import ACTIVE_ONLY, ALL, DELETED_ONLY, follow_pages
from mlflow_spark_tools.tracking.source import TrackingSource

log = logging.getLogger(__name__)

ORDER_ASC = ["attributes.start_time ASC"]
ORDER_DESC = ["attributes.start_time DESC"]
IDS_PER_FILTER = 250
MAX_INTERVALS = 256
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RunFetcher:
    """Reads runs of one experiment into Arrow tables.

    Args:
        source: the tracking server.
        page_size: runs per request.
        workers: parallel requests for a full fetch.
    """

    def __init__(self, source: TrackingSource, page_size: int = 1000, workers: int = 4) -> None:
        self.source = source
        self.page_size = page_size
        self.workers = max(1, workers)
        self._on_runs: Callable[[int], None] | None = None
        self._counted_ids: set[str] = set()
        self._count_lock = threading.Lock()

    @property
    def on_runs(self) -> Callable[[int], None] | None:
        """Told how many runs each page brought that no page before it did (the searches of an
        incremental fetch, and the start-time intervals of a full one, overlap); setting it
        starts the count afresh."""
        return self._on_runs

    @on_runs.setter
    def on_runs(self, callback: Callable[[int], None] | None) -> None:
        with self._count_lock:
            self._on_runs = callback
            self._counted_ids = set()

    def _counted(self, runs: list[dict[str, Any]]) -> pa.Table:
        if self._on_runs is not None and runs:
            with self._count_lock:
                before = len(self._counted_ids)
                self._counted_ids.update(str(run.get("info", {}).get("run_id")) for run in runs)
                new = len(self._counted_ids) - before
            if new:
                self._on_runs(new)
        return runs_to_table(runs)

    def _pages_to_table(self, experiment_id: str, filter_string: str, view: str) -> list[pa.Table]:
        return [
            self._counted(runs)
            for runs in self.source.iter_pages(
                experiment_id, filter_string, view, self.page_size, ORDER_ASC
            )
        ]

    def iter_all(self, experiment_id: str, *, include_deleted: bool = False,
                 chunk_runs: int | None = None) -> Iterator[pa.Table]:
        """Every run of the experiment in tables of about ``chunk_runs`` runs (whole pages; one
        table when None; at least one, empty for an experiment without runs). At most a few
        pages beyond the chunk being filled are held: the parallel requests run a bounded
        window ahead."""
        yield from _chunks(self._all_pages(experiment_id, ALL if include_deleted else ACTIVE_ONLY), chunk_runs)

    def _all_pages(self, experiment_id: str, view: str) -> Iterator[pa.Table]:
        first_runs, token = self.source.search_page(
            experiment_id, "", view, self.page_size, ORDER_ASC
        )
        first = self._counted(first_runs)
        del first_runs
        yield first
        if not token:
            return
        if self.workers == 1:
            rest = follow_pages(lambda t: self.source.search_page(experiment_id, "", view, self.page_size,
                                                                  ORDER_ASC, t), start=token)
            for runs in rest:
                yield self._counted(runs)
            return
        # Everything that started before the last start time of the first page is in it; runs
        # sharing that last start time may continue on later pages, so the rest of the range
        # starts at that time and runs seen already are dropped. The first page's density
        # estimates how many runs the rest holds, so that each interval is about one page.
        earliest = first["start_time"][0].value
        boundary = first["start_time"][-1].value
        newest, _ = self.source.search_page(experiment_id, "", view, 1, ORDER_DESC)
        latest = int(newest[0]["info"]["start_time"]) if newest else boundary
        per_ms = first.num_rows / max(1, boundary - earliest)
        expected_pages = (latest - boundary) * per_ms / self.page_size
        n_intervals = min(MAX_INTERVALS, max(self.workers, math.ceil(expected_pages * 1.2)))
        intervals = iter(split_range(boundary, latest, n_intervals))
        seen = first.filter(pc.equal(first["start_time"], first["start_time"][-1]))["run_id"]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            window: deque[Future[list[pa.Table]]] = deque()
            for bounds in itertools.islice(intervals, self.workers * 2):
                window.append(pool.submit(self._pages_to_table, experiment_id, range_filter(*bounds), view))
            while window:
                pages = window.popleft().result()
                following = next(intervals, None)
                if following is not None:
                    window.append(pool.submit(self._pages_to_table, experiment_id, range_filter(*following), view))
                for page in pages:
                    yield page.filter(pc.invert(pc.is_in(page["run_id"], value_set=seen)))

    def fetch_recent(self, experiment_id: str, since_ms: int, *, include_deleted: bool = False) -> pa.Table:
        """Runs that ended or started at or after ``since_ms``, and every deleted run.

        The three searches run in parallel, the one most likely to return runs (recently
        ended) first. One row per run; a deleted run's deleted state wins.
        """
        view = ALL if include_deleted else ACTIVE_ONLY
        searches = [
            (f"attributes.end_time >= {int(since_ms)}", view),
            (f"attributes.start_time >= {int(since_ms)}", view),
            ("", DELETED_ONLY),
        ]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(searches))) as pool:
            parts = list(pool.map(lambda f: self._pages_to_table(experiment_id, *f), searches))
        # Deleted runs come last so that their state wins over an active copy fetched earlier.
        return dedupe_latest(concat_pages([page for part in parts for page in part]))

    def count_runs(self, experiment_id: str, *, include_deleted: bool = False) -> int | None:
        """None: the REST API counts runs only by reading them all."""
        return None

    def fetch_by_ids(self, experiment_id: str, run_ids: Iterable[str]) -> pa.Table:
        """The current state of the given runs (deleted ones included), in parallel chunks."""
        ids = sorted({r for r in run_ids if _RUN_ID.match(r)})
        searches = [
            "attributes.run_id IN ("
            + ", ".join(f"'{run_id}'" for run_id in ids[i : i + IDS_PER_FILTER])
            + ")"
            for i in range(0, len(ids), IDS_PER_FILTER)
        ]
        if not searches:
            return concat_pages([])
        with ThreadPoolExecutor(max_workers=min(self.workers, len(searches))) as pool:
            parts = list(pool.map(lambda f: self._pages_to_table(experiment_id, f, ALL), searches))
        return concat_pages([page for part in parts for page in part])


def missing_ids(recent: pa.Table, run_ids: Iterable[str]) -> list[str]:
    """The ids in ``run_ids`` that ``recent`` does not hold."""
    seen = set(recent["run_id"].to_pylist())
    return [r for r in run_ids if r not in seen]


def merge_changes(recent: pa.Table, by_id: pa.Table) -> pa.Table:
    """One table of changed runs from the time-filtered and the by-id fetches."""
    return dedupe_latest(concat_pages([by_id, recent]))


def _chunks(pages: Iterable[pa.Table], chunk_runs: int | None) -> Iterator[pa.Table]:
    """Pages gathered into tables of at least ``chunk_runs`` runs (the last one may hold
    fewer; all of them in one table when None); one empty table when there are none."""
    held: list[pa.Table] = []
    rows = 0
    given = False
    for page in pages:
        held.append(page)
        rows += page.num_rows
        if chunk_runs is not None and rows >= chunk_runs:
            yield concat_pages(held)
            held, rows, given = [], 0, True
    if held and (rows or not given):
        yield concat_pages(held)
    elif not given:
        yield concat_pages([])


def split_range(low: int, high: int, n: int) -> list[tuple[int, int | None]]:
    """Split ``[low, high]`` into up to ``n`` half-open intervals; the last one is open-ended."""
    if high <= low or n <= 1:
        return [(low, None)]
    step = max(1, -(-(high - low) // n))
    bounds = list(range(low, high, step))
    return [(b, bounds[i + 1] if i + 1 < len(bounds) else None) for i, b in enumerate(bounds)]


def range_filter(low: int, high: int | None) -> str:
    text = f"attributes.start_time >= {int(low)}"
    if high is not None:
        text += f" AND attributes.start_time < {int(high)}"
    return text
