"""What a replay checks before it writes into a run: that the run is the payload's own and
still running, that the run's artifacts go where the replay's credentials may go, and that a
model's blob verifies before it is unpickled.

:class:`WriteChecks` is all the payload's run writer may call back into
(:mod:`mlflow_spark_tools.failed_runs.payload_replay`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlflow_spark_tools.failed_runs.document import (
    PAYLOAD_TAG,
    ModelEntry,
    Payload,
    foreign_artifact_host,
    is_local_artifact_uri,
)
from mlflow_spark_tools.failed_runs.files import PayloadFolder
from mlflow_spark_tools.failed_runs.replay_outcomes import Quarantine
from mlflow_spark_tools.failed_runs.verification import Verifier
from mlflow_spark_tools.runs.models import save_model_dir
from mlflow_spark_tools.runs.run_data import TERMINATE
from mlflow_spark_tools.tracking.rate_limit_errors import error_summary, names_nothing
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests

RUNNING = "RUNNING"


class WriteChecks:
    """The checks of a replay's writes into runs.

    Args:
        requests: the replay's tracking requests.
        verifier: verifies model blobs; says whether unsigned documents are trusted.
        tracking_uri: the tracking server.
        artifact_hosts: hosts besides the tracking server's that runs' artifacts may be
            uploaded to with the tracking credentials.
    """

    def __init__(self, requests: TrackingRequests, verifier: Verifier, tracking_uri: str,
                 artifact_hosts: tuple[str, ...]) -> None:
        self.requests = requests
        self.verifier = verifier
        self.tracking_uri = tracking_uri
        self.artifact_hosts = artifact_hosts

    def run_info(self, run_id: str, payload: Payload, trusted: bool, remaining: list[str]) -> dict[str, Any]:
        """The info of the run a payload resumes, once it is shown to be the payload's own.

        A run id from a signed document is the collector's (``trusted``); any other must name a
        run carrying this payload's tag, whose value holds the hash of the run secret that only
        the collector and the payload know. Whatever its source, the run must be in the
        payload's experiment and still running: a replay never writes into an ended run (except
        that the end itself, sent already, is not sent again).
        """
        try:
            run = self.requests.get_run(run_id)
        except Exception as exc:
            if names_nothing(exc):
                raise Quarantine(f"run_id {run_id} names no run on the tracking server") from None
            raise
        info = run.get("info") or {}
        tags = {t.get("key"): t.get("value") for t in run.get("data", {}).get("tags", []) if isinstance(t, dict)}
        if not trusted and tags.get(PAYLOAD_TAG) != payload.tag_value:
            raise Quarantine(f"run_id {run_id} names a run this payload did not create (its tag {PAYLOAD_TAG} "
                             "is not this payload's): refusing to write into it")
        experiment = payload.run.experiment_id
        if experiment is not None and str(info.get("experiment_id")) != str(experiment):
            raise Quarantine(f"run_id {run_id} names a run of experiment {str(info.get('experiment_id'))[:40]}, "
                             f"not of the payload's experiment {experiment}")
        if info.get("lifecycle_stage", "active") != "active":
            raise Quarantine(f"run_id {run_id} names a deleted run")
        if info.get("status", RUNNING) != RUNNING and any(kind != TERMINATE for kind in remaining):
            raise Quarantine(f"run_id {run_id} names a run that has ended ({str(info.get('status'))[:20]}): "
                             "a replay never writes into an ended run")
        return info

    def destination(self, artifact_uri: str | None, signed: bool) -> None:
        """Refuse (Quarantine) to write files to ``artifact_uri`` when it is another host than
        the tracking server's (and not listed), or a path on this host for an unsigned
        document that is not trusted."""
        host = foreign_artifact_host(artifact_uri, self.tracking_uri, self.artifact_hosts)
        if host is not None:
            raise Quarantine(f"the run's artifacts go to {host[:200]}, which is not the tracking server: the uploads "
                             "would carry the replay's tracking credentials there; if that host is yours, add it "
                             "to replay.artifact_hosts")
        if is_local_artifact_uri(artifact_uri) and not (signed or self.verifier.trust_unsigned):
            raise Quarantine(f"the run's artifacts go to a path on this host ({str(artifact_uri)[:200]}): "
                             "an unsigned document cannot make the replay write local files; collect "
                             "with a signing key, or replay with --trust-unsigned")

    def model_saver(self, folder: PayloadFolder | None, entry: ModelEntry) -> Callable[[str], None]:
        """What saves a payload's model as an MLflow model directory; its blob is checked
        (digest, signature) before anything else happens."""
        import cloudpickle

        blob = self.verifier.verified_blob(folder, entry)

        def save_to(path: str) -> None:
            try:
                saved = cloudpickle.loads(blob)
                save_model_dir(saved["model"], path, saved["flavor"], saved["save_func"], saved["kwargs"])
            except Exception as exc:
                raise Quarantine(f"model {entry.artifact_path!r} could not be saved on this host: "
                                 f"{type(exc).__name__}: {error_summary(exc, 300)}") from None

        return save_to
