"""Bulk-load synthetic runs straight into an MLflow store's tables, for load tests and benchmarks.

Logging 20,000 runs through the REST API takes many minutes; inserting the same rows into the
store's tables takes seconds. The rows are what MLflow itself writes: a run, its params, one
point per metric (history and latest value) and its tags. Stop writing to the store through
the server while seeding (the server may keep running).

A store is a sqlite file (a path, or a ``sqlite:///`` URI) or a PostgreSQL database (a
``postgresql://`` SQLAlchemy URI, loaded with ``COPY``). Both receive the same rows for the same
:class:`SeedSpec` and ``start_ms``.

Into PostgreSQL, a load that at least doubles the runs drops the keys, indexes and foreign keys
of the params, metrics, latest_metrics and tags tables, copies the rows and builds them again,
all in its transaction: building an index over the loaded rows (one sort) is many times faster
than inserting millions of random run ids into it one by one. The tables are locked (readers
wait) until the transaction commits.
"""

from __future__ import annotations

import gc
import io
import logging
import queue
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BATCH_RUNS = 5000  # runs generated and written at a time, which bounds the memory a seed needs

RUN_COLUMNS = ("run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id", "status",
               "start_time", "end_time", "source_version", "lifecycle_stage", "artifact_uri",
               "experiment_id")
PARAM_COLUMNS = ('"key"', "value", "run_uuid")
METRIC_COLUMNS = ('"key"', "value", "timestamp", "run_uuid", "step", "is_nan")
LATEST_METRIC_COLUMNS = ('"key"', "value", "timestamp", "step", "is_nan", "run_uuid")
TAG_COLUMNS = ('"key"', "value", "run_uuid")
SEEDED_TABLES = ("runs", "params", "metrics", "latest_metrics", "tags")
KEYED_TABLES = ("params", "metrics", "latest_metrics", "tags")  # rows of a run, one per key


@dataclass(frozen=True)
class SeedSpec:
    """Shape of the synthetic runs."""

    runs: int
    params: int = 20
    metrics: int = 20
    tags: int = 20
    running_fraction: float = 0.0
    seed: int = 0
    steps: int = 1  # points per metric: steps 0 .. steps-1, one second apart; the last is the latest


@dataclass
class _Batch:
    """Rows of consecutive runs, each table's tuples in the column order of its ``*_COLUMNS``."""

    run_ids: list[str]
    runs: list[tuple]
    params: list[tuple]
    metrics: list[tuple]
    latest: list[tuple]
    tags: list[tuple]


def param_value(rng: random.Random, i: int) -> str:
    """Params of three kinds, so that typed columns get bigint, double and string."""
    kind = i % 3
    if kind == 0:
        return str(rng.randint(1, 500))
    if kind == 1:
        return repr(rng.choice([1e-4, 3e-4, 1e-3, 0.01, 0.05, 0.1, 0.5]))
    return rng.choice(["adam", "sgd", "rmsprop", "adagrad"])


def seed_runs(
    target: Path | str,
    experiment_id: str,
    spec: SeedSpec,
    artifact_root: str = "/tmp/artifacts",
    start_ms: int | None = None,
) -> list[str]:
    """Insert ``spec.runs`` runs into ``experiment_id``; returns their run ids in start order.

    Runs start one second apart, the last one a second before ``start_ms`` (now when not
    given); ``running_fraction`` of them are left RUNNING (no end time), the others FINISHED.
    All rows go in one transaction.

    Args:
        target: the store: a sqlite file's path, a ``sqlite:///`` URI or a ``postgresql://``
            (``postgresql+psycopg2://``) URI.
        experiment_id: an existing experiment.
        spec: how many runs, and their params, metrics and tags.
        artifact_root: the runs' artifact URIs are ``<artifact_root>/<experiment>/<run>/artifacts``.
        start_ms: epoch milliseconds a second after the last run's start.
    """
    return seed_experiments(target, [(experiment_id, spec)], artifact_root, start_ms)[experiment_id]


def seed_experiments(
    target: Path | str,
    plan: Sequence[tuple[str, SeedSpec]],
    artifact_root: str = "/tmp/artifacts",
    start_ms: int | None = None,
) -> dict[str, list[str]]:
    """:func:`seed_runs` for several experiments in one transaction; returns each one's run ids.

    One call for many experiments lets PostgreSQL build its indexes once. Give each experiment
    its own ``SeedSpec.seed``: run ids come from the seed, so two experiments with the same
    seed would get the same ids.
    """
    run_ids: dict[str, list[str]] = {}
    for experiment_id, _ in plan:
        if experiment_id in run_ids:
            raise ValueError(f"experiment {experiment_id} appears twice in the plan")
        run_ids[experiment_id] = []

    def batches() -> Iterator[_Batch]:
        for experiment_id, spec in plan:
            for batch in _batches(experiment_id, spec, artifact_root, start_ms):
                run_ids[experiment_id].extend(batch.run_ids)
                yield batch

    postgres = _postgres_connect_args(target)
    with _cyclic_gc_paused():
        if postgres is not None:
            _write_postgres(postgres, batches(), sum(spec.runs for _, spec in plan))
        else:
            _write_sqlite(_sqlite_path(target), batches())
    return run_ids


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: the millions of row tuples a seed creates (none in a
    cycle) would start many full collections that free nothing."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def create_experiment_row(target: Path | str, name: str, artifact_root: str = "/tmp/artifacts") -> str:
    """Insert an active experiment named ``name`` straight into the store; returns its id.

    Its artifact location is ``<artifact_root>/<id>``, as MLflow derives it from a default
    artifact root; the workspace column, where there is one, takes its default. Faster than the
    REST API when a benchmark needs many experiments.
    """
    now = int(time.time() * 1000)
    insert = ("INSERT INTO experiments (name, artifact_location, lifecycle_stage, creation_time, "
              "last_update_time) VALUES ({0}, NULL, 'active', {0}, {0})")
    update = "UPDATE experiments SET artifact_location = {0} WHERE experiment_id = {0}"
    postgres = _postgres_connect_args(target)
    if postgres is not None:
        import psycopg2

        with closing(psycopg2.connect(**postgres)) as conn, conn, conn.cursor() as cur:
            cur.execute(insert.format("%s") + " RETURNING experiment_id", (name, now, now))
            experiment_id = cur.fetchone()[0]
            cur.execute(update.format("%s"), (f"{artifact_root}/{experiment_id}", experiment_id))
        return str(experiment_id)
    with closing(sqlite3.connect(str(_sqlite_path(target)), timeout=60)) as conn, conn:
        experiment_id = conn.execute(insert.format("?"), (name, now, now)).lastrowid
        conn.execute(update.format("?"), (f"{artifact_root}/{experiment_id}", experiment_id))
    return str(experiment_id)


def _batches(experiment_id: str, spec: SeedSpec, artifact_root: str,
             start_ms: int | None) -> Iterator[_Batch]:
    """The runs of one experiment, :data:`BATCH_RUNS` at a time, drawn from one random stream
    so that batching does not change them."""
    rng = random.Random(spec.seed)
    now = int(time.time() * 1000) if start_ms is None else start_ms
    first = now - spec.runs * 1000
    running_every = int(1 / spec.running_fraction) if spec.running_fraction > 0 else 0
    param_keys = [f"param_{i}" for i in range(spec.params)]
    metric_keys = [f"metric_{i}" for i in range(spec.metrics)]
    tag_keys = [f"tag_{i}" for i in range(max(0, spec.tags - 2))]
    for batch_start in range(0, spec.runs, BATCH_RUNS):
        batch = _Batch([], [], [], [], [], [])
        for n in range(batch_start, min(spec.runs, batch_start + BATCH_RUNS)):
            run_id = uuid.UUID(int=rng.getrandbits(128)).hex
            batch.run_ids.append(run_id)
            start = first + n * 1000
            running = running_every > 0 and n % running_every == 0
            end = None if running else start + rng.randint(1000, 600000)
            name = f"run-{n}"
            batch.runs.append(
                (run_id, name, "UNKNOWN", "", "", "seed", "RUNNING" if running else "FINISHED",
                 start, end, "", "active", f"{artifact_root}/{experiment_id}/{run_id}/artifacts",
                 int(experiment_id))
            )
            batch.params.extend((key, param_value(rng, i), run_id) for i, key in enumerate(param_keys))
            for key in metric_keys:
                value = rng.random()
                if spec.steps > 1:
                    last = spec.steps - 1
                    batch.metrics.extend((key, _curve(value, step), start + step * 1000, run_id, step, 0)
                                         for step in range(spec.steps))
                    batch.latest.append((key, _curve(value, last), start + last * 1000, last, 0, run_id))
                else:
                    ts = start + 500
                    batch.metrics.append((key, value, ts, run_id, 0, 0))
                    batch.latest.append((key, value, ts, 0, 0, run_id))
            batch.tags.append(("mlflow.runName", name, run_id))
            batch.tags.append(("mlflow.user", "seed", run_id))
            batch.tags.extend((key, f"value-{rng.randint(0, 50)}", run_id) for key in tag_keys)
        yield batch


def _curve(start: float, step: int) -> float:
    """A loss-like curve: falls from ``start`` + 1 towards ``start``."""
    return start + 1.0 / (1 + step)


# sqlite


def _sqlite_path(target: Path | str) -> Path:
    text = str(target)
    if text.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        return Path(make_url(text).database or "")
    return Path(target)


def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({','.join('?' * len(columns))})"


def _write_sqlite(db_path: Path, batches: Iterator[_Batch]) -> None:
    with closing(sqlite3.connect(str(db_path), timeout=60)) as conn, conn:
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB for this connection's index inserts
        for batch in batches:
            conn.executemany(_insert_sql("runs", RUN_COLUMNS), batch.runs)
            conn.executemany(_insert_sql("params", PARAM_COLUMNS), batch.params)
            conn.executemany(_insert_sql("metrics", METRIC_COLUMNS), batch.metrics)
            conn.executemany(_insert_sql("latest_metrics", LATEST_METRIC_COLUMNS), batch.latest)
            conn.executemany(_insert_sql("tags", TAG_COLUMNS), batch.tags)


# PostgreSQL


def _postgres_connect_args(target: Path | str) -> dict | None:
    """psycopg2 connection arguments for a ``postgresql[+driver]://`` URI, None for other targets."""
    if not isinstance(target, str) or not target.startswith(("postgresql:", "postgresql+", "postgres:")):
        return None
    from sqlalchemy.engine import make_url

    url = make_url(target)
    args = {"host": url.host, "port": url.port, "user": url.username, "password": url.password,
            "dbname": url.database, **url.query}
    return {key: value for key, value in args.items() if value is not None}


def _copy_escape(value: object) -> str:
    """A field of PostgreSQL's COPY text format."""
    if value is None:
        return "\\N"
    return (str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def _copy_texts(batch: _Batch) -> list[tuple[str, tuple[str, ...], str]]:
    """Each table's rows of ``batch`` as COPY text. Keys, values and run ids are generated from
    letters, digits, ``.``, ``_`` and ``-`` and go in as they are; runs hold ``artifact_root``,
    so their fields are escaped. ``repr`` writes floats exactly; ``is_nan`` is a boolean here."""
    runs = "".join("\t".join(map(_copy_escape, row)) + "\n" for row in batch.runs)
    params = "".join(f"{k}\t{v}\t{r}\n" for k, v, r in batch.params)
    metrics = "".join(f"{k}\t{v!r}\t{ts}\t{r}\t{step}\t{'t' if nan else 'f'}\n"
                      for k, v, ts, r, step, nan in batch.metrics)
    latest = "".join(f"{k}\t{v!r}\t{ts}\t{step}\t{'t' if nan else 'f'}\t{r}\n"
                     for k, v, ts, step, nan, r in batch.latest)
    tags = "".join(f"{k}\t{v}\t{r}\n" for k, v, r in batch.tags)
    return [("runs", RUN_COLUMNS, runs), ("params", PARAM_COLUMNS, params),
            ("metrics", METRIC_COLUMNS, metrics), ("latest_metrics", LATEST_METRIC_COLUMNS, latest),
            ("tags", TAG_COLUMNS, tags)]


def _write_postgres(connect_args: dict, batches: Iterator[_Batch], new_runs: int) -> None:
    """COPY the batches in one transaction, building the keyed tables' indexes afterwards when
    the load at least doubles the runs; then ANALYZE the tables so the planner knows their
    new sizes."""
    import psycopg2

    started = time.perf_counter()
    with closing(psycopg2.connect(**connect_args)) as conn:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs")
            rebuild = new_runs >= cur.fetchone()[0]
            recreate = _drop_keys_and_indexes(cur, KEYED_TABLES) if rebuild else []
            _copy_batches(conn, batches)
            copied = time.perf_counter()
            for statement in recreate:
                cur.execute(statement)
        indexed = time.perf_counter()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"ANALYZE {', '.join(SEEDED_TABLES)}")
    logger.debug("PostgreSQL seed of %d runs: COPY %.1fs, keys and indexes %s, ANALYZE %.1fs", new_runs,
                 copied - started, f"rebuilt {indexed - copied:.1f}s" if rebuild else "kept",
                 time.perf_counter() - indexed)


def _copy_batches(conn, batches: Iterator[_Batch]) -> None:
    """COPY each batch's rows; a second thread sends one batch while the next is generated."""
    pending: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def send() -> None:
        try:
            with conn.cursor() as cur:
                while (texts := pending.get()) is not None:
                    for table, columns, text in texts:
                        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN",
                                        io.StringIO(text), size=1 << 20)
        except BaseException as exc:  # raised again by the generating thread
            failure.append(exc)
            while pending.get() is not None:  # unblock the generating thread's puts
                pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        for batch in batches:
            if failure:
                break
            pending.put(_copy_texts(batch))
    finally:
        pending.put(None)
        sender.join()
    if failure:
        raise failure[0]


def _drop_keys_and_indexes(cur, tables: tuple[str, ...]) -> list[str]:
    """Drop the foreign keys, keys and indexes of ``tables``; returns the statements that create
    them again, as they were. A key that another table's foreign key needs stays."""
    from psycopg2 import sql

    cur.execute(
        """
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.contype
        FROM pg_constraint c
        WHERE c.conrelid = ANY(%(tables)s::regclass[]) AND c.contype IN ('f', 'p', 'u')
          AND (c.contype = 'f' OR NOT EXISTS (
              SELECT 1 FROM pg_constraint r
              WHERE r.contype = 'f' AND r.conindid = c.conindid
                AND r.conrelid <> ALL(%(tables)s::regclass[])))
        ORDER BY c.contype = 'f' DESC, c.conname
        """,
        {"tables": list(tables)},
    )
    constraints = cur.fetchall()
    cur.execute(
        """
        SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        FROM pg_index i
        WHERE i.indrelid = ANY(%(tables)s::regclass[]) AND NOT EXISTS (
            SELECT 1 FROM pg_constraint c
            WHERE c.conindid = i.indexrelid AND c.contype IN ('p', 'u', 'x'))
        ORDER BY 1
        """,
        {"tables": list(tables)},
    )
    indexes = cur.fetchall()
    for table, name, _, _ in constraints:
        cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {sql.Identifier(name).as_string(cur)}")
    for index, _ in indexes:
        cur.execute(f"DROP INDEX {index}")
    keys = [f"ALTER TABLE {table} ADD CONSTRAINT {sql.Identifier(name).as_string(cur)} {definition}"
            for table, name, definition, kind in constraints if kind != "f"]
    foreign_keys = [f"ALTER TABLE {table} ADD CONSTRAINT {sql.Identifier(name).as_string(cur)} {definition}"
                    for table, name, definition, kind in constraints if kind == "f"]
    return keys + [definition for _, definition in indexes] + foreign_keys
