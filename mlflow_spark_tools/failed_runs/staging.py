"""A payload's files made ready before its first request: the artifacts still to upload copied
into a private directory and checked against their digests, the model blobs still to log
verified, all within the payload's share of :class:`~mlflow_spark_tools.config.ReplayLimits`.

The replay uploads the copies, so a file changed in the store after the check is never what
gets uploaded (:mod:`mlflow_spark_tools.failed_runs.files`).
"""

from __future__ import annotations

from pathlib import Path

from mlflow_spark_tools.failed_runs.document import Payload, PayloadError
from mlflow_spark_tools.failed_runs.files import Budget, PayloadFolder, manifest_difference
from mlflow_spark_tools.failed_runs.replay_outcomes import Quarantine
from mlflow_spark_tools.failed_runs.verification import Verifier
from mlflow_spark_tools.runs.run_data import ARTIFACT, MODEL


def stage(folder: PayloadFolder | None, payload: Payload, done: int, staging: Path,
          verifier: Verifier) -> dict[int, Path]:
    """Copy the artifacts still to upload into ``staging``, checked against their digests, and
    check the model blobs still to log; returns the copy of each artifact by its index."""
    limits = verifier.limits
    budget = Budget(limits.max_files, limits.max_artifact_bytes)
    staged: dict[int, Path] = {}
    todo = {index for i, (kind, index) in enumerate(payload.ops) if kind == ARTIFACT and i >= done}
    for index in sorted(todo):
        entry = payload.artifacts[index]
        if entry.file is None:
            raise Quarantine(f"artifact {index} is not uploaded yet, but the document names no file for it")
        target = staging / str(index) / entry.name
        target.parent.mkdir()
        try:
            if folder is None:
                raise FileNotFoundError(entry.file)
            rows = folder.stage(entry.file, entry.is_dir, target, budget, entry.manifest)
        except FileNotFoundError:
            raise Quarantine(f"truncated: artifact {entry.file} is missing") from None
        except PayloadError as exc:
            raise Quarantine(f"artifact {index}: {exc}") from None
        if entry.manifest is not None:
            difference = manifest_difference(entry.manifest, rows)
            if difference is not None:
                raise Quarantine(f"artifact {entry.file}: {difference}")
        staged[index] = target
    for i, (kind, index) in enumerate(payload.ops):
        if kind == MODEL and i >= done:
            entry_m = payload.models[index]
            if entry_m.blob is None:
                raise Quarantine(f"model {index} is not uploaded yet, but the document names no blob for it")
            size = len(verifier.verified_blob(folder, entry_m))
            budget.admit(size, entry_m.blob)
            budget.charge(size)
    return staged
