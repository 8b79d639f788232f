"""The jobs, dashboard and alert of the Databricks bundle (``databricks.yml``), from ``conf/``.

``databricks.yml`` names :func:`load_resources` under ``python.resources``; the Databricks CLI
calls it (through the ``databricks-bundles`` package) on ``databricks bundle deploy -t <target>``.
The target's name is the environment of ``conf/deployment.yaml``; its jobs are those of
``conf/jobs/``, on job clusters or serverless (the bundle variable ``compute``, else the
environment's ``compute``). The tasks name the wheel the bundle builds, ``dist/<wheel>``: the
CLI uploads it to the target's ``workspace.artifact_path`` (a Volume) and rewrites the paths.

Besides the jobs (rendered as ``deploy`` renders them):

- the AI/BI dashboard ``conf/dashboards/mlflow_spark_tools.lvdash.json``: one experiment's
  table (filters pick the experiment, metric and param columns) and the replay's backlog,
  rate and quarantined payloads, on the SQL warehouse ``${var.warehouse_id}``, reading the
  tables of the environment's ``database``;
- the SQL alert ``conf/alerts/replay_attention.sql`` over the environment's ``database``:
  it fires when a store's backlog grew between its last two replay passes or payloads were
  quarantined since, checked every 30 minutes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlflow_spark_tools.config import conf_dir
from mlflow_spark_tools.core.identifiers import validate_database
from mlflow_spark_tools.databricks.job_specs import JobSpec, load_environment, render_jobs, wheel_filename

if TYPE_CHECKING:
    from databricks.bundles.core import Bundle, Resources

BUNDLE_FILE = "databricks.yml"
COMPUTE_VARIABLE = "compute"
WHEEL_DIR = "dist"
DASHBOARD_FILE = "dashboards/mlflow_spark_tools.lvdash.json"
ALERT_FILE = "alerts/replay_attention.sql"
ALERT_COLUMN = "needs_attention"
WAREHOUSE = "${var.warehouse_id}"


def bundle_wheel_path() -> str:
    """The wheel as the bundle's tasks name it: relative to ``databricks.yml``."""
    return f"{WHEEL_DIR}/{wheel_filename()}"


def bundle_jobs(target: str, compute: str | None = None) -> list[JobSpec]:
    """The jobs of ``target`` (an environment of ``conf/deployment.yaml``) as the bundle deploys them."""
    return render_jobs(load_environment(target), wheel_path=bundle_wheel_path(), compute=compute or None)


def alert_query(database: str) -> str:
    """The attention alert's SQL for the tables' ``database``."""
    validate_database(database)
    return (conf_dir() / ALERT_FILE).read_text(encoding="utf-8").replace("${database}", database)


def alert_settings(target: str) -> dict[str, Any]:
    """The attention alert of ``target``: a Databricks SQL alert (v2) document."""
    database = load_environment(target).variables["database"]
    return {
        "display_name": f"mlflow-spark-tools: failed-run stores need attention [{target}]",
        "query_text": alert_query(database),
        "warehouse_id": WAREHOUSE,
        "evaluation": {"source": {"name": ALERT_COLUMN, "aggregation": "MAX"},
                       "comparison_operator": "GREATER_THAN", "threshold": {"value": {"double_value": 0.0}},
                       "empty_result_state": "OK", "notification": {"notify_on_ok": True}},
        "schedule": {"quartz_cron_schedule": "0 5/30 * * * ?", "timezone_id": "UTC"},
    }


def dashboard_settings(target: str) -> dict[str, Any]:
    """The dashboard of ``target``, its file relative to ``databricks.yml``, reading the tables
    of the environment's ``database``: its datasets name no catalog or schema, and the
    deployment sets both for every dataset (``dataset_catalog``/``dataset_schema``, Databricks
    CLI 0.281 or newer)."""
    conf = conf_dir()
    folder = conf.relative_to(conf.parent) if conf.name == "conf" else conf
    database = load_environment(target).variables["database"]
    validate_database(database)
    catalog, _, schema = database.rpartition(".")
    settings = {"display_name": f"mlflow-spark-tools: experiments and replay [{target}]",
                "file_path": f"{folder}/{DASHBOARD_FILE}", "warehouse_id": WAREHOUSE, "dataset_schema": schema}
    if catalog:
        settings["dataset_catalog"] = catalog
    return settings


def load_resources(bundle: Bundle) -> Resources:
    """The bundle's jobs, dashboard and alert for ``bundle.target`` (``databricks.yml``:
    ``python.resources``)."""
    from databricks.bundles.alerts import Alert
    from databricks.bundles.core import Location, Resources
    from databricks.bundles.dashboards import Dashboard
    from databricks.bundles.jobs import Job

    resources = Resources()
    # paths (the wheel, the dashboard) are relative to databricks.yml, in the directory the CLI runs in
    location = Location(file=BUNDLE_FILE, line=1, column=1)
    for job in bundle_jobs(bundle.target, bundle.variables.get(COMPUTE_VARIABLE)):
        resources.add_job(job.key, Job.from_dict(job.settings), location=location)  # type: ignore[arg-type]
    resources.add_dashboard("mlflow_spark_tools", Dashboard.from_dict(dashboard_settings(bundle.target)),  # type: ignore[arg-type]
                            location=location)
    resources.add_alert("replay_attention", Alert.from_dict(alert_settings(bundle.target)),  # type: ignore[arg-type]
                        location=location)
    return resources
