"""Bulk-load synthetic runs straight into an MLflow sqlite store, for load tests and benchmarks.

Logging 20,000 runs through the REST API takes many minutes; inserting the same rows into the
store's tables takes seconds. The rows are what MLflow itself writes: a run, its params, one
point per metric (history and latest value) and its tags. Stop writing to the store through
the server while seeding (the server may keep running).
"""

from __future__ import annotations

import random
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


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


def param_value(rng: random.Random, i: int) -> str:
    """Params of three kinds, so that typed columns get bigint, double and string."""
    kind = i % 3
    if kind == 0:
        return str(rng.randint(1, 500))
    if kind == 1:
        return repr(rng.choice([1e-4, 3e-4, 1e-3, 0.01, 0.05, 0.1, 0.5]))
    return rng.choice(["adam", "sgd", "rmsprop", "adagrad"])


def seed_runs(
    db_path: Path | str,
    experiment_id: str,
    spec: SeedSpec,
    artifact_root: str = "/tmp/artifacts",
    start_ms: int | None = None,
) -> list[str]:
    """Insert ``spec.runs`` runs into ``experiment_id``; returns their run ids in start order.

    Runs start one second apart ending now; ``running_fraction`` of them are left RUNNING
    (no end time), the others FINISHED.
    """
    rng = random.Random(spec.seed)
    now = int(time.time() * 1000) if start_ms is None else start_ms
    first = now - spec.runs * 1000
    runs, params, metrics, latest, tags = [], [], [], [], []
    run_ids = []
    running_every = int(1 / spec.running_fraction) if spec.running_fraction > 0 else 0
    for n in range(spec.runs):
        run_id = uuid.UUID(int=rng.getrandbits(128)).hex
        run_ids.append(run_id)
        start = first + n * 1000
        running = running_every > 0 and n % running_every == 0
        end = None if running else start + rng.randint(1000, 600000)
        name = f"run-{n}"
        runs.append(
            (run_id, name, "UNKNOWN", "", "", "seed", "RUNNING" if running else "FINISHED",
             start, end, "", "active", f"{artifact_root}/{experiment_id}/{run_id}/artifacts",
             int(experiment_id))
        )
        for i in range(spec.params):
            params.append((f"param_{i}", param_value(rng, i), run_id))
        for i in range(spec.metrics):
            value = rng.random()
            ts = start + 500
            if spec.steps > 1:
                metrics.append((run_id, i, start, value))  # expanded into points when inserted
                last = spec.steps - 1
                latest.append((f"metric_{i}", _curve(value, last), start + last * 1000, last, 0, run_id))
            else:
                metrics.append((f"metric_{i}", value, ts, run_id, 0, 0))
                latest.append((f"metric_{i}", value, ts, 0, 0, run_id))
        tags.append(("mlflow.runName", name, run_id))
        tags.append(("mlflow.user", "seed", run_id))
        for i in range(max(0, spec.tags - 2)):
            tags.append((f"tag_{i}", f"value-{rng.randint(0, 50)}", run_id))
    with sqlite3.connect(str(db_path), timeout=60) as conn:
        conn.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, "
            "user_id, status, start_time, end_time, source_version, lifecycle_stage, "
            "artifact_uri, experiment_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            runs,
        )
        conn.executemany('INSERT INTO params ("key", value, run_uuid) VALUES (?,?,?)', params)
        points = metrics if spec.steps <= 1 else (
            (f"metric_{i}", _curve(value, step), start + step * 1000, run_id, step, 0)
            for run_id, i, start, value in metrics for step in range(spec.steps)
        )
        conn.executemany(
            'INSERT INTO metrics ("key", value, timestamp, run_uuid, step, is_nan) '
            "VALUES (?,?,?,?,?,?)",
            points,
        )
        conn.executemany(
            'INSERT INTO latest_metrics ("key", value, timestamp, step, is_nan, run_uuid) '
            "VALUES (?,?,?,?,?,?)",
            latest,
        )
        conn.executemany('INSERT INTO tags ("key", value, run_uuid) VALUES (?,?,?)', tags)
    return run_ids


def _curve(start: float, step: int) -> float:
    """A loss-like curve: falls from ``start`` + 1 towards ``start``."""
    return start + 1.0 / (1 + step)
