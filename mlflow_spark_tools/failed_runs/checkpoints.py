"""The checkpoints of a payload's replay: how far an earlier replay of it got.

Checkpoints are a log of new files in ``data/<payload_id>/progress/``: ``begun.json`` before
the first request any replay of the payload sends, then ``<requests done>-<replayer>.json``
after each request. A replay that finds any of them resumes: from the highest request count
it can see, with every request from there on treated as one that may have reached the server
already (a listing may not show the newest checkpoints yet; ``begun.json`` is looked up by
name, so a replay never mistakes a resumed payload for a new one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mlflow_spark_tools.failed_runs.document import Payload, PayloadError, check_progress
from mlflow_spark_tools.failed_runs.file_operations import EmptyFile
from mlflow_spark_tools.failed_runs.files import PayloadFolder
from mlflow_spark_tools.failed_runs.replay_outcomes import PAYLOAD_REPLAY_LOGGER, Quarantine
from mlflow_spark_tools.failed_runs.store_entries import BEGUN, checkpoint_ops
from mlflow_spark_tools.failed_runs.verification import Verifier

log = logging.getLogger(PAYLOAD_REPLAY_LOGGER)

PROGRESS = "progress"


@dataclass(frozen=True)
class Progress:
    """What the checkpoints of a payload say.

    Attributes:
        begun: ``begun.json`` exists (looked up by name).
        resumed: any checkpoint exists, an earlier release's ``progress.json`` included.
        run_id: the run the checkpoints name, if any.
        done: the highest request count any checkpoint shows.
        attempts: the replays of the payload so far.
    """

    begun: bool
    resumed: bool
    run_id: str | None
    done: int
    attempts: int


class Checkpoints:
    """Reads and writes a payload's checkpoints, signed with the replay's key when it has one.

    Args:
        verifier: checks and signs the checkpoints.
        owner: the replayer that writes them (in their names and content).
    """

    def __init__(self, verifier: Verifier, owner: str) -> None:
        self.verifier = verifier
        self.owner = owner

    def progress(self, folder: PayloadFolder | None, payload: Payload) -> Progress:
        """What the checkpoints say; every checkpoint read is checked (and, with a key, must be
        signed by this replay's key for this payload)."""
        if folder is None:
            return Progress(False, False, None, 0, 0)
        begun = folder.exists(f"{PROGRESS}/{BEGUN}")
        numbered = [(ops, name) for name in folder.names(PROGRESS) if (ops := checkpoint_ops(name)) is not None]
        found = []
        try:
            if begun:
                found.append((f"{PROGRESS}/{BEGUN}", _read_checkpoint(folder, f"{PROGRESS}/{BEGUN}")))
            for _, name in sorted(numbered, reverse=True):  # the newest that holds anything
                progress = _read_checkpoint(folder, f"{PROGRESS}/{name}")
                if progress is not None:
                    found.append((f"{PROGRESS}/{name}", progress))
                    break
            found.append(("progress.json", _read_checkpoint(folder, "progress.json")))  # an earlier release's
        except PayloadError as exc:
            raise Quarantine(str(exc)) from None
        checked = []
        for where, progress in found:
            if progress is None:
                continue
            if self.verifier.key is not None and not (progress.get("payload_id") == payload.payload_id
                                                      and self.verifier.signed_by_us(progress)):
                raise Quarantine(f"{where} is not signed by this replay's key for this payload (edited, or "
                                 "written by a replay without the key)")
            try:
                checked.append(check_progress(progress, payload))
            except PayloadError as exc:
                raise Quarantine(f"{where}: {exc}") from None
        if not checked:
            return Progress(begun, bool(numbered), None, 0, 0)
        runs = {run_id for run_id, _, _ in checked if run_id is not None}
        if len(runs) > 1:
            raise Quarantine(f"the checkpoints name {len(runs)} different runs: {', '.join(sorted(runs))[:200]}")
        done = max(ops for _, ops, _ in checked)
        return Progress(begun, True, runs.pop() if runs else None, done, max(a for _, _, a in checked))

    def write(self, folder: PayloadFolder, payload_id: str, name: str, run_id: str | None, done: int,
              attempts: int) -> None:
        """Write one checkpoint: a new file, never a rewrite. One of that name written before
        by this replayer (a payload given back and taken again) says the same."""
        progress: dict[str, Any] = {"payload_id": payload_id, "run_id": run_id, "ops_done": done,
                                    "attempts": attempts, "owner": self.owner}
        self.verifier.sign(progress)
        try:
            folder.write_new_json(f"{PROGRESS}/{name}", progress)
        except FileExistsError:
            pass


def _read_checkpoint(folder: PayloadFolder, relative: str) -> dict[str, Any] | None:
    """A checkpoint, or None when it is absent or empty: a replayer killed between creating it
    and writing it, which counts as not written (the requests after the newest checkpoint are
    uncertain anyway: docs/REPLAY.md, "Exactly once")."""
    try:
        return folder.read_json(relative)
    except EmptyFile:
        log.info("%s of payload %s is empty (its writer was killed): it does not count", relative,
                 folder.payload_id)
        return None
