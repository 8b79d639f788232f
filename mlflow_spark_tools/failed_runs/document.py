"""What a run document in the failed-run store may hold, checked before the replayer trusts it.

The store lives where many users can write (DBFS root, a shared Volume), and the replay job
runs with more rights than they have. So a document is untrusted input: every field is
checked for type, range and shape here, and the replayer works only with the
:class:`Payload` this module returns, never with the raw JSON. What the checks hold:

- file references are exactly the names the collector gives (``artifacts/<i>/<name>``,
  ``models/<i>.pkl``): nothing outside the payload's own folder can be named;
- artifact paths in the run are relative, without ``..``, backslashes or empty segments;
- ``ops_done`` lies within the run's plan, ``status`` is a terminal run status, ids have
  MLflow's shape, and the tag that marks a payload's run cannot be set by the document;
- a logged model id has MLflow's shape, and the replay uses it only when the server says it
  is the run's own model of that name (else it creates the model anew); metric points of an
  unsigned document are linked by id only to logged models of the run's own experiment;
- dataset inputs and metric links are within MLflow's limits and link only to the run's own
  models by name;
- sizes and counts stay within :class:`ReplayLimits`, so one document cannot exhaust the
  replayer's memory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Any

from mlflow_spark_tools.config import ReplayLimits
from mlflow_spark_tools.runs.run_data import RunData, RunDataError, plan
from mlflow_spark_tools.tracking.logged_models import MODEL_ID

PAYLOAD_TAG = "mlflow_spark_tools.payload_id"
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
LOCAL_ARTIFACT_SCHEMES = ("", "file")

# whole-string patterns (fullmatch), ASCII only
_RUN_ID = re.compile(r"[a-zA-Z0-9][\w-]{0,255}", re.ASCII)  # MLflow's run id rule
_EXPERIMENT_ID = re.compile(r"[0-9A-Za-z_-]{1,64}", re.ASCII)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_SECRET = re.compile(r"[0-9a-f]{32}")
_FLAVOR = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}", re.ASCII)
_MAX_NAME = 255
_MAX_RUN_NAME = 500
_MAX_EXPERIMENT_NAME = 1000
_MAX_PATH = 1000


def canonical_json(document: dict[str, Any]) -> bytes:
    """The bytes a document's signature covers: sorted JSON without the signature itself."""
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8")


class PayloadError(ValueError):
    """The document cannot be replayed; the message is the quarantine reason."""


@dataclass(frozen=True)
class ArtifactEntry:
    """One logged file or directory; ``file`` is None when it was uploaded before deferring."""

    artifact_path: str | None
    name: str
    is_dir: bool
    file: str | None
    manifest: tuple[tuple[str, int, str], ...] | None  # (path inside the entry, size, sha256)


@dataclass(frozen=True)
class ModelEntry:
    """One logged model; ``blob`` is None when it was uploaded before deferring."""

    artifact_path: str
    flavor: str | None
    blob: str | None
    sha256: str | None
    signature: str | None
    # the MLflow 3 logged model the collector created for it before the run was deferred
    logged_model_id: str | None = None


@dataclass
class Payload:
    """A checked run document."""

    payload_id: str
    run: RunData
    experiment_name: str | None
    run_id: str | None
    ops_done: int
    reason: str
    artifacts: list[ArtifactEntry]
    models: list[ModelEntry]
    run_secret: str | None = None

    @functools.cached_property
    def ops(self) -> list[tuple[str, int]]:
        """The requests that log the run (see :func:`~mlflow_spark_tools.runs.run_data.plan`)."""
        return plan(self.run, len(self.artifacts), len(self.models))

    @property
    def tag_value(self) -> str:
        """The value of :data:`PAYLOAD_TAG` on this payload's run."""
        return payload_tag_value(self.payload_id, self.run_secret)


def new_run_secret() -> str:
    """A secret the collector keeps for one run: only its hash is on the run (in the tag)."""
    return secrets.token_hex(16)


def payload_tag_value(payload_id: str, run_secret: str | None) -> str:
    """``<payload id>:<hash of the run secret>``: readable on the run, but proving ownership
    needs the secret, which only the collector (and, for a deferred run, its payload) holds.
    Documents of older collectors have no secret: then the payload id alone."""
    if run_secret is None:
        return payload_id
    return f"{payload_id}:{hashlib.sha256(run_secret.encode()).hexdigest()[:32]}"


def is_local_artifact_uri(uri: str | None) -> bool:
    """Whether a run's artifacts would be written by this process to its own file system."""
    if not uri:
        return False
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    return scheme in LOCAL_ARTIFACT_SCHEMES or (len(scheme) == 1 and uri[1:3] in (":\\", ":/"))


# Artifact URIs whose requests carry the tracking server's credentials (MLflow attaches
# MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN to whatever host such a URI names).
HOST_ADDRESSED_SCHEMES = {"http": 80, "https": 443, "mlflow-artifacts": None}


def _host_port(uri: str) -> tuple[str, int | None] | None:
    """The host and port a URI names (userinfo left out, the scheme's default port filled in),
    or None when it names no host."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        port = -1  # a port that is not one: no host matches it
    return parts.hostname.lower(), port if port is not None else HOST_ADDRESSED_SCHEMES.get(scheme)


def foreign_artifact_host(artifact_uri: str | None, tracking_uri: str, allowed: tuple[str, ...] = ()) -> str | None:
    """The ``host[:port]`` a run's artifact URI sends requests to when it is neither the
    tracking server's nor in ``allowed`` (``host`` or ``host:port`` entries), else None.

    Uploads to an ``http(s)://`` or ``mlflow-artifacts://<host>`` location carry the replay
    identity's tracking credentials, and whoever creates an experiment chooses its artifact
    location: a location naming another host would receive them.
    """
    if not artifact_uri or urllib.parse.urlsplit(artifact_uri).scheme.lower() not in HOST_ADDRESSED_SCHEMES:
        return None
    target = _host_port(artifact_uri)
    if target is None or target == _host_port(tracking_uri):
        return None
    host, port = target
    named = host if port is None else f"{host}:{port}"
    for entry in allowed:
        entry = entry.strip().lower()
        if entry == named or (":" not in entry and entry == host):
            return None
    return named


def check_run_id(value: Any, where: str) -> str | None:
    """A run id of MLflow's shape, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value):
        raise PayloadError(f"{where}: run_id {str(value)[:80]!r} is not a run id")
    return value


def check_artifact_path(value: Any, where: str, *, required: bool = False) -> str | None:
    """A relative artifact path without ``..``, backslashes, empty segments or control characters."""
    if value is None or value == "":
        if required:
            raise PayloadError(f"{where}: artifact_path is required")
        return None
    if not isinstance(value, str) or len(value) > _MAX_PATH:
        raise PayloadError(f"{where}: artifact_path must be a string of at most {_MAX_PATH} characters")
    stripped = value.rstrip("/")
    parts = stripped.split("/")
    if (value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts)
            or any(ord(c) < 32 or c == "\x7f" for c in value) or ":" in parts[0]):
        raise PayloadError(f"{where}: artifact_path {value[:120]!r} must be relative, without '..', "
                           "'.', backslashes, empty segments, a scheme or control characters")
    return stripped


def check_name(value: Any, where: str) -> str:
    """One path component: no separator, not ``.`` or ``..``, no control characters."""
    if (not isinstance(value, str) or not value or len(value) > _MAX_NAME or value in (".", "..")
            or "/" in value or "\\" in value or any(ord(c) < 32 or c == "\x7f" for c in value)):
        raise PayloadError(f"{where}: name {str(value)[:120]!r} is not a single file name")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PayloadError(f"{where} must be an integer from {low} to {high}, got {str(value)[:40]!r}")
    return value


def _optional_str(value: Any, where: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise PayloadError(f"{where} must be a string of at most {limit} characters")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(f"{where} must be a list")
    return value


def _manifest(value: Any, where: str, limits: ReplayLimits) -> tuple[tuple[str, int, str], ...] | None:
    if value is None:
        return None
    rows = _list(value, f"{where}.manifest")
    if len(rows) > limits.max_files:
        raise PayloadError(f"{where}: {len(rows)} files, over the limit of {limits.max_files} "
                           "(replay.limits.max_files)")
    out = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
                and isinstance(row[2], str) and _SHA256.fullmatch(row[2])):
            raise PayloadError(f"{where}: a manifest row is not [path, size, sha256]")
        relative = row[0]
        if relative:
            check_artifact_path(relative, f"{where} manifest path")
        out.append((relative, _int(row[1], f"{where}: a file size", 0, limits.max_artifact_bytes), row[2]))
    return tuple(out)


def _artifact(index: int, raw: Any, limits: ReplayLimits) -> ArtifactEntry:
    where = f"artifact {index}"
    if not isinstance(raw, dict):
        raise PayloadError(f"{where} is not an object")
    name = check_name(raw.get("name"), where)
    is_dir = raw.get("is_dir")
    if not isinstance(is_dir, bool):
        raise PayloadError(f"{where}: is_dir must be true or false")
    file = raw.get("file")
    if file is not None and file != f"artifacts/{index}/{name}":
        raise PayloadError(f"{where}: file {str(file)[:120]!r} is not the collector's artifacts/{index}/{name}")
    manifest = _manifest(raw.get("manifest"), where, limits)
    if manifest is not None and not is_dir and [m[0] for m in manifest] != [""]:
        raise PayloadError(f"{where}: the manifest of a file names other files")
    return ArtifactEntry(check_artifact_path(raw.get("artifact_path"), where), name, is_dir, file, manifest)


def _model(index: int, raw: Any) -> ModelEntry:
    where = f"model {index}"
    if not isinstance(raw, dict):
        raise PayloadError(f"{where} is not an object")
    blob = raw.get("blob")
    if blob is not None and blob != f"models/{index}.pkl":
        raise PayloadError(f"{where}: blob {str(blob)[:120]!r} is not the collector's models/{index}.pkl")
    flavor = raw.get("flavor")
    if flavor is not None and (not isinstance(flavor, str) or not _FLAVOR.fullmatch(flavor)):
        raise PayloadError(f"{where}: flavor {str(flavor)[:60]!r} is not a flavor name")
    sha256, signature = raw.get("sha256"), raw.get("signature")
    if blob is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise PayloadError(f"{where}: sha256 of the model blob is missing or malformed")
    if signature is not None and not (isinstance(signature, str) and _SIGNATURE.fullmatch(signature)):
        raise PayloadError(f"{where}: the blob signature is malformed")
    path = check_artifact_path(raw.get("artifact_path"), where, required=True)
    assert path is not None
    model_id = raw.get("logged_model_id")
    if model_id is not None and not (isinstance(model_id, str) and MODEL_ID.fullmatch(model_id)):
        raise PayloadError(f"{where}: logged_model_id {str(model_id)[:60]!r} is not a model id")
    return ModelEntry(path, flavor, blob, sha256, signature, model_id)


def _check_counts(run: Any, limits: ReplayLimits) -> dict[str, Any]:
    """Counts first, before anything is built from them; returns the run object."""
    if not isinstance(run, dict):
        raise PayloadError("run must be an object")
    params, tags, metrics = run.get("params") or {}, run.get("tags") or {}, run.get("metrics") or []
    inputs, links = run.get("inputs") or [], run.get("links") or []
    if not isinstance(params, dict) or not isinstance(tags, dict) or not isinstance(metrics, list):
        raise PayloadError("run params and tags must be objects, metrics a list")
    if not isinstance(inputs, list) or not isinstance(links, list):
        raise PayloadError("run inputs and links must be lists")
    for what, count, limit, key in (("params", len(params), limits.max_params, "max_params"),
                                    ("tags", len(tags), limits.max_tags, "max_tags"),
                                    ("metric points", len(metrics), limits.max_metric_points,
                                     "max_metric_points"),
                                    ("linked metric points", len(links), limits.max_metric_points,
                                     "max_metric_points"),
                                    ("dataset inputs", len(inputs), limits.max_artifacts, "max_artifacts")):
        if count > limit:
            raise PayloadError(f"over the limits: {count} {what}, the limit is {limit} "
                               f"(replay.limits.{key})")
    if PAYLOAD_TAG in tags:
        raise PayloadError(f"the tag {PAYLOAD_TAG} is reserved for the replay's own mark")
    return run


def check_document(document: dict[str, Any], payload_id: str, limits: ReplayLimits) -> Payload:
    """The checked payload of a parsed document; raises :class:`PayloadError` with the reason."""
    if document.get("payload_id") != payload_id:
        raise PayloadError("payload id in the document does not match its file name")
    raw_run = _check_counts(document.get("run"), limits)
    artifacts_raw = _list(document.get("artifacts"), "artifacts")
    models_raw = _list(document.get("models"), "models")
    if len(artifacts_raw) + len(models_raw) > limits.max_artifacts:
        raise PayloadError(f"over the limits: {len(artifacts_raw) + len(models_raw)} artifacts and models, "
                           f"the limit is {limits.max_artifacts} (replay.limits.max_artifacts)")
    run_name = _optional_str(raw_run.get("run_name"), "run_name", _MAX_RUN_NAME)
    experiment_id = raw_run.get("experiment_id")
    if experiment_id is not None and not (isinstance(experiment_id, (str, int)) and not isinstance(experiment_id, bool)
                                          and _EXPERIMENT_ID.fullmatch(str(experiment_id))):
        raise PayloadError(f"experiment_id {str(experiment_id)[:80]!r} is not an experiment id")
    experiment_name = _optional_str(document.get("experiment_name"), "experiment_name", _MAX_EXPERIMENT_NAME)
    if experiment_id is None and not experiment_name:
        raise PayloadError("the document names no experiment")
    status = raw_run.get("status", "FINISHED")
    if status not in TERMINAL_STATUSES:
        raise PayloadError(f"run status {str(status)[:40]!r} is not one of {', '.join(TERMINAL_STATUSES)}")
    for key in ("start_time", "end_time"):
        if raw_run.get(key) is not None:
            _int(raw_run[key], f"run {key}", 0, 2**63 - 1)
    try:
        run = RunData.from_json({**raw_run, "run_name": run_name})
    except RunDataError as exc:
        raise PayloadError(f"values MLflow would reject: {exc}") from None
    artifacts = [_artifact(i, raw, limits) for i, raw in enumerate(artifacts_raw)]
    models = [_model(i, raw) for i, raw in enumerate(models_raw)]
    names = {m.artifact_path for m in models}
    for key, _, _, _, model_name, model_id, _, _ in run.links:
        if model_name is not None and model_name not in names:
            raise PayloadError(f"metric {key[:80]!r} is linked to model {model_name[:80]!r}, which the run does not log")
        if model_id is not None and not MODEL_ID.fullmatch(model_id):
            raise PayloadError(f"metric {key[:80]!r} is linked to {model_id[:60]!r}, which is not a model id")
    run_id = check_run_id(document.get("run_id"), "document")
    ops_count = len(plan(run, len(artifacts), len(models)))
    ops_done = _int(document.get("ops_done") or 0, "ops_done", 0, ops_count - 1)
    if ops_done > 0 and run_id is None:
        raise PayloadError("ops_done says the run was created, but the document has no run_id")
    reason = document.get("reason")
    secret = document.get("run_secret")
    if secret is not None and not (isinstance(secret, str) and _SECRET.fullmatch(secret)):
        raise PayloadError("run_secret is malformed")
    return Payload(payload_id, run, experiment_name, run_id, ops_done,
                   reason if isinstance(reason, str) else "", artifacts, models, secret)


def check_progress(progress: dict[str, Any], payload: Payload) -> tuple[str | None, int, int]:
    """(run id, requests done, attempts) from a replay checkpoint, range-checked."""
    run_id = check_run_id(progress.get("run_id"), "progress.json")
    # equal to the plan's length when a replayer stopped between its last request and finishing
    ops_done = _int(progress.get("ops_done") or 0, "progress.json ops_done", 0, len(payload.ops))
    attempts = _int(progress.get("attempts") or 0, "progress.json attempts", 0, 1_000_000)
    if ops_done > 0 and run_id is None and payload.run_id is None:
        raise PayloadError("progress.json says the run was created, but names no run_id")
    return run_id, ops_done, attempts
