"""Metric histories read from the backend database's ``metrics`` table, as Arrow tables.

One query reads every point of the selected keys of up to :data:`RUNS_PER_QUERY` runs, ordered
by run, key, step and time (the order of the table's ``(run_uuid, key, step)`` index), and its
answer streams in record batches: the driver holds one batch at a time. The values are those
the REST API returns for the same points: NaN where ``is_nan``, infinities as MLflow stored them.
``max_points`` cuts a longer history after its first points in that order, and names it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlflow_spark_tools.backend_store.connection import BackendDatabase

RUNS_PER_QUERY = 500
POINT_ROW = pa.schema([("run_id", pa.string()), ("key", pa.string()), ("step", pa.int64()),
                       ("timestamp", pa.int64()), ("value", pa.float64()), ("is_nan", pa.bool_())])
POINTS = pa.schema([("run_id", pa.string()), ("key", pa.string()), ("step", pa.int64()),
                    ("timestamp", pa.timestamp("ms", tz="UTC")), ("value", pa.float64())])


@dataclass
class QueryCounts:
    """What reading histories cost and found: ``requests`` counts queries."""

    requests: int = 0
    points: int = 0
    truncated: list[tuple[str, str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, requests: int = 0, points: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.points += points


class DatabaseHistoryReader:
    """Reads metric points of many runs per query.

    Args:
        db: the read-only connection.
        max_points: the most points kept per run and key (None keeps all).
    """

    runs_per_query = RUNS_PER_QUERY

    def __init__(self, db: BackendDatabase, max_points: int | None = None) -> None:
        self.db = db
        self.max_points = max_points
        self.counts = QueryCounts()

    def read_tables(self, run_ids: Sequence[str], keys: Sequence[str] | None) -> Iterator[pa.Table]:
        """Every point of ``keys`` (None: every key) of the runs, as tables of :data:`POINTS`
        columns, one record batch at a time; ``run_ids`` at most :data:`RUNS_PER_QUERY`."""
        if not run_ids:
            return
        where = f"m.run_uuid IN ({', '.join('?' * len(run_ids))})"
        params: list[object] = list(run_ids)
        if keys is not None:
            where += f" AND m.key IN ({', '.join('?' * len(keys))})"
            params += list(keys)
        self.counts.add(requests=1)
        kept: dict[tuple[str, str], int] = {}
        for batch in self.db.batches(
                "SELECT m.run_uuid, m.key, m.step, m.timestamp, m.value, m.is_nan FROM metrics m "
                f"WHERE {where} ORDER BY m.run_uuid, m.key, m.step, m.timestamp", params, POINT_ROW):
            table = pa.Table.from_batches([batch])
            if self.max_points is not None:
                table = self._limited(table, kept)
            values = pc.if_else(pc.fill_null(table["is_nan"], False), np.nan, table["value"])
            points = pa.table({
                "run_id": table["run_id"], "key": table["key"], "step": pc.fill_null(table["step"], 0),
                "timestamp": table["timestamp"].cast(pa.timestamp("ms", tz="UTC")), "value": values,
            }, schema=POINTS)
            self.counts.add(points=points.num_rows)
            yield points

    def _limited(self, table: pa.Table, carry: dict[tuple[str, str], int]) -> pa.Table:
        """The rows of an ordered batch within ``max_points`` of their run and key. ``carry``
        holds the points seen of the group the previous batch of the answer ended with (it may
        go on here); each cut history is noted once."""
        assert self.max_points is not None
        if table.num_rows == 0:
            return table
        run_ids, keys = table["run_id"].combine_chunks(), table["key"].combine_chunks()
        new_group = np.ones(table.num_rows, dtype=bool)
        new_group[1:] = pc.or_(pc.not_equal(run_ids[1:], run_ids[:-1]),
                               pc.not_equal(keys[1:], keys[:-1])).to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(new_group)
        lengths = np.diff(np.append(starts, table.num_rows))
        before = np.zeros(len(starts), dtype=np.int64)
        before[0] = carry.get((run_ids[0].as_py(), keys[0].as_py()), 0)
        totals = before + lengths
        rank = np.arange(table.num_rows) - np.repeat(starts, lengths) + np.repeat(before, lengths)
        for index in np.flatnonzero((before <= self.max_points) & (totals > self.max_points)).tolist():
            row = int(starts[index])
            self.counts.truncated.append((run_ids[row].as_py(), keys[row].as_py(), self.max_points))
        carry.clear()
        carry[(run_ids[-1].as_py(), keys[-1].as_py())] = int(totals[-1])
        if totals.max() <= self.max_points:
            return table
        return table.filter(pa.array(rank < self.max_points))
