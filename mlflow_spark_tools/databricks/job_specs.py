"""Databricks job definitions kept in ``conf/``, rendered per environment.

``conf/jobs/<key>.yaml`` holds a Jobs API ``JobSettings`` document (the body of
``jobs/create``) with ``${name}`` placeholders; ``conf/deployment.yaml`` names the environments
(``dev``, ``prod``), each with its variables, the wheel's upload folder and overrides. Rendering
an environment fills the placeholders, expands task templates and merges the overrides, and
checks the result against databricks-sdk's ``JobSettings``: a misspelled field is an error here,
not a silently dropped setting in the workspace.

A task template, an entry of ``tasks`` shaped ``{for_each: <list variable>, task: {...}}``,
becomes one task per item of the list, with ``${item.<field>}`` filled from the item. With
``one_after_another: true`` each task depends on the one before it and runs whatever that one's
outcome (``run_if: ALL_DONE``).

The specs describe jobs on job clusters. An environment's ``compute`` picks the flavour:
``job_cluster`` as written, or ``serverless``: no clusters, every task runs in the job's one
environment (``environment_key``), whose dependencies are the wheel and the environment's
``serverless.dependencies``, at ``serverless.environment_version``. The Databricks bundle
(``databricks.yml``, :mod:`~mlflow_spark_tools.databricks.bundle`) and ``deploy`` both render
their jobs here, so they cannot drift apart.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_spark_tools import __version__
from mlflow_spark_tools.config import conf_dir, read_yaml
from mlflow_spark_tools.databricks.paths import volume_parts
from mlflow_spark_tools.errors import InvalidConfigError, UsageError

PACKAGE_NAME = "mlflow_spark_tools"
DEPLOYMENT_FILE = "deployment.yaml"
JOBS_DIR = "jobs"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")
_ENV_KEYS = {"wheel_dir", "databricks_profile", "compute", "serverless", "variables", "overrides"}
JOB_CLUSTER, SERVERLESS = "job_cluster", "serverless"
COMPUTE_KINDS = (JOB_CLUSTER, SERVERLESS)
SERVERLESS_ENVIRONMENT_KEY = "default"
# Serverless environment 4 brings MLflow 2.22 (5 brings MLflow 3.8), which the wheel does not install.
DEFAULT_ENVIRONMENT_VERSION = "4"
_SERVERLESS_KEYS = {"environment_version", "dependencies"}
_CLUSTER_TASK_KEYS = ("job_cluster_key", "new_cluster", "existing_cluster_id", "libraries")
_TEMPLATE_KEYS = {"for_each", "task", "one_after_another"}


def wheel_filename(version: str = __version__) -> str:
    """The file name of this package's wheel (pure Python, any platform)."""
    return f"{PACKAGE_NAME}-{version}-py3-none-any.whl"


@dataclass(frozen=True)
class Environment:
    """One deployment target of ``conf/deployment.yaml``.

    Attributes:
        name: ``dev``, ``prod`` ...
        wheel_dir: the Volume or workspace folder the wheel is uploaded to.
        databricks_profile: the ``~/.databrickscfg`` profile to authenticate with, if any.
        variables: values of the ``${name}`` placeholders.
        overrides: per job key, settings merged into the rendered job.
        compute: ``job_cluster`` or ``serverless``.
        environment_version: the serverless environment's version.
        dependencies: what the serverless environment installs besides the wheel.
    """

    name: str
    wheel_dir: str
    databricks_profile: str | None
    variables: dict[str, Any]
    overrides: dict[str, dict[str, Any]]
    compute: str = JOB_CLUSTER
    environment_version: str = DEFAULT_ENVIRONMENT_VERSION
    dependencies: tuple[str, ...] = ()

    @property
    def wheel_path(self) -> str:
        """Where the wheel lands, the path job libraries point at."""
        return f"{self.wheel_dir.rstrip('/')}/{wheel_filename()}"


@dataclass(frozen=True)
class JobSpec:
    """A job rendered for one environment.

    Attributes:
        key: the spec's file name without ``.yaml``.
        settings: the ``JobSettings`` document, exactly as the Jobs API receives it.
    """

    key: str
    settings: dict[str, Any]

    @property
    def name(self) -> str:
        return self.settings["name"]

    def wheel_tasks(self) -> list[dict[str, Any]]:
        """The ``python_wheel_task`` of every task that has one."""
        return [t["python_wheel_task"] for t in self.settings.get("tasks", []) if "python_wheel_task" in t]


def wheel_task_argv(task: Mapping[str, Any]) -> list[str]:
    """The ``sys.argv[1:]`` a ``python_wheel_task`` hands its entry point on Databricks:
    ``parameters`` as they are, or ``named_parameters`` as ``--name=value``."""
    if task.get("named_parameters"):
        return [f"--{name}={value}" for name, value in task["named_parameters"].items()]
    return [str(p) for p in task.get("parameters") or []]


def load_environment(name: str, conf: Path | None = None) -> Environment:
    """The environment ``name`` of ``<conf>/deployment.yaml`` (default: the package's conf)."""
    path = (conf_dir() if conf is None else Path(conf)) / DEPLOYMENT_FILE
    environments = read_yaml(path).get("environments") or {}
    if not isinstance(environments, dict) or not environments:
        raise InvalidConfigError(f"{path}: `environments` must map environment names to settings.")
    if name not in environments:
        raise InvalidConfigError(
            f"Unknown environment {name!r}: {path} defines {', '.join(sorted(environments))}."
        )
    data = environments[name] or {}
    where = f"{path}: environments.{name}"
    unknown = set(data) - _ENV_KEYS
    if unknown:
        raise InvalidConfigError(f"{where} has unknown keys {sorted(unknown)}; known: {sorted(_ENV_KEYS)}.")
    wheel_dir = data.get("wheel_dir")
    if not isinstance(wheel_dir, str) or not wheel_dir.startswith(("/Volumes/", "/Workspace/")):
        raise InvalidConfigError(
            f"{where}.wheel_dir must be a /Volumes/<catalog>/<schema>/<volume>/... or /Workspace/... "
            f"folder, got {wheel_dir!r}."
        )
    if wheel_dir.startswith("/Volumes/"):
        try:
            volume_parts(wheel_dir)
        except UsageError as exc:
            raise InvalidConfigError(f"{where}.wheel_dir: {exc}") from None
    if ".." in wheel_dir.split("/"):
        raise InvalidConfigError(f"{where}.wheel_dir must not contain '..'.")
    variables = data.get("variables") or {}
    overrides = data.get("overrides") or {}
    for key, value in (("variables", variables), ("overrides", overrides)):
        if not isinstance(value, dict):
            raise InvalidConfigError(f"{where}.{key} must be a mapping.")
    for reserved in ("env", "wheel", "item"):
        if reserved in variables:
            raise InvalidConfigError(f"{where}.variables.{reserved} is reserved; rename it.")
    profile = data.get("databricks_profile")
    if profile is not None and not isinstance(profile, str):
        raise InvalidConfigError(f"{where}.databricks_profile must be a profile name or null.")
    compute = check_compute(data.get("compute", JOB_CLUSTER), f"{where}.compute")
    serverless = data.get("serverless") or {}
    if not isinstance(serverless, dict) or set(serverless) - _SERVERLESS_KEYS:
        raise InvalidConfigError(f"{where}.serverless holds {', '.join(sorted(_SERVERLESS_KEYS))}; "
                                 f"found {serverless!r}.")
    version = serverless.get("environment_version", DEFAULT_ENVIRONMENT_VERSION)
    dependencies = serverless.get("dependencies") or []
    if not isinstance(version, (str, int)) or isinstance(version, bool):
        raise InvalidConfigError(f"{where}.serverless.environment_version must be a version such as \"4\".")
    if not isinstance(dependencies, list) or not all(isinstance(d, str) and d.strip() for d in dependencies):
        raise InvalidConfigError(f"{where}.serverless.dependencies must be a list of pip requirements or paths.")
    return Environment(name, wheel_dir, profile, dict(variables), dict(overrides), compute, str(version),
                       tuple(dependencies))


def check_compute(compute: Any, where: str) -> str:
    """``compute`` if it is ``job_cluster`` or ``serverless``, else an error naming both."""
    if compute not in COMPUTE_KINDS:
        raise InvalidConfigError(f"{where} must be {' or '.join(COMPUTE_KINDS)}, got {compute!r}.")
    return str(compute)


def serverless_job(settings: dict[str, Any], environment_version: str, dependencies: list[str]) -> dict[str, Any]:
    """A job-cluster job as a serverless one: no clusters, every task in the job's one
    environment, which installs ``dependencies`` (the wheel first)."""
    job = copy.deepcopy(settings)
    job.pop("job_clusters", None)
    for task in job.get("tasks") or []:
        for key in _CLUSTER_TASK_KEYS:
            task.pop(key, None)
        task["environment_key"] = SERVERLESS_ENVIRONMENT_KEY
    job["environments"] = [{"environment_key": SERVERLESS_ENVIRONMENT_KEY,
                            "spec": {_environment_version_field(): environment_version, "dependencies": dependencies}}]
    return job


def _environment_version_field() -> str:
    """``environment_version``, or ``client``, its former name, with a databricks-sdk that
    predates it (0.30, as Databricks Runtime 15.4 LTS ships it); the Jobs API takes both."""
    import dataclasses

    from databricks.sdk.service.compute import Environment

    return "environment_version" if "environment_version" in {f.name for f in dataclasses.fields(Environment)} \
        else "client"


def _check_serverless(settings: dict[str, Any], where: str) -> None:
    """Fail if an override put cluster settings back into a serverless job."""
    found = (["job_clusters"] if settings.get("job_clusters") else []) + sorted(
        {f"tasks[].{k}" for t in settings.get("tasks") or [] for k in _CLUSTER_TASK_KEYS if k in t})
    if found:
        raise InvalidConfigError(f"{where} is serverless but has {', '.join(found)} (from its overrides?): "
                                 "remove them, or set compute: job_cluster.")


def spec_paths(conf: Path | None = None) -> list[Path]:
    """The job spec files, ``<conf>/jobs/*.yaml``, sorted."""
    return sorted(((conf_dir() if conf is None else Path(conf)) / JOBS_DIR).glob("*.yaml"))


def _lookup(name: str, values: Mapping[str, Any], where: str) -> Any:
    value: Any = values
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise InvalidConfigError(f"{where}: no value for ${{{name}}}; define it in the "
                                     "environment's variables in conf/deployment.yaml.")
        value = value[part]
    return value


def _fill(node: Any, values: Mapping[str, Any], where: str) -> Any:
    """``node`` with every placeholder filled; see the module docstring."""
    if isinstance(node, dict):
        return {k: _fill(v, values, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    whole = _PLACEHOLDER.fullmatch(node)
    if whole:
        return _lookup(whole.group(1), values, where)

    def text(match: re.Match[str]) -> str:
        value = _lookup(match.group(1), values, where)
        if isinstance(value, (dict, list)) or value is None:
            raise InvalidConfigError(f"{where}: ${{{match.group(1)}}} is not text and cannot go inside {node!r}.")
        return str(value)

    return _PLACEHOLDER.sub(text, node)


def _expand_tasks(tasks: list[Any], values: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    expanded: list[dict[str, Any]] = []
    for i, entry in enumerate(tasks):
        here = f"{where}.tasks[{i}]"
        if not isinstance(entry, dict):
            raise InvalidConfigError(f"{here} must be a mapping.")
        if "for_each" not in entry:
            expanded.append(_fill(entry, values, here))
            continue
        unknown = set(entry) - _TEMPLATE_KEYS
        if unknown or not isinstance(entry.get("task"), dict):
            raise InvalidConfigError(f"{here}: a task template holds for_each, task and optionally "
                                     f"one_after_another; found {sorted(entry)}.")
        items = _lookup(str(entry["for_each"]), values, f"{here}.for_each")
        if not isinstance(items, list) or not items:
            raise InvalidConfigError(f"{here}: ${{{entry['for_each']}}} must be a non-empty list.")
        previous = None
        for item in items:
            task = _fill(entry["task"], {**values, "item": item}, f"{here}.task")
            if entry.get("one_after_another") and previous is not None:
                task = {**task, "depends_on": [{"task_key": previous}], "run_if": "ALL_DONE"}
            previous = task.get("task_key")
            expanded.append(task)
    keys = [t.get("task_key") for t in expanded]
    duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicates:
        raise InvalidConfigError(f"{where}: task keys {duplicates} occur more than once; give the "
                                 "items distinct names.")
    return expanded


def merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` merged in: mappings key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def check_job_settings(settings: dict[str, Any], where: str) -> None:
    """Fail unless databricks-sdk's ``JobSettings`` takes ``settings`` without dropping a field.

    The SDK's ``from_dict`` ignores fields it does not know; serializing back and comparing
    finds them (and values of the wrong shape) at any depth.
    """
    from databricks.sdk.service.jobs import JobSettings

    try:
        round_trip = JobSettings.from_dict(settings).as_dict()
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidConfigError(f"{where} is not a valid Jobs API JobSettings: {exc}") from None
    if round_trip != settings:
        raise InvalidConfigError(
            f"{where} is not a valid Jobs API JobSettings: {_first_difference(settings, round_trip)} "
            "(see the Jobs API reference for jobs/create)."
        )
    for task in settings.get("tasks") or []:
        wheel_task = task.get("python_wheel_task") or {}
        values = [*(wheel_task.get("named_parameters") or {}).values(), *(wheel_task.get("parameters") or [])]
        if any(not isinstance(v, str) for v in values):
            raise InvalidConfigError(f"{where}: task {task.get('task_key')!r} has parameters that are not "
                                     f"text: {[v for v in values if not isinstance(v, str)]}; quote them.")
    if not isinstance(settings.get("name"), str) or not settings["name"].strip():
        raise InvalidConfigError(f"{where} needs a `name`: deploy finds the job again by it.")


def _first_difference(given: Any, kept: Any, path: str = "") -> str:
    if isinstance(given, dict) and isinstance(kept, dict):
        for key in given:
            if key not in kept:
                return f"unknown field {path + '.' if path else ''}{key}"
            if given[key] != kept[key]:
                return _first_difference(given[key], kept[key], f"{path + '.' if path else ''}{key}")
    if isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        for i, (a, b) in enumerate(zip(given, kept)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return f"{path or 'the document'} = {given!r} is read as {kept!r}"


def render_job(path: Path, environment: Environment, wheel_path: str | None = None,
               compute: str | None = None) -> JobSpec:
    """The job of one spec file for ``environment``, checked against the SDK.

    Args:
        wheel_path: where the job's tasks find the wheel (default: the environment's upload).
        compute: ``job_cluster`` or ``serverless`` (default: the environment's).
    """
    key = path.stem
    compute = environment.compute if compute is None else check_compute(compute, "compute")
    where = f"{path.name} [{environment.name}, {compute}]"
    raw = read_yaml(path)
    wheel = environment.wheel_path if wheel_path is None else wheel_path
    values = {**environment.variables, "env": environment.name, "wheel": wheel}
    settings = {k: _fill(v, values, f"{where}.{k}") for k, v in raw.items() if k != "tasks"}
    settings["tasks"] = _expand_tasks(raw.get("tasks") or [], values, where)
    if compute == SERVERLESS:
        settings = serverless_job(settings, environment.environment_version, [wheel, *environment.dependencies])
    override = environment.overrides.get(key)
    if override is not None:
        if not isinstance(override, dict):
            raise InvalidConfigError(f"conf/deployment.yaml: environments.{environment.name}.overrides."
                                     f"{key} must be a mapping.")
        settings = merge(settings, _fill(override, values, f"{where} overrides"))
    if compute == SERVERLESS:
        _check_serverless(settings, where)
    check_job_settings(settings, where)
    return JobSpec(key, settings)


def render_jobs(environment: Environment, conf: Path | None = None,
                wheel_path: str | None = None, compute: str | None = None) -> list[JobSpec]:
    """Every job of ``<conf>/jobs/`` rendered for ``environment`` (see :func:`render_job`);
    names must be distinct."""
    paths = spec_paths(conf)
    if not paths:
        raise InvalidConfigError(f"No job specs in {(conf_dir() if conf is None else conf) / JOBS_DIR}.")
    unknown = set(environment.overrides) - {p.stem for p in paths}
    if unknown:
        raise InvalidConfigError(f"environments.{environment.name}.overrides names no job spec of "
                                 f"{paths[0].parent}: {sorted(unknown)}.")
    jobs = [render_job(p, environment, wheel_path, compute) for p in paths]
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise InvalidConfigError(f"Job names must be distinct within an environment: {names}.")
    return jobs
