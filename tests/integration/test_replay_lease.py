"""The store's lease on real Delta tables: one holder at a time, across threads and processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlflow_spark_tools.failed_runs.lease import LEASE_SCHEMA, DeltaLease, LeaseLost, LeaseState
from mlflow_spark_tools.spark.engine import SAIL, SPARK

DATABASE = "lease_tests"


# A lease a few operations long: a lease operation takes milliseconds on the embedded engine and
# about a second on classic local Spark with Delta Lake.
SHORT_LEASE = {SAIL: 2.0, SPARK: 8.0}


def _lease(engine, store, **kwargs):
    return DeltaLease(engine, DATABASE, store, **kwargs)


@pytest.mark.jvm
def test_one_holder_then_the_next_once_released(engine, tmp_path):
    store = tmp_path / "store one"
    first, second = _lease(engine, store, lease_seconds=20), _lease(engine, store, lease_seconds=20)
    assert first.acquire() is None and first.held
    first.check()
    holder = second.acquire()
    assert holder is not None and first.owner in holder and not second.held  # given up at once: alive
    with pytest.raises(LeaseLost, match="does not hold"):
        second.check()
    first.release()
    with pytest.raises(LeaseLost):
        first.check()
    assert second.acquire() is None and second.held
    second.release()
    # another store is another lease
    assert _lease(engine, tmp_path / "store two").acquire() is None


@pytest.mark.jvm
def test_a_holder_that_stopped_renewing_is_taken_over_after_a_whole_lease(engine, tmp_path):
    store = tmp_path / "store"
    stalled = _lease(engine, store, lease_seconds=1.5)
    assert stalled.acquire() is None
    stalled._stop.set()  # its renewals stop, as when its process hangs or dies
    time.sleep(1.6)  # the hint (its last renewal) is older than the lease
    contender = _lease(engine, store, lease_seconds=1.5)
    started = time.monotonic()
    assert contender.acquire() is None
    assert time.monotonic() - started >= 1.5  # watched for a whole lease on its own clock first
    with pytest.raises(LeaseLost):  # the stalled one may send nothing: no renewal for a lease
        stalled.check()
    contender.release()


def test_a_live_holder_whose_clock_looks_stale_is_not_taken_over(engine, tmp_path):
    """The holder's renewal time is only a hint: a holder whose clock is far behind still
    renews, and the contender, watching, sees its heartbeat move."""
    store = tmp_path / "store"
    short = SHORT_LEASE[engine.executor]
    behind = _lease(engine, store, lease_seconds=short, wall=lambda: time.time() - 3600)
    assert behind.acquire() is None
    contender = _lease(engine, store, lease_seconds=short)
    holder = contender.acquire()
    assert holder is not None and behind.owner in holder and not contender.held
    behind.check()
    behind.release()


def test_rows_appended_twice_and_a_late_stale_row_never_make_two_holders(engine, tmp_path):
    store = tmp_path / "store"
    first = _lease(engine, store, lease_seconds=20)
    first._ensure_table()
    first._insert_first_row()
    first._insert_first_row()  # two replayers started at once and both appended the first row
    assert first.acquire() is None
    assert len(first._state().rows) == 2  # both rows moved together
    # a third replayer that read "no row" before all this appends its first row late
    late = _lease(engine, store, lease_seconds=20)
    late._insert_first_row()
    assert (late._state().generation, late._state().owner) == (1, first.owner)  # the late row stays below
    # a contender that read only the late row at generation 0 moves it: the rows at the top then
    # disagree, and neither replayer holds the store
    rows = engine.spark.sql(f"SELECT row_id FROM {DATABASE}.replay_lease WHERE store_key = '{late.key}' "
                            "AND generation = 0").collect()
    assert late._take(LeaseState(0, tuple((r["row_id"], "", 0) for r in rows), 0)) is not None
    assert not late.held
    assert not first._renew()  # the first sees it at its next renewal and stops
    with pytest.raises(LeaseLost):
        first.check()
    first.release()
    # nobody renews now: the next replayer watches a whole lease, then moves every row at the top
    recovering = _lease(engine, store, lease_seconds=1)
    assert recovering.acquire() is None and recovering._state().owner == recovering.owner
    recovering.release()


_RACER = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    from mlflow_spark_tools.spark.engine import get_engine, start_embedded
    from mlflow_spark_tools.failed_runs.lease import DeltaLease, LeaseLost
    warehouse, store, marks, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    lease_seconds, seconds, pause = float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])
    if os.environ.get("MLFLOW_SPARK_TOOLS_TEST_ENGINE") == "classic":
        # its own JVM, the lease table at the shared warehouse path (spark-submit --warehouse)
        from tests.support.classic_spark import start_classic
        spark = start_classic(Path(warehouse).parent / f"managed-{os.getpid()}").spark
        engine = get_engine(spark=spark, warehouse=warehouse)
    else:
        engine = start_embedded(warehouse)
    held, overlaps, busy, lost = 0, 0, 0, 0
    deadline = time.monotonic() + seconds
    while held < rounds and time.monotonic() < deadline:
        lease = DeltaLease(engine, "lease_tests", store, lease_seconds=lease_seconds)
        if lease.acquire() is not None:
            busy += 1
            time.sleep(pause)
            continue
        try:  # as the replayer's fence does before every request
            lease.check()
        except LeaseLost:  # taking it outlasted the lease (a loaded machine): it acts on nothing
            lost += 1
            lease.release()
            continue
        try:  # the store is ours: nobody else may be here now
            fd = os.open(os.path.join(marks, "holder"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.write(fd, lease.owner.encode())
            os.close(fd)
        except FileExistsError:
            overlaps += 1
        else:
            time.sleep(0.1)
            lease.check()
            os.unlink(os.path.join(marks, "holder"))
        held += 1
        lease.release()
    print(json.dumps({"held": held, "overlaps": overlaps, "busy": busy, "lost": lost}))
    engine.stop() if engine.kind == "embedded" else engine.spark.stop()
''')


@pytest.mark.jvm
def test_replayers_racing_in_several_processes_hold_the_store_one_at_a_time(tmp_path):
    """Several processes, each with its own engine on one warehouse (as two replay jobs on one
    workspace share one catalog), take the same store's lease again and again: while one holds
    it, no other does. On classic Spark each racer is a JVM with Delta Lake's own conflict
    detection; a lease operation there takes about a second, so the lease is longer."""
    classic = os.environ.get("MLFLOW_SPARK_TOOLS_TEST_ENGINE") == "classic"
    processes, rounds, lease_seconds, seconds, pause = (2, 3, 12, 240, 0.5) if classic else (4, 4, 4, 90, 0.05)
    warehouse, marks = tmp_path / "warehouse", tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "racer.py"
    script.write_text(_RACER)
    env = dict(os.environ, RUST_LOG="error", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    racers = [subprocess.Popen([sys.executable, str(script), str(warehouse), str(tmp_path / "store"), str(marks),
                                str(rounds), str(lease_seconds), str(seconds), str(pause)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for _ in range(processes)]
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=seconds + 150)
        assert racer.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["overlaps"] for r in results) == 0, results
    assert sum(r["held"] for r in results) == processes * rounds, results
    assert sum(r["busy"] for r in results) > 0, results  # they did contend


def test_the_lease_table_has_the_documented_columns(engine, tmp_path):
    lease = _lease(engine, tmp_path / "store")
    assert lease.acquire() is None
    columns = [f.name for f in engine.spark.table(f"{DATABASE}.replay_lease").schema.fields]
    assert columns == LEASE_SCHEMA.names
    row = engine.spark.sql(f"SELECT store, owner FROM {DATABASE}.replay_lease WHERE store_key = '{lease.key}'") \
        .collect()[0]
    assert (row["store"], row["owner"]) == (os.path.realpath(tmp_path / "store"), lease.owner)
    lease.release()
