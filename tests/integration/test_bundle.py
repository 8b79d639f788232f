"""The Databricks bundle (databricks.yml): its jobs, loaded through databricks-bundles as the
Databricks CLI loads them, are the jobs of conf/ on job clusters and serverless, and every task
runs an entry point of the wheel with parameters its command accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlflow_spark_tools.cli.main import cli
from mlflow_spark_tools.cli.wheel_arguments import check_arguments
from mlflow_spark_tools.config import load_settings
from mlflow_spark_tools.databricks import bundle
from mlflow_spark_tools.databricks.deploy import Wheel, check_entry_points
from mlflow_spark_tools.databricks.job_specs import JobSpec, load_environment, wheel_filename
from mlflow_spark_tools.errors import InvalidConfigError

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = yaml.safe_load((ROOT / "databricks.yml").read_text())
TARGETS = sorted(DEFINITION["targets"])


def load(target: str, compute: str):
    """The bundle's resources as the Databricks CLI loads them (databricks-bundles is imported
    here: the oldest-stack venv that collects this module has no bundle tooling)."""
    from databricks.bundles.core import Bundle

    return bundle.load_resources(Bundle(target=target, variables={"compute": compute}))


def loaded_jobs(target: str, compute: str) -> dict[str, dict]:
    """The bundle's jobs as the CLI receives them: databricks-bundles' Job classes, as dicts."""
    from databricks.bundles.jobs import Job

    resources = load(target, compute)
    assert not resources.diagnostics.has_error()
    jobs = resources._resources["jobs"]
    return {key: (job.as_dict() if isinstance(job, Job) else job) for key, job in jobs.items()}


def check(entry_point, argv):
    check_arguments(cli, entry_point, argv)


def test_the_bundle_names_the_resource_loader_the_targets_and_the_wheel():
    module, function = DEFINITION["python"]["resources"][0].split(":")
    assert f"{module}.{function}" == "mlflow_spark_tools.databricks.bundle.load_resources"
    assert TARGETS == ["dev", "prod"]
    assert DEFINITION["targets"]["dev"].get("default") is True
    for target in TARGETS:
        # wheels go where `deploy` puts them: the environment's Volume
        artifact_path = DEFINITION["targets"][target]["workspace"]["artifact_path"]
        assert artifact_path == load_environment(target).wheel_dir and artifact_path.startswith("/Volumes/")
    artifact = DEFINITION["artifacts"]["wheel"]
    assert artifact["type"] == "whl" and "build-wheel --out dist" in artifact["build"]
    assert Path(bundle.bundle_wheel_path()).match(artifact["files"][0]["source"])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("compute", ["serverless", "job_cluster"])
def test_every_task_runs_an_entry_point_of_the_wheel(built_wheel, target, compute):
    from databricks.bundles.jobs import Job

    jobs = loaded_jobs(target, compute)
    assert sorted(jobs) == ["build_experiment_tables", "replay_failed_runs"]
    wheel = bundle.bundle_wheel_path()
    assert wheel == f"dist/{wheel_filename()}"
    for key, job in jobs.items():
        assert Job.from_dict(job).as_dict() == job  # nothing dropped by the bundle's classes
        assert job["tags"]["environment"] == target and job["max_concurrent_runs"] == 1
        for task in job["tasks"]:
            assert task["python_wheel_task"]["package_name"] == "mlflow_spark_tools"
            if compute == "serverless":
                assert "job_cluster_key" not in task and "libraries" not in task
                assert task["environment_key"] in {e["environment_key"] for e in job["environments"]}
            else:
                assert task["job_cluster_key"] in {c["job_cluster_key"] for c in job["job_clusters"]}
                assert task["libraries"] == [{"whl": wheel}]
        if compute == "serverless":
            assert "job_clusters" not in job
            (environment,) = job["environments"]
            assert environment["spec"]["dependencies"][0] == wheel
            assert environment["spec"]["environment_version"] == load_environment(target).environment_version
        # the entry points and their parameters, as `deploy` checks them before sending anything
        check_entry_points([JobSpec(key, job)], Wheel.open(built_wheel), check)


def test_without_the_variable_each_target_keeps_its_environments_compute():
    for target, compute in (("dev", "serverless"), ("prod", "job_cluster")):
        assert load_environment(target).compute == compute
        jobs = loaded_jobs(target, "")
        assert all(("environments" in j) == (compute == "serverless") for j in jobs.values())


def test_deploy_renders_the_same_jobs_as_the_bundle(built_wheel, monkeypatch, tmp_path):
    """One definition: deploy's jobs differ from the bundle's only in where the wheel is."""
    from mlflow_spark_tools.databricks.deploy import plan

    environment = load_environment("prod")
    for compute in ("serverless", "job_cluster"):
        import dataclasses

        requests = plan(dataclasses.replace(environment, compute=compute), Wheel.open(built_wheel),
                        check_arguments=check)
        deployed = {r.body["name"]: r.body for r in requests if r.path.endswith("/create")}
        uploaded = f"{environment.wheel_dir}/{built_wheel.name}"
        for job in loaded_jobs("prod", compute).values():
            text = yaml.safe_dump(job).replace(bundle.bundle_wheel_path(), uploaded)
            assert yaml.safe_load(text) == deployed[job["name"]]


def test_a_serverless_job_refuses_cluster_settings_from_overrides(conf):
    deployment = conf / "deployment.yaml"
    data = yaml.safe_load(deployment.read_text())
    data["environments"]["dev"]["overrides"] = {"replay_failed_runs": {"job_clusters": [
        {"job_cluster_key": "replay", "new_cluster": {"spark_version": "15.4.x-scala2.12"}}]}}
    deployment.write_text(yaml.safe_dump(data))
    from mlflow_spark_tools.databricks.job_specs import render_jobs

    with pytest.raises(InvalidConfigError, match="is serverless but has job_clusters"):
        render_jobs(load_environment("dev", conf), conf)
    data["environments"]["dev"]["compute"] = "lambda"
    deployment.write_text(yaml.safe_dump(data))
    with pytest.raises(InvalidConfigError, match="compute must be job_cluster or serverless, got 'lambda'"):
        load_environment("dev", conf)


def test_build_wheel_replaces_earlier_wheels_in_its_folder(tmp_path):
    stale = tmp_path / "mlflow_spark_tools-0.0.1-py3-none-any.whl"
    stale.write_bytes(b"old")
    other = tmp_path / "another_package-1.0-py3-none-any.whl"
    other.write_bytes(b"keep")
    result = CliRunner().invoke(cli, ["build-wheel", "--out", str(tmp_path), "--no-build-isolation"],
                                obj={"settings": load_settings(environ={})})
    assert result.exit_code == 0, result.output
    built = Path(result.stdout.strip())
    assert built.name == wheel_filename() and built.parent == tmp_path
    assert not stale.exists() and other.read_bytes() == b"keep"
    assert {"build-tables", "replay"} <= set(Wheel.open(built).entry_points)


@pytest.mark.parametrize("target", TARGETS)
def test_the_bundle_deploys_the_dashboard_and_the_attention_alert(target):
    from databricks.bundles.alerts import Alert
    from databricks.bundles.dashboards import Dashboard

    from mlflow_spark_tools.databricks.bundle import alert_query

    resources = load(target, "")
    (dashboard,) = resources._resources["dashboards"].values()
    (alert,) = resources._resources["alerts"].values()
    dashboard, alert = dashboard.as_dict(), alert.as_dict()
    assert Dashboard.from_dict(dashboard).as_dict() == dashboard and Alert.from_dict(alert).as_dict() == alert
    definition = ROOT / dashboard["file_path"]  # relative to databricks.yml
    assert definition.is_file() and definition.name.endswith(".lvdash.json")
    assert dashboard["warehouse_id"] == alert["warehouse_id"] == "${var.warehouse_id}"
    assert "warehouse_id" in DEFINITION["variables"]
    database = load_environment(target).variables["database"]
    # the dashboard reads the environment's schema: dev.mlflow_exp in dev, prod.mlflow_exp in prod
    assert f"{dashboard['dataset_catalog']}.{dashboard['dataset_schema']}" == database == f"{target}.mlflow_exp"
    assert alert["query_text"] == alert_query(database) and f"FROM {database}.replay_store_log" in alert["query_text"]
    assert alert["evaluation"]["source"]["name"] == "needs_attention"
    assert alert["evaluation"]["comparison_operator"] == "GREATER_THAN"
