"""A deferred run written into the failed-run store: copies of its artifacts with their
digests, its models as signed pickled blobs, then its run document, written once, whole, into
``pending/`` (the format: :mod:`~mlflow_spark_tools.failed_runs.document`).

What the run sent before it was stopped is not written again: the document says how many of
its planned requests are done (``ops_done``), and carries the run id and the logged models
created before the stop, so that the replay goes on with them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow_spark_tools.failed_runs.buffered_run import RunBuffer
from mlflow_spark_tools.failed_runs.document import canonical_json
from mlflow_spark_tools.failed_runs.signing import SigningKey
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import FORMAT, VERSION
from mlflow_spark_tools.runs.run_data import ARTIFACT, MODEL, RunData
from mlflow_spark_tools.tracking.rate_limit_errors import classify, error_summary


def write_payload(store: FailedRunStore, run: RunBuffer, data: RunData, ops: list[tuple[str, int]], done: int,
                  exc: BaseException, logged_model_ids: dict[int, str], key: SigningKey | None,
                  unsigned_model: Callable[[], None]) -> str:
    """Write the payload of a run stopped by ``exc`` after ``done`` of its requests ``ops``;
    returns its payload id. ``unsigned_model`` is told before a model blob is written without
    a key."""
    payload_id = run.payload_id
    artifacts = _artifact_entries(store, run, {i for kind, i in ops[:done] if kind == ARTIFACT})
    models = _model_entries(store, run, {i for kind, i in ops[:done] if kind == MODEL}, logged_model_ids, key,
                            unsigned_model)
    document = {
        "format": FORMAT,
        "version": VERSION,
        "payload_id": payload_id,
        "created_at": int(time.time() * 1000),
        "host": socket.gethostname(),
        "reason": f"{classify(exc)}: {error_summary(exc, 500)}",
        "experiment_name": run.experiment_name,
        "run_id": run.run_id,
        "run_secret": run.run_secret,
        "artifact_uri": run.artifact_uri,
        "ops_done": done,
        "run": data.to_json(),
        "artifacts": artifacts,
        "models": models,
    }
    if key is not None:
        document["signature"] = key.sign(canonical_json(document))
    store.publish(payload_id, document)
    return payload_id


def _artifact_entries(store: FailedRunStore, run: RunBuffer, done: set[int]) -> list[dict[str, Any]]:
    """The document's artifacts; the ones not uploaded yet copied into the store with their manifest."""
    artifacts = []
    for i, (local_path, artifact_path) in enumerate(run.artifacts):
        entry: dict[str, Any] = {"artifact_path": artifact_path, "is_dir": os.path.isdir(local_path),
                                 "name": os.path.basename(os.path.normpath(local_path)), "file": None}
        if i not in done:
            entry["file"] = f"artifacts/{i}/{entry['name']}"
            entry["manifest"] = [list(row) for row in store.copy_into(run.payload_id, Path(local_path), entry["file"])]
        artifacts.append(entry)
    return artifacts


def _model_entries(store: FailedRunStore, run: RunBuffer, done: set[int], logged_model_ids: dict[int, str],
                   key: SigningKey | None, unsigned_model: Callable[[], None]) -> list[dict[str, Any]]:
    """The document's models; the ones not logged yet written into the store as blobs."""
    models = []
    for i, m in enumerate(run.models):
        entry: dict[str, Any] = {"artifact_path": m["artifact_path"], "flavor": m["flavor"], "blob": None}
        if i not in done:
            import cloudpickle

            blob = cloudpickle.dumps({"model": m["model"], "save_func": m["save_func"],
                                      "flavor": m["flavor"], "kwargs": m["kwargs"]})
            entry["blob"] = f"models/{i}.pkl"
            entry["sha256"] = hashlib.sha256(blob).hexdigest()
            entry["signature"] = key.sign(blob) if key is not None else None
            if key is None:
                unsigned_model()
            store.write_blob(run.payload_id, entry["blob"], blob)
            if i in logged_model_ids:  # created before the refusal: the replay goes on with it
                entry["logged_model_id"] = logged_model_ids[i]
        models.append(entry)
    return models
