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

import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow_spark_tools.core.redaction import redact_uri
from mlflow_spark_tools.databricks.paths import to_fuse_path
from mlflow_spark_tools.errors import RunNotSavedError
from mlflow_spark_tools.failed_runs.document import (
    PAYLOAD_TAG,
    canonical_json,
    new_run_secret,
    payload_tag_value,
)
from mlflow_spark_tools.failed_runs.run_writer import RunWriter
from mlflow_spark_tools.failed_runs.signing import KEY_ENV, SigningKey, load_signing_key
from mlflow_spark_tools.failed_runs.store import FailedRunStore
from mlflow_spark_tools.failed_runs.store_entries import FORMAT, VERSION, new_payload_id
from mlflow_spark_tools.runs.models import save_model_dir
from mlflow_spark_tools.runs.run_data import (
    ARTIFACT,
    DATASET_CONTEXT_TAG,
    MODEL,
    TERMINATE,
    LinkedPoint,
    RunData,
    check_dataset_input,
    check_link,
    check_metric,
    check_param,
    check_tag,
    plan,
)
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


class BufferedRun:
    """A run being buffered inside ``collector.start_run``; see the module docstring.

    After the ``with`` block: ``run_id`` (None if the run was never created), ``payload_id``
    (None if nothing was deferred) and ``status`` (``"logged"`` or ``"deferred"``).
    """

    def __init__(self, collector: FailedRunCollector, experiment_id: str | None,
                 experiment_name: str | None, run_name: str | None, tags: dict[str, Any] | None) -> None:
        self._collector = collector
        self._experiment_id = None if experiment_id is None else str(experiment_id)
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._start_time = int(time.time() * 1000)
        self._params: dict[str, str] = {}
        self._metrics: list[tuple[str, float, int, int]] = []
        self._tags: dict[str, str] = {}
        self._artifacts: list[tuple[str, str | None]] = []
        self._models: list[dict[str, Any]] = []
        self._inputs: list[dict[str, Any]] = []
        self._links: list[LinkedPoint] = []
        self.run_id: str | None = None
        self._artifact_uri: str | None = None
        # Chosen up front and set as the run's tag at create: a replay finds a run created by a
        # request whose answer was lost by it, and checks that a run id in the payload is its own.
        self._reserved_payload_id = new_payload_id()
        self._run_secret = new_run_secret()
        self.payload_id: str | None = None
        self.status: str | None = None
        self.set_tags(tags or {})

    # ---- the logging API ---------------------------------------------------------------

    def log_param(self, key: str, value: Any) -> None:
        key, text = check_param(key, value)
        if key in self._params and self._params[key] != text:
            raise ValueError(f"Param {key!r} was logged with {self._params[key]!r}; MLflow does not "
                             f"allow changing it to {text!r}")
        self._params[key] = text

    def log_params(self, params: dict[str, Any]) -> None:
        for key, value in params.items():
            self.log_param(key, value)

    def log_metric(self, key: str, value: float, step: int | None = None, timestamp: int | None = None, *,
                   model: str | None = None, model_id: str | None = None, dataset: Any = None) -> None:
        """Log a metric point; as with MLflow 3's ``log_metric``, it may be linked to a logged
        model and to the dataset it was computed on.

        Args:
            model: the name of a model this run logs (``log_model``'s ``artifact_path``): the
                point becomes one of that model's metrics (the run's first model of the name).
            model_id: instead, an existing logged model's id.
            dataset: an ``mlflow.data`` dataset (or a mapping with ``name`` and ``digest``).
        """
        ts = int(time.time() * 1000) if timestamp is None else timestamp
        point = check_metric(key, value, ts, 0 if step is None else step)
        self._metrics.append(point)
        if model is not None or model_id is not None or dataset is not None:
            name, digest = _dataset_name_digest(dataset) if dataset is not None else (None, None)
            self._links.append(check_link((*point, model, model_id, name, digest)))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, *, model: str | None = None,
                    model_id: str | None = None, dataset: Any = None) -> None:
        ts = int(time.time() * 1000)
        for key, value in metrics.items():
            self.log_metric(key, value, step, ts, model=model, model_id=model_id, dataset=dataset)

    def log_input(self, dataset: Any, context: str | None = None, tags: dict[str, str] | None = None) -> None:
        """Record a dataset input of the run, as ``mlflow.log_input`` does.

        Args:
            dataset: an ``mlflow.data`` dataset (``mlflow.data.from_pandas(...)`` ...), or a
                mapping with ``name``, ``digest``, ``source_type``, ``source`` and optional
                ``schema`` and ``profile`` strings.
            context: what the dataset was used for (``training``, ``eval``): the input's
                ``mlflow.data.context`` tag.
            tags: more input tags.
        """
        entry = _dataset_fields(dataset)
        entry["tags"] = {**(tags or {}), **({DATASET_CONTEXT_TAG: context} if context else {})}
        self._inputs.append(check_dataset_input(entry))

    def set_tag(self, key: str, value: Any) -> None:
        key, text = check_tag(key, value)
        if key == PAYLOAD_TAG:
            raise ValueError(f"The tag {PAYLOAD_TAG} is set by the collector itself")
        self._tags[key] = text

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.set_tag(key, value)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Log a local file or directory (uploaded when the run is written)."""
        if not os.path.exists(local_path):
            raise FileNotFoundError(f"Artifact {local_path!r} does not exist")
        self._artifacts.append((str(local_path), artifact_path))

    def log_model(self, model: Any, artifact_path: str, flavor: str | None = None,
                  log_model_func: Callable[..., Any] | None = None, **kwargs: Any) -> None:
        """Log a model under ``artifact_path``.

        Args:
            model: the model object.
            artifact_path: the model's name (``model``): with MLflow 3 a logged model of the
                run by that name, with MLflow 2 (or a name MLflow 3 refuses for a logged
                model, such as ``models/ridge``) that folder of the run's artifacts.
            flavor: an MLflow flavor (``sklearn``, ``xgboost``, ...), saved with its
                ``save_model``.
            log_model_func: instead of ``flavor``, a function ``f(model, path, **kwargs)`` that
                saves the model as an MLflow model directory at ``path``
                (``mlflow.sklearn.save_model`` has that shape).
            kwargs: passed to the save function (``signature``, ``input_example``, ...).
        """
        if flavor is None and log_model_func is None:
            raise ValueError("log_model needs flavor= (e.g. 'sklearn') or log_model_func=")
        self._models.append({"model": model, "artifact_path": artifact_path, "flavor": flavor,
                             "save_func": log_model_func, "kwargs": kwargs})

    # ---- writing -----------------------------------------------------------------------

    def _run_data(self, status: str) -> RunData:
        return RunData(self._experiment_id, self._run_name, self._start_time, self._params,
                       self._metrics, self._tags, status, int(time.time() * 1000),
                       inputs=list(self._inputs), links=list(self._links))

    def _write(self, status: str) -> None:
        collector = self._collector
        named = {p[4] for p in self._links if p[4] is not None}
        unknown = sorted(named - {m["artifact_path"] for m in self._models})
        if unknown:
            raise ValueError(f"Metric points are linked to model {unknown[0]!r}, which the run does not log "
                             "(log_model with that artifact_path, or link with model_id=)")
        run = self._run_data(status)
        ops = plan(run, len(self._artifacts), len(self._models))
        done = 0
        requests: TrackingRequests | None = None
        writer: _BufferedRunWriter | None = None
        try:
            requests = collector._requests()
            if run.experiment_id is None:
                run.experiment_id = requests.experiment_id_by_name(self._experiment_name) \
                    if self._experiment_name else os.environ.get("MLFLOW_EXPERIMENT_ID", "0")
            writer = _BufferedRunWriter(requests, run, self)
            for kind, index in ops:
                writer.send(kind, index)
                done += 1
            self.status = LOGGED
        except Exception as exc:
            verdict = classify(exc)
            if verdict == RATE_LIMITED:
                collector._storm_seen()
            if verdict == RATE_LIMITED or (verdict == TRANSIENT and collector.defer_transient):
                try:
                    self.payload_id = collector._defer(self, run, ops, done, exc,
                                                       writer.logged_model_ids if writer is not None else {})
                except Exception as store_exc:
                    if requests is not None and writer is not None and writer.run_id is not None:
                        _end_as_failed(requests, writer.run_id)
                    raise RunNotSavedError(
                        f"Run {self._run_name or ''!r} was not logged ({verdict}: {error_summary(exc, 200)}) and "
                        f"could not be saved to the failed-run store {collector.store_path} either: "
                        f"{type(store_exc).__name__}: {error_summary(store_exc, 300)}. The run is not saved."
                    ) from store_exc
                self.status = DEFERRED
                log.warning("Run %s deferred to %s (%s): %s", self._run_name or "", self.payload_id,
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


def _dataset_fields(dataset: Any) -> dict[str, Any]:
    """The fields of a dataset input from an ``mlflow.data`` dataset or a mapping."""
    if isinstance(dataset, dict):
        return dict(dataset)
    to_entity = getattr(dataset, "_to_mlflow_entity", None)
    if to_entity is None:
        raise TypeError(f"log_input takes an mlflow.data dataset or a mapping, not {type(dataset).__name__}")
    entity = to_entity()
    return {"name": entity.name, "digest": entity.digest, "source_type": entity.source_type,
            "source": entity.source, "schema": entity.schema, "profile": entity.profile}


def _dataset_name_digest(dataset: Any) -> tuple[str, str]:
    if isinstance(dataset, dict):
        return str(dataset.get("name")), str(dataset.get("digest"))
    return str(dataset.name), str(dataset.digest)


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

    def __init__(self, requests: TrackingRequests, run: RunData, buffered: BufferedRun) -> None:
        super().__init__(requests, run)
        self.buffered = buffered

    def create_tags(self) -> dict[str, str]:
        # The mark that lets a replay prove this run is the payload's own before writing into
        # it, and find it after a create whose answer was lost.
        b = self.buffered
        return {**super().create_tags(), PAYLOAD_TAG: payload_tag_value(b._reserved_payload_id, b._run_secret)}

    def create(self, uncertain: bool) -> None:
        super().create(uncertain)
        self.buffered.run_id, self.buffered._artifact_uri = self.run_id, self.artifact_uri

    def log_artifact(self, index: int) -> None:
        local_path, artifact_path = self.buffered._artifacts[index]
        upload_artifact(self.requests, self.created_run_id, self.artifact_uri, local_path, artifact_path)

    def log_model(self, index: int, uncertain: bool) -> None:
        m = self.buffered._models[index]
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
        run = BufferedRun(self, experiment_id, experiment_name, run_name, tags)
        try:
            yield run
        except BaseException:
            run._write("FAILED")
            raise
        run._write("FINISHED")

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

    def _defer(self, run: BufferedRun, data: RunData, ops: list[tuple[str, int]], done: int,
               exc: BaseException, logged_model_ids: dict[int, str]) -> str:
        with FailedRunStore(self.store_path) as store:
            return self._write_payload(store, run, data, ops, done, exc, logged_model_ids)

    def _write_payload(self, store: FailedRunStore, run: BufferedRun, data: RunData, ops: list[tuple[str, int]],
                       done: int, exc: BaseException, logged_model_ids: dict[int, str]) -> str:
        payload_id = run._reserved_payload_id
        key: SigningKey | None = load_signing_key(self._signing_key)
        artifact_done = {i for kind, i in ops[:done] if kind == ARTIFACT}
        model_done = {i for kind, i in ops[:done] if kind == MODEL}
        artifacts = []
        for i, (local_path, artifact_path) in enumerate(run._artifacts):
            entry: dict[str, Any] = {"artifact_path": artifact_path, "is_dir": os.path.isdir(local_path),
                                     "name": os.path.basename(os.path.normpath(local_path)), "file": None}
            if i not in artifact_done:
                entry["file"] = f"artifacts/{i}/{entry['name']}"
                entry["manifest"] = [list(row) for row in store.copy_into(payload_id, Path(local_path), entry["file"])]
            artifacts.append(entry)
        models = []
        for i, m in enumerate(run._models):
            entry = {"artifact_path": m["artifact_path"], "flavor": m["flavor"], "blob": None}
            if i not in model_done:
                import cloudpickle

                blob = cloudpickle.dumps({"model": m["model"], "save_func": m["save_func"],
                                          "flavor": m["flavor"], "kwargs": m["kwargs"]})
                entry["blob"] = f"models/{i}.pkl"
                entry["sha256"] = hashlib.sha256(blob).hexdigest()
                entry["signature"] = key.sign(blob) if key is not None else None
                if key is None:
                    _warn_unsigned_once()
                store.write_blob(payload_id, entry["blob"], blob)
                if i in logged_model_ids:  # created before the refusal: the replay goes on with it
                    entry["logged_model_id"] = logged_model_ids[i]
            models.append(entry)
        document = {
            "format": FORMAT,
            "version": VERSION,
            "payload_id": payload_id,
            "created_at": int(time.time() * 1000),
            "host": socket.gethostname(),
            "reason": f"{classify(exc)}: {error_summary(exc, 500)}",
            "experiment_name": run._experiment_name,
            "run_id": run.run_id,
            "run_secret": run._run_secret,
            "artifact_uri": run._artifact_uri,
            "ops_done": done,
            "run": data.to_json(),
            "artifacts": artifacts,
            "models": models,
        }
        if key is not None:
            document["signature"] = key.sign(canonical_json(document))
        store.publish(payload_id, document)
        return payload_id

