"""Deploy the wheel and the jobs of ``conf/jobs/`` to a Databricks workspace.

One deployment, for one environment of ``conf/deployment.yaml``:

1. look every job up by its exact name, and stop, before changing anything, when several jobs
   carry one of the names;
2. upload the wheel to the environment's ``wheel_dir`` (a Unity Catalog volume through the
   Files API, or a workspace folder through the Workspace API), replacing a file of the same
   name;
3. per job: create it when there was none, else reset its settings to the rendered ones (the
   job keeps its id, run history and permissions).

Running it twice changes nothing the second time. :func:`plan` lists the same requests without
a workspace (``--dry-run``); :func:`deploy` sends them with databricks-sdk, which authenticates
its standard ways (``DATABRICKS_HOST`` / ``DATABRICKS_TOKEN`` and the other variables, a
``~/.databrickscfg`` profile, Azure CLI ...). Nothing here prints a credential.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from configparser import ConfigParser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_spark_tools.core.private_apis import escape_workspace_path
from mlflow_spark_tools.databricks.job_specs import (
    PACKAGE_NAME,
    Environment,
    JobSpec,
    render_jobs,
    wheel_task_argv,
)
from mlflow_spark_tools.errors import MlflowSparkToolsError, UsageError

JOBS_API = "/api/2.2/jobs"
CREATE, RESET = "create", "reset"


@dataclass(frozen=True)
class Request:
    """One API request of a deployment, as sent.

    Attributes:
        method: HTTP method.
        path: URL path (escaped as databricks-sdk escapes it).
        query: query parameters, if any.
        body: the JSON body; for uploads a mapping of form fields where the file content stands
            as ``<N bytes, sha256 ...>``.
        when: the condition for this request, for requests that depend on the workspace's
            answer to an earlier one.
    """

    method: str
    path: str
    query: dict[str, Any] | None = None
    body: Any = None
    when: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class Wheel:
    """A built wheel of this package and the wheel entry points its metadata registers."""

    path: Path
    entry_points: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | str) -> Wheel:
        """Read the wheel's entry points; fails unless it is a wheel of this package."""
        path = Path(path)
        if not path.is_file() or path.suffix != ".whl":
            raise UsageError(f"{path} is not a wheel file (.whl).")
        if not path.name.startswith(f"{PACKAGE_NAME}-"):
            raise UsageError(f"{path.name} is not a wheel of {PACKAGE_NAME}.")
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
                text = archive.read(names[0]).decode("utf-8") if names else ""
        except zipfile.BadZipFile:
            raise UsageError(f"{path} is not a valid wheel (not a zip archive).") from None
        parser = ConfigParser(delimiters=("=",))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(text)
        entry_points = {name: value.strip() for section in parser.sections()
                        for name, value in parser.items(section)}
        return cls(path, entry_points)

    def content(self) -> bytes:
        return self.path.read_bytes()


def project_root() -> Path | None:
    """The source checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "setup.py").is_file() and (root / "mlflow_spark_tools").is_dir() else None


# What a wheel is built from; the build runs on a copy of them, so that no stale build/ output
# of an earlier build (a module since removed) ends up in the wheel.
SOURCE_FILES = ("setup.py", "README.md")
SOURCE_DIRS = ("mlflow_spark_tools", "conf")


def build_wheel(source: Path, out_dir: Path, *, isolated: bool = True) -> Path:
    """``pip wheel`` of the checkout ``source`` into ``out_dir``, without dependencies.

    ``isolated=False`` builds with this environment's setuptools (>= 70.1) instead of fetching
    one into an isolated build environment.

    Returns:
        The wheel's path.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlflow-spark-tools-build-") as tmp:
        copy = Path(tmp) / "src"
        copy.mkdir()
        for name in SOURCE_FILES:
            shutil.copy2(source / name, copy / name)
        for name in SOURCE_DIRS:
            shutil.copytree(source / name, copy / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "-w", str(out_dir), str(copy)]
        if not isolated:
            command.insert(4, "--no-build-isolation")
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise MlflowSparkToolsError(f"Building the wheel failed: {result.stderr.strip()[-2000:]}")
    wheels = sorted(out_dir.glob(f"{PACKAGE_NAME}-*.whl"))
    if not wheels:
        raise MlflowSparkToolsError(f"pip wheel wrote no {PACKAGE_NAME} wheel into {out_dir}.")
    return wheels[-1]


def resolve_wheel(wheel: Path | str | None, out_dir: Path) -> Wheel:
    """The given wheel, or one built into ``out_dir`` from the checkout this package runs from."""
    if wheel is not None:
        return Wheel.open(wheel)
    root = project_root()
    if root is None:
        raise UsageError("No --wheel given and this installation is not a source checkout to build "
                         "one from: pass --wheel dist/mlflow_spark_tools-<version>-py3-none-any.whl.")
    return Wheel.open(build_wheel(root, out_dir))


ArgumentCheck = Callable[[str, Sequence[str]], Any]


def check_entry_points(jobs: list[JobSpec], wheel: Wheel, check_arguments: ArgumentCheck) -> None:
    """Fail unless every wheel task names this package, an entry point the wheel has, and
    parameters its command accepts (``check_arguments(entry_point, argv)`` raises
    :class:`UsageError` otherwise; the command line passes its own parser)."""
    for job in jobs:
        for task in job.wheel_tasks():
            if task.get("package_name") != PACKAGE_NAME:
                raise UsageError(f"Job {job.name!r}: python_wheel_task.package_name must be "
                                 f"{PACKAGE_NAME!r}, got {task.get('package_name')!r}.")
            if task.get("entry_point") not in wheel.entry_points:
                raise UsageError(
                    f"Job {job.name!r}: entry point {task.get('entry_point')!r} is not in "
                    f"{wheel.path.name}; it has {', '.join(sorted(wheel.entry_points))}."
                )
            try:
                check_arguments(task["entry_point"], wheel_task_argv(task))
            except UsageError as exc:
                raise UsageError(f"Job {job.name!r}: {exc}") from None


def _content_note(content: bytes) -> str:
    return f"<{len(content)} bytes, sha256 {hashlib.sha256(content).hexdigest()}>"


def upload_requests(environment: Environment, wheel_name: str, content: bytes) -> list[Request]:
    """The requests that put the wheel into the environment's ``wheel_dir``."""
    folder = environment.wheel_dir.rstrip("/")
    target = f"{folder}/{wheel_name}"
    if folder.startswith("/Volumes/"):
        return [
            Request("PUT", f"/api/2.0/fs/directories{escape_workspace_path(folder)}"),
            Request("PUT", f"/api/2.0/fs/files{escape_workspace_path(target)}", query={"overwrite": "true"},
                    body=_content_note(content)),
        ]
    return [
        Request("POST", "/api/2.0/workspace/mkdirs", body={"path": folder}),
        Request("POST", "/api/2.0/workspace/import",
                body={"path": target, "format": "AUTO", "overwrite": "true",
                      "content": _content_note(content)}),
    ]


def lookup_request(job: JobSpec) -> Request:
    """The look-up of ``job`` by name."""
    return Request("GET", f"{JOBS_API}/list", query={"name": job.name})


def change_requests(job: JobSpec) -> list[Request]:
    """Create or reset, depending on the look-up: the requests that make ``job`` as specified."""
    found = f"jobs/list finds a job named exactly {job.name!r}"
    return [
        Request("POST", f"{JOBS_API}/create", body=job.settings, when=f"no {found}"),
        Request("POST", f"{JOBS_API}/reset", body={"job_id": "<job_id from jobs/list>",
                                                   "new_settings": job.settings}, when=found),
    ]


def _rendered(environment: Environment, wheel: Wheel, conf: Path | None,
              check_arguments: ArgumentCheck) -> tuple[str, list[JobSpec]]:
    """Where the wheel goes, and the jobs pointing at it, checked against the wheel."""
    target = f"{environment.wheel_dir.rstrip('/')}/{wheel.path.name}"
    jobs = render_jobs(environment, conf, wheel_path=target)
    check_entry_points(jobs, wheel, check_arguments)
    return target, jobs


def plan(environment: Environment, wheel: Wheel, conf: Path | None = None, *,
         check_arguments: ArgumentCheck) -> list[Request]:
    """Every request a deployment of ``environment`` sends, in order, without a workspace:
    the look-ups, the upload, then per job a create or a reset."""
    _, jobs = _rendered(environment, wheel, conf, check_arguments)
    requests = [lookup_request(job) for job in jobs]
    requests.extend(upload_requests(environment, wheel.path.name, wheel.content()))
    for job in jobs:
        requests.extend(change_requests(job))
    return requests


@dataclass(frozen=True)
class DeployedJob:
    """What a deployment did to one job."""

    name: str
    job_id: int
    action: str  # create / reset


def _create_arguments(document: dict[str, Any]) -> dict[str, Any]:
    """``jobs.create`` keyword arguments for exactly the fields of ``document``.

    ``JobSettings.from_dict`` fills absent list fields with ``[]``, which ``jobs.create`` would
    send; passing only the document's own fields keeps the request as the dry run shows it.
    """
    from databricks.sdk.service.jobs import JobSettings

    settings = JobSettings.from_dict(document)
    return {name: getattr(settings, name) for name in document}


def workspace_client(environment: Environment, databricks_profile: str | None = None) -> Any:
    """A databricks-sdk client, authenticated the SDK's standard ways."""
    from databricks.sdk import WorkspaceClient

    profile = databricks_profile if databricks_profile is not None else environment.databricks_profile
    try:
        return WorkspaceClient(profile=profile) if profile else WorkspaceClient()
    except ValueError as exc:  # the SDK's "default auth: cannot configure default credentials"
        raise UsageError(f"Cannot authenticate to a Databricks workspace: {exc}. Set DATABRICKS_HOST "
                         "and DATABRICKS_TOKEN, or name a ~/.databrickscfg profile.") from None


def deploy(environment: Environment, wheel: Wheel, client: Any, conf: Path | None = None, *,
           check_arguments: ArgumentCheck, echo: Callable[[str], None] = print) -> list[DeployedJob]:
    """Upload the wheel and create or reset every job; see the module docstring."""
    from databricks.sdk.service.jobs import JobSettings
    from databricks.sdk.service.workspace import ImportFormat

    target, jobs = _rendered(environment, wheel, conf, check_arguments)
    existing = {job.key: _existing_job_id(client, job) for job in jobs}  # all reads before any write
    content = wheel.content()
    folder = environment.wheel_dir.rstrip("/")
    if folder.startswith("/Volumes/"):
        client.files.create_directory(folder)
        client.files.upload(target, io.BytesIO(content), overwrite=True)
    else:
        client.workspace.mkdirs(folder)
        client.workspace.upload(target, content, format=ImportFormat.AUTO, overwrite=True)
    echo(f"uploaded {wheel.path.name} ({len(content)} bytes) to {target}")
    deployed = []
    for job in jobs:
        job_id = existing[job.key]
        if job_id is not None:
            client.jobs.reset(job_id=job_id, new_settings=JobSettings.from_dict(job.settings))
            action = RESET
        else:
            job_id = int(client.jobs.create(**_create_arguments(job.settings)).job_id)
            action = CREATE
        echo(f"{'created' if action == CREATE else 'updated'} job {job.name!r} (job_id {job_id})")
        deployed.append(DeployedJob(job.name, job_id, action))
    return deployed


def _existing_job_id(client: Any, job: JobSpec) -> int | None:
    """The id of the one job named exactly like ``job``; None when there is none."""
    matches = [j for j in client.jobs.list(name=job.name)
               if j.settings is not None and j.settings.name == job.name]
    if len(matches) > 1:
        ids = ", ".join(str(j.job_id) for j in matches)
        raise UsageError(f"Several jobs are named {job.name!r} (ids {ids}): delete or rename all "
                         "but one, then deploy again. Nothing was changed.")
    return int(matches[0].job_id) if matches else None
