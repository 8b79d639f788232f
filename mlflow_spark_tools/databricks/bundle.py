"""The jobs of the Databricks bundle (``databricks.yml``), rendered from the same ``conf/`` as ``deploy``.

``databricks.yml`` names :func:`load_resources` under ``python.resources``; the Databricks CLI
calls it (through the ``databricks-bundles`` package) on ``databricks bundle deploy -t <target>``.
The target's name is the environment of ``conf/deployment.yaml``; its jobs are those of
``conf/jobs/``, on job clusters or serverless (the bundle variable ``compute``, else the
environment's ``compute``). The tasks name the wheel the bundle builds, ``dist/<wheel>``: the
CLI uploads it to the target's ``workspace.artifact_path`` (a Volume) and rewrites the paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow_spark_tools.databricks.job_specs import JobSpec, load_environment, render_jobs, wheel_filename

if TYPE_CHECKING:
    from databricks.bundles.core import Bundle, Resources

BUNDLE_FILE = "databricks.yml"
COMPUTE_VARIABLE = "compute"
WHEEL_DIR = "dist"


def bundle_wheel_path() -> str:
    """The wheel as the bundle's tasks name it: relative to ``databricks.yml``."""
    return f"{WHEEL_DIR}/{wheel_filename()}"


def bundle_jobs(target: str, compute: str | None = None) -> list[JobSpec]:
    """The jobs of ``target`` (an environment of ``conf/deployment.yaml``) as the bundle deploys them."""
    return render_jobs(load_environment(target), wheel_path=bundle_wheel_path(), compute=compute or None)


def load_resources(bundle: Bundle) -> Resources:
    """The bundle's jobs for ``bundle.target`` (``databricks.yml``: ``python.resources``)."""
    from databricks.bundles.core import Location, Resources
    from databricks.bundles.jobs import Job

    resources = Resources()
    # paths in the jobs (the wheel) are relative to databricks.yml, in the directory the CLI runs in
    location = Location(file=BUNDLE_FILE, line=1, column=1)
    for job in bundle_jobs(bundle.target, bundle.variables.get(COMPUTE_VARIABLE)):
        resources.add_job(job.key, Job.from_dict(job.settings), location=location)  # type: ignore[arg-type]
    return resources
