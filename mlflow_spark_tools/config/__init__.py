"""Typed configuration loaded from ``conf/`` YAML, the environment and command-line flags.

Precedence, lowest first: ``conf/defaults.yaml`` (shipped in the wheel), the YAML file named
by ``MLFLOW_SPARK_TOOLS_CONF``, environment variables, then explicit overrides from flags.

This module is the public face of the configuration: the rate-limit profiles
(:mod:`~mlflow_spark_tools.config.rate_limits`), the client's retry settings
(:mod:`~mlflow_spark_tools.config.retries`) and the files they come from
(:mod:`~mlflow_spark_tools.config.files`) are re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow_spark_tools.config.files import conf_dir, read_yaml
from mlflow_spark_tools.config.rate_limits import API_CLASSES, RateLimitProfile
from mlflow_spark_tools.config.retries import (
    CLIENT_OPERATIONS,
    DEFAULT_OPERATION,
    RETRY_OPERATIONS,
    ClientConfig,
    RetrySettings,
)
from mlflow_spark_tools.config.values import positive_int
from mlflow_spark_tools.core.identifiers import validate_database
from mlflow_spark_tools.core.redaction import redact_uri
from mlflow_spark_tools.errors import InvalidConfigError

__all__ = [
    "API_CLASSES", "CLIENT_OPERATIONS", "CONF_ENV", "DEFAULT_OPERATION", "ENV_OVERRIDES", "GiB",
    "MiB", "RETRY_OPERATIONS", "ClientConfig", "EngineConfig", "InvalidConfigError",
    "RateLimitProfile", "ReplayConfig", "ReplayLimits", "RetrySettings", "Settings", "TablesConfig",
    "conf_dir", "load_settings", "read_yaml",
]

CONF_ENV = "MLFLOW_SPARK_TOOLS_CONF"
ENV_OVERRIDES = {
    "MLFLOW_SPARK_TOOLS_WAREHOUSE": ("engine", "warehouse"),
    "MLFLOW_SPARK_TOOLS_DATABASE": ("tables", "database"),
    "MLFLOW_SPARK_TOOLS_PROFILE": ("rate_limit_profile",),
    "SPARK_REMOTE": ("engine", "remote"),
    "MLFLOW_TRACKING_URI": ("tracking_uri",),
    "MLFLOW_SPARK_TOOLS_BACKEND_STORE_URI": ("tables", "backend_store_uri"),
}
MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class EngineConfig:
    """Which Spark engine to use and where the embedded one keeps its tables."""

    remote: str | None = None
    warehouse: str | None = None

    def __post_init__(self) -> None:
        if self.remote is not None and not str(self.remote).startswith("sc://"):
            raise InvalidConfigError(
                f"engine.remote must be a Spark Connect URL like sc://host:15002, got {self.remote!r}."
            )
        if self.warehouse is not None and not str(self.warehouse).strip():
            raise InvalidConfigError("engine.warehouse must be a directory path or null.")


@dataclass(frozen=True)
class TablesConfig:
    """How experiment tables are built and refreshed."""

    database: str = "mlflow_exp"
    page_size: int = 1000
    fetch_workers: int = 4
    watermark_margin_seconds: int = 600
    # Runs the driver holds at once in a full build: a bigger experiment is staged in Spark in
    # chunks of this many runs and shaped there.
    chunk_runs: int = 20_000
    # Build in full where the last full build took less time than the last incremental refresh
    # (scaled to the run count); false refreshes incrementally wherever it can.
    refresh_by_cost: bool = True
    # delta.enableDeletionVectors of the tables a build writes on Spark with Delta Lake; null
    # leaves the platform's default.
    deletion_vectors: bool | None = None
    # Metric keys whose every point goes to exp_<id>_metrics: null (none), "all", or keys.
    metric_history: str | list[str] | None = None
    # The most points kept per run and metric key (Databricks allows 1,000,000 steps per run).
    max_history_points: int = 1_000_000
    # Parallel metric history requests; the `other` qps limit still bounds their rate.
    history_workers: int = 4
    # Model registry of the registered_models / model_versions tables (build-tables --registry):
    # null means MLflow's resolution (MLFLOW_REGISTRY_URI, else the tracking server's registry).
    # Not in the repr: a URI may carry credentials (the summaries show it redacted).
    registry_uri: str | None = field(default=None, repr=False)
    # rest (the tracking server's API), database (its backend database, read-only),
    # system-tables: the sources of tables.source_registry.
    source: str = "rest"
    # SQLAlchemy URI of the backend database for source `database`; it holds the database
    # password, so it is not in the repr and is never printed.
    backend_store_uri: str | None = field(default=None, repr=False)
    # `catalog.schema` of the MLflow system tables for source `system-tables`, and the workspace
    # whose experiments are read (null: the cluster's own on Databricks).
    system_schema: str = "system.mlflow"
    system_workspace_id: str | None = None

    def __post_init__(self) -> None:
        validate_database(self.database)
        if not isinstance(self.source, str) or not self.source:
            # which names there are is the table build's (tables.source_registry)
            raise InvalidConfigError(f"tables.source must name a source, got {self.source!r}.")
        validate_database(self.system_schema)
        if self.system_workspace_id is not None:
            object.__setattr__(self, "system_workspace_id", str(self.system_workspace_id))
        if self.backend_store_uri is not None and (
                not isinstance(self.backend_store_uri, str) or not self.backend_store_uri.strip()):
            raise InvalidConfigError("tables.backend_store_uri must be a SQLAlchemy database URI or null.")
        if self.registry_uri is not None and (not isinstance(self.registry_uri, str) or not self.registry_uri.strip()):
            raise InvalidConfigError(
                f"tables.registry_uri must be a registry URI (e.g. databricks-uc) or null, got {self.registry_uri!r}.")
        if self.metric_history is not None and not isinstance(self.metric_history, (str, list)):
            raise InvalidConfigError("tables.metric_history must be null, \"all\" or a list of metric keys.")
        positive_int("tables", "max_history_points", self.max_history_points)
        positive_int("tables", "history_workers", self.history_workers)
        positive_int("tables", "page_size", self.page_size)
        if self.page_size > 50000:
            raise InvalidConfigError("tables.page_size must be <= 50000 (MLflow's maximum page).")
        positive_int("tables", "fetch_workers", self.fetch_workers)
        positive_int("tables", "watermark_margin_seconds", self.watermark_margin_seconds, 0)
        positive_int("tables", "chunk_runs", self.chunk_runs)
        if self.deletion_vectors is not None and not isinstance(self.deletion_vectors, bool):
            raise InvalidConfigError(
                f"tables.deletion_vectors must be true, false or null, got {self.deletion_vectors!r}.")
        if not isinstance(self.refresh_by_cost, bool):
            raise InvalidConfigError(f"tables.refresh_by_cost must be true or false, got {self.refresh_by_cost!r}.")



@dataclass(frozen=True)
class ReplayLimits:
    """How large one payload may be before the replayer refuses it unread.

    The defaults admit the params and tags a run on Databricks may hold (1,600 each) and half a
    million metric points, and bound what documents cost in memory: parsing JSON takes up to
    about 25 times the document's size, so the bytes of documents held at once are capped.

    Attributes:
        max_document_bytes: size of the JSON document.
        max_params: params of the run.
        max_tags: tags of the run.
        max_metric_points: metric points of the run.
        max_artifacts: artifact and model entries of the run.
        max_files: files inside the payload's artifact copies.
        max_artifact_bytes: bytes of artifact copies and model blobs together.
        max_model_bytes: bytes of one model blob (read into memory to verify and unpickle).
        max_inflight_document_bytes: bytes of documents one replayer holds at once; a large
            document waits for room, so that workers cannot each hold one at the limit.
    """

    max_document_bytes: int = 32 * MiB
    max_params: int = 1600
    max_tags: int = 1600
    max_metric_points: int = 500_000
    max_artifacts: int = 1000
    max_files: int = 10_000
    max_artifact_bytes: int = 4 * GiB
    max_model_bytes: int = 2 * GiB
    max_inflight_document_bytes: int = 32 * MiB

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidConfigError(f"replay.limits.{name} must be a positive integer, got {value!r}.")


@dataclass(frozen=True)
class ReplayConfig:
    """The replay job: how large a payload may be before it is refused unread, how long what a
    replayed payload leaves in the store is kept (days; None keeps it), and how long a document
    still being written is waited for."""

    limits: ReplayLimits = field(default_factory=ReplayLimits)
    retention_days: float | None = 7.0
    torn_grace_seconds: float = 900.0
    # Hosts (host or host:port) other than the tracking server's that runs' artifacts may be
    # uploaded to over http(s):// or mlflow-artifacts://; the uploads carry the replay's
    # tracking credentials.
    artifact_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        days = self.retention_days
        if days is not None and (isinstance(days, bool) or not isinstance(days, (int, float))
                                 or not math.isfinite(days) or days < 0):
            raise InvalidConfigError(f"replay.retention_days must be a number of days >= 0 or null, got {days!r}.")
        grace = self.torn_grace_seconds
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not math.isfinite(grace) or grace < 0:
            raise InvalidConfigError(f"replay.torn_grace_seconds must be a number of seconds >= 0, got {grace!r}.")
        hosts = self.artifact_hosts
        if hosts is None:
            hosts = ()
        if isinstance(hosts, str) or not all(isinstance(h, str) and h.strip() for h in hosts):
            raise InvalidConfigError(f"replay.artifact_hosts must be a list of host or host:port names, got {hosts!r}.")
        object.__setattr__(self, "artifact_hosts", tuple(h.strip() for h in hosts))
        limits = self.limits
        if isinstance(limits, Mapping):
            known = {f.name for f in dataclasses.fields(ReplayLimits)}
            unknown = sorted(set(limits) - known)
            if unknown:
                raise InvalidConfigError(f"Unknown keys replay.limits.{unknown[0]}; known: {', '.join(sorted(known))}.")
            limits = ReplayLimits(**limits)
        if not isinstance(limits, ReplayLimits):
            raise InvalidConfigError("replay.limits must be a mapping.")
        object.__setattr__(self, "limits", limits)


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to know before it starts."""

    tracking_uri: str | None = None
    rate_limit_profile: str = "databricks"
    engine: EngineConfig = field(default_factory=EngineConfig)
    tables: TablesConfig = field(default_factory=TablesConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)

    def profile(self) -> RateLimitProfile:
        return RateLimitProfile.load(self.rate_limit_profile)

    def __repr__(self) -> str:
        # the tracking URI may carry user:password@
        uri = None if self.tracking_uri is None else redact_uri(self.tracking_uri)
        return (f"Settings(tracking_uri={uri!r}, "
                f"rate_limit_profile={self.rate_limit_profile!r}, engine={self.engine!r}, "
                f"tables={self.tables!r}, client={self.client!r}, replay={self.replay!r})")

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with flag values applied; keys are ``section__field`` or top-level names.

        ``None`` means "flag not given" and leaves the value as it is.
        """
        data = _as_dict(self)
        for dotted, value in overrides.items():
            if value is None:
                continue
            _set_path(data, tuple(dotted.split("__")), value)
        return _from_dict(data)


def _as_dict(settings: Settings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _merge(base: dict[str, Any], overlay: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if key not in base:
            raise InvalidConfigError(f"Unknown configuration key {where}{key!r}.")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise InvalidConfigError(f"Configuration key {where}{key} must be a mapping.")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _from_dict(data: Mapping[str, Any]) -> Settings:
    try:
        return Settings(
            tracking_uri=data.get("tracking_uri"),
            rate_limit_profile=str(data.get("rate_limit_profile", "databricks")),
            engine=EngineConfig(**data.get("engine", {})),
            tables=TablesConfig(**data.get("tables", {})),
            client=ClientConfig(**data.get("client", {})),
            replay=ReplayConfig(**data.get("replay", {})),
        )
    except TypeError as exc:
        raise InvalidConfigError(f"Invalid configuration: {exc}") from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Load the defaults, the optional overlay file and the environment."""
    environ = os.environ if environ is None else environ
    data = _as_dict(Settings())
    data = _merge(data, read_yaml(conf_dir() / "defaults.yaml"), "")
    overlay = environ.get(CONF_ENV)
    if overlay:
        data = _merge(data, read_yaml(overlay), "")
    for variable, path in ENV_OVERRIDES.items():
        value = environ.get(variable)
        if value:
            _set_path(data, path, value)
    return _from_dict(data)
