"""Log MLflow runs from Spark tasks without ever stalling or failing them on rate limits.

::

    collector = FailedRunCollector("/dbfs/ml/failed_runs")     # plain and picklable

    def train(degree):
        with collector.start_run(experiment_id=exp_id, run_name=f"svc-{degree}") as run:
            run.log_params({"degree": degree})
            run.log_metric("loss", 0.3, step=1)
            run.log_input(mlflow.data.from_pandas(train_df, name="train"), context="training")
            run.log_artifact("plot.png")
            run.log_model(model, "model", flavor="sklearn")
            run.log_metric("test_acc", 0.91, model="model", dataset=test_ds)  # linked (MLflow 3)
        return run.run_id or run.payload_id                   # run.status: logged / deferred

A run is buffered and written when the ``with`` block ends, in the fewest requests: create
(with its tags), ``log_batch`` chunks within MLflow's limits, dataset inputs, metric links,
artifacts, models, terminate.
Each request gives up within ``fail_fast_seconds`` when the server answers 429 (MLflow's own
client would retry for minutes); then the whole run (run info, params, every metric point with
its step and timestamp, tags, copies of the artifacts, signed model blobs) is written to the
failed-run store, and the replay job finishes it later. If the run was created before the
rate limit hit, its run id stays valid: the replay completes that run. The store takes only
new files written once (a Unity Catalog volume gives no more); a run that cannot be saved
there either raises :class:`~mlflow_spark_tools.errors.RunNotSavedError` in the task.

The collector holds only plain values (no client, thread, lock or open file), so Spark can
pickle it into closures, and it works in forked Python workers running many tasks each.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mlflow_spark_tools.core.redaction import redact_uri
from mlflow_spark_tools.databricks.paths import to_fuse_path
from mlflow_spark_tools.errors import RunNotSavedError
from mlflow_spark_tools.failed_runs.buffered_run import BufferedRun, RunBuffer
from mlflow_spark_tools.failed_runs.document import PAYLOAD_TAG
from mlflow_spark_tools.failed_runs.run_deferral import write_payload
from mlflow_spark_tools.failed_runs.run_writer import RunWriter
from mlflow_spark_tools.failed_runs.signing import KEY_ENV, SigningKey, load_signing_key
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.runs.models import save_model_dir
from mlflow_spark_tools.runs.run_data import TERMINATE, RunData, plan
from mlflow_spark_tools.tracking.artifacts import upload_artifact
from mlflow_spark_tools.tracking.rate_limit_errors import RATE_LIMITED, TRANSIENT, classify, error_summary
from mlflow_spark_tools.tracking.rest_calls import TrackingRequests
from mlflow_spark_tools.tracking.retries import fail_fast

log = logging.getLogger(__name__)

LOGGED, DEFERRED = "logged", "deferred"

# Per Python process and tracking server: until when a rate-limit storm is assumed. After a run
# of this process was deferred on a rate limit, the next runs send each request once and defer
# on the first 429 instead of waiting out the retries again: a worker running many tasks pays
# the wait once per storm, not once per task. Module state, not the collector's: the collector
# stays plain, and forked Python workers keep it across the tasks they run.
_STORM_UNTIL: dict[str, float] = {}


_UNSIGNED_WARNED = False


def _warn_unsigned_once() -> None:
    """Once per process: a model blob written without a key will not be replayed as it is."""
    global _UNSIGNED_WARNED
    if not _UNSIGNED_WARNED:
        _UNSIGNED_WARNED = True
        log.warning(
            "A deferred run's model was written to the store without a signing key: the replay job "
            "will quarantine it (an unsigned pickle on shared storage could run anyone's code) unless "
            "it runs with --trust-unsigned. Set %s on the cluster (from a secret: "
            "{{secrets/<scope>/<key>}}) for the tasks and the replay job, or pass signing_key= to "
            "FailedRunCollector.", KEY_ENV)


def _end_as_failed(requests: TrackingRequests, run_id: str) -> None:
    """End a created run as FAILED when writing the rest of it failed for good (a model that
    cannot be saved, a refused value), as MLflow ends a run whose block raised; the error
    that stopped the write is what the caller sees, so this one's own failure is only logged."""
    try:
        requests.update_run(run_id, "FAILED", int(time.time() * 1000))
    except Exception as exc:
        log.debug("Run %s could not be ended as FAILED: %s", run_id, error_summary(exc, 200))


class _BufferedRunWriter(RunWriter):
    """Writes a buffered run: artifacts from the task's local paths, models saved here."""

    def __init__(self, requests: TrackingRequests, run: RunData, buffer: RunBuffer) -> None:
        super().__init__(requests, run)
        self.buffer = buffer

    def create_tags(self) -> dict[str, str]:
        # The mark that lets a replay prove this run is the payload's own before writing into
        # it, and find it after a create whose answer was lost.
        return {**super().create_tags(), PAYLOAD_TAG: self.buffer.payload_tag()}

    def create(self, uncertain: bool) -> None:
        super().create(uncertain)
        self.buffer.run_id, self.buffer.artifact_uri = self.run_id, self.artifact_uri

    def log_artifact(self, index: int) -> None:
        local_path, artifact_path = self.buffer.artifacts[index]
        upload_artifact(self.requests, self.created_run_id, self.artifact_uri, local_path, artifact_path)

    def log_model(self, index: int, uncertain: bool) -> None:
        m = self.buffer.models[index]
        self.write_model(index, m["artifact_path"],
                         lambda path: save_model_dir(m["model"], path, m["flavor"], m["save_func"], m["kwargs"]))


class FailedRunCollector:
    """Buffers runs in Spark tasks and defers the ones a rate limit stops to a store.

    Args:
        store_path: the failed-run store: ``/dbfs/...``, ``dbfs:/...``, ``/Volumes/...`` or a
            local directory.
        tracking_uri: the tracking server; default: MLflow's (``MLFLOW_TRACKING_URI``),
            resolved when the collector is made (on the driver).
        fail_fast_seconds: how long one request may retry a 429 before the run is deferred.
        defer_transient: also defer on 5xx and connection errors (by default they raise).
        signing_key: the key for model blobs; default: ``MLFLOW_SPARK_TOOLS_SIGNING_KEY`` in
            the task's environment. Passing it here ships it inside every task closure.
        request_timeout: seconds for one HTTP attempt.
        storm_cooldown_seconds: after a run was deferred on a rate limit, runs of the same
            process defer on the first 429 (no retry) for this long; 0 turns it off.
        check_store: try every file operation the store needs once, here (on the driver), so
            that a store the tasks could not write (a read-only mount, a file system without
            one of them) is one clear error before any task runs.

    Raises:
        InvalidStoreError: the store cannot be used (``check_store``).
        InvalidConfigError: the signing key (given, or in the environment) is too short.
    """

    def __init__(self, store_path: str | os.PathLike, tracking_uri: str | None = None,
                 fail_fast_seconds: float = 5.0, *, defer_transient: bool = False,
                 signing_key: str | bytes | SigningKey | None = None, request_timeout: float = 60.0,
                 storm_cooldown_seconds: float = 30.0, check_store: bool = True) -> None:
        self.store_path = to_fuse_path(os.fspath(store_path))
        if signing_key is None:
            load_signing_key()  # a key in the environment that is too short: said here, not in a task
        if check_store:
            with FailedRunStore(self.store_path) as store:
                store.check_usable()
        if tracking_uri is None:
            import mlflow

            tracking_uri = mlflow.get_tracking_uri()
        self.tracking_uri = tracking_uri
        self.fail_fast_seconds = float(fail_fast_seconds)
        self.defer_transient = bool(defer_transient)
        # A SigningKey: checked here on the driver, and it never shows its value.
        self._signing_key = None if not signing_key else load_signing_key(signing_key)
        self.request_timeout = float(request_timeout)
        self.storm_cooldown_seconds = float(storm_cooldown_seconds)

    def __repr__(self) -> str:
        return f"FailedRunCollector({self.store_path!r}, tracking_uri={redact_uri(self.tracking_uri)!r})"

    @contextmanager
    def start_run(self, experiment_id: str | None = None, experiment_name: str | None = None,
                  run_name: str | None = None, tags: dict[str, Any] | None = None) -> Iterator[BufferedRun]:
        """Buffer a run; it is written when the block ends (as FAILED if the block raised)."""
        run = BufferedRun(experiment_id, experiment_name, run_name, tags)
        try:
            yield run
        except BaseException:
            self._write(run, "FAILED")
            raise
        self._write(run, "FINISHED")

    def in_storm(self) -> bool:
        """Whether this process deferred a run on a rate limit within the cool-down."""
        return self.storm_cooldown_seconds > 0 and time.monotonic() < _STORM_UNTIL.get(self.tracking_uri, 0.0)

    def _storm_seen(self) -> None:
        if self.storm_cooldown_seconds > 0:
            _STORM_UNTIL[self.tracking_uri] = time.monotonic() + self.storm_cooldown_seconds

    def _requests(self) -> TrackingRequests:
        # in a storm a 429 defers at once; 5xx and connection errors are retried as always
        policy = fail_fast(self.fail_fast_seconds, in_storm=self.in_storm())
        return TrackingRequests(self.tracking_uri, policy, timeout=self.request_timeout)

    def _write(self, run: BufferedRun, status: str) -> None:
        """Write a buffered run; on a rate limit (or, with ``defer_transient``, a transient
        error) defer what is left of it to the store."""
        buffer = run.buffer
        named = {p[4] for p in buffer.links if p[4] is not None}
        unknown = sorted(named - {m["artifact_path"] for m in buffer.models})
        if unknown:
            raise ValueError(f"Metric points are linked to model {unknown[0]!r}, which the run does not log "
                             "(log_model with that artifact_path, or link with model_id=)")
        data = buffer.run_data(status)
        ops = plan(data, len(buffer.artifacts), len(buffer.models))
        done = 0
        requests: TrackingRequests | None = None
        writer: _BufferedRunWriter | None = None
        try:
            requests = self._requests()
            if data.experiment_id is None:
                data.experiment_id = requests.experiment_id_by_name(buffer.experiment_name) \
                    if buffer.experiment_name else os.environ.get("MLFLOW_EXPERIMENT_ID", "0")
            writer = _BufferedRunWriter(requests, data, buffer)
            for kind, index in ops:
                writer.send(kind, index)
                done += 1
            run.status = LOGGED
        except Exception as exc:
            verdict = classify(exc)
            if verdict == RATE_LIMITED:
                self._storm_seen()
            if verdict == RATE_LIMITED or (verdict == TRANSIENT and self.defer_transient):
                try:
                    run.payload_id = self._defer(buffer, data, ops, done, exc,
                                                 writer.logged_model_ids if writer is not None else {})
                except Exception as store_exc:
                    if requests is not None and writer is not None and writer.run_id is not None:
                        _end_as_failed(requests, writer.run_id)
                    raise RunNotSavedError(
                        f"Run {buffer.run_name or ''!r} was not logged ({verdict}: {error_summary(exc, 200)}) and "
                        f"could not be saved to the failed-run store {self.store_path} either: "
                        f"{type(store_exc).__name__}: {error_summary(store_exc, 300)}. The run is not saved."
                    ) from store_exc
                run.status = DEFERRED
                log.warning("Run %s deferred to %s (%s): %s", buffer.run_name or "", run.payload_id,
                            verdict, error_summary(exc, 200))
                return
            if requests is not None and writer is not None and writer.run_id is not None \
                    and done < len(ops) and ops[done][0] != TERMINATE:
                _end_as_failed(requests, writer.run_id)
            raise
        finally:
            # a run's connections end with it: a long task logs hundreds of runs
            if requests is not None:
                requests.close()

    def _defer(self, buffer: RunBuffer, data: RunData, ops: list[tuple[str, int]], done: int,
               exc: BaseException, logged_model_ids: dict[int, str]) -> str:
        with FailedRunStore(self.store_path) as store:
            key: SigningKey | None = load_signing_key(self._signing_key)
            return write_payload(store, buffer, data, ops, done, exc, logged_model_ids, key, _warn_unsigned_once)
