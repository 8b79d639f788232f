from pathlib import Path

import pytest
import yaml
from databricks.sdk.service.jobs import JobSettings, RunIf

from mlflow_spark_tools.cli.wheel_tasks import check_arguments
from mlflow_spark_tools.databricks.job_specs import (
    load_environment,
    merge,
    render_jobs,
    spec_paths,
    wheel_filename,
    wheel_task_argv,
)
from mlflow_spark_tools.errors import InvalidConfigError

ENVIRONMENTS = ("dev", "prod")


def edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("compute", ["job_cluster", "serverless"])
def test_every_spec_is_sdk_job_settings_whose_wheel_tasks_parse(env, compute):
    environment = load_environment(env)
    jobs = render_jobs(environment, compute=compute)
    assert [j.key for j in jobs] == ["build_experiment_tables", "replay_failed_runs"]
    assert environment.wheel_path.endswith(wheel_filename())
    for job in jobs:
        settings = JobSettings.from_dict(job.settings)
        assert settings.as_dict() == job.settings
        assert f"[{env}]" in settings.name and settings.tags["environment"] == env
        assert settings.schedule.quartz_cron_expression and settings.max_concurrent_runs == 1
        for task in settings.tasks:
            if compute == "job_cluster":
                assert task.libraries[0].whl == environment.wheel_path
                assert task.job_cluster_key in {c.job_cluster_key for c in settings.job_clusters}
                assert not settings.environments and task.environment_key is None
            else:
                assert not task.libraries and task.job_cluster_key is None and not settings.job_clusters
                (spec,) = [e.spec for e in settings.environments if e.environment_key == task.environment_key]
                assert spec.dependencies == [environment.wheel_path, *environment.dependencies]
                # `client` is the field's former name, all a databricks-sdk as old as 0.30 knows
                assert (getattr(spec, "environment_version", None) or spec.client) == environment.environment_version
            wheel_task = task.python_wheel_task
            assert wheel_task.package_name == "mlflow_spark_tools"
            # the task's parameters are accepted by the command behind its entry point
            params = check_arguments(wheel_task.entry_point, wheel_task_argv(wheel_task.as_dict()))
            assert params["database_"] == environment.variables["database"]


def test_one_task_per_experiment_group_and_per_replay_dir_one_after_another():
    environment = load_environment("prod")
    tables, replay = render_jobs(environment)
    groups = environment.variables["experiment_groups"]
    assert [t["task_key"] for t in tables.settings["tasks"]] == [f"build_tables_{g['name']}" for g in groups]
    for task, group in zip(tables.settings["tasks"], groups):
        named = task["python_wheel_task"]["named_parameters"]
        assert named["experiment-ids"] == group["experiment_ids"]
        assert named["profile"] == environment.variables["rate_limit_profile"]
        params = check_arguments("build-tables", wheel_task_argv(task["python_wheel_task"]))
        assert params["metric_history"] == group["metric_history"]
        assert params["source"] == environment.variables["table_source"] == "rest"
    assert [g["metric_history"] for g in groups] == ["val_loss,val_mape", "none"]
    dirs = environment.variables["replay_dirs"]
    tasks = replay.settings["tasks"]
    assert len(tasks) == len(dirs) == 2
    first, second = tasks
    assert "depends_on" not in first
    assert second["depends_on"] == [{"task_key": first["task_key"]}]
    assert JobSettings.from_dict(replay.settings).tasks[1].run_if == RunIf.ALL_DONE
    argv = wheel_task_argv(second["python_wheel_task"])
    params = check_arguments("replay", argv)
    assert params["replay_dir"] == dirs[1]["path"] and params["until_empty"] is True
    assert (params["secret_scope"], params["secret_key"]) == (environment.variables["secret_scope"],
                                                              environment.variables["secret_key"])


def test_environments_differ_where_the_overrides_say():
    dev_tables = render_jobs(load_environment("dev"))[0].settings
    prod_tables = render_jobs(load_environment("prod"))[0].settings
    assert dev_tables["schedule"]["pause_status"] == "PAUSED"
    assert prod_tables["schedule"]["pause_status"] == "UNPAUSED"
    assert "email_notifications" not in dev_tables
    assert prod_tables["email_notifications"]["on_failure"]
    # an override merges: the schedule keeps its cron when only the pause status changes
    assert dev_tables["schedule"]["quartz_cron_expression"] == prod_tables["schedule"]["quartz_cron_expression"]


def test_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merge(base, {"a": {"c": [3]}, "e": 2}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


def test_placeholders_keep_types_alone_and_become_text_inside_text(conf):
    edit(conf / "jobs" / "replay_failed_runs.yaml",
         lambda d: d.update(timeout_seconds="${timeout}", description="db ${database}, ${timeout} s"))
    edit(conf / "deployment.yaml", lambda d: d["environments"]["dev"]["variables"].update(timeout=600))
    replay = render_jobs(load_environment("dev", conf), conf)[1].settings
    assert replay["timeout_seconds"] == 600
    assert replay["description"] == "db dev.mlflow_exp, 600 s"


@pytest.mark.parametrize(
    "file, change, message",
    [
        ("jobs/replay_failed_runs.yaml", lambda d: d.update(schedul={"x": 1}), "unknown field schedul"),
        ("jobs/replay_failed_runs.yaml", lambda d: d["tasks"][0]["task"]["python_wheel_task"].update(entrypoint="x"),
         r"unknown field tasks\[0\].python_wheel_task.entrypoint"),
        ("jobs/replay_failed_runs.yaml", lambda d: d.update(max_concurrent_runs="${nope}"), r"no value for \$\{nope\}"),
        ("jobs/replay_failed_runs.yaml", lambda d: d.update(description="x ${replay_dirs}"), "is not text"),
        ("jobs/replay_failed_runs.yaml", lambda d: d["tasks"][0].update(for_each="database"), "must be a non-empty list"),
        ("deployment.yaml", lambda d: d["environments"]["dev"]["variables"]["replay_dirs"].append(
            {"name": "main", "path": "/Volumes/a/b/c/other"}), r"task keys \['replay_main'\] occur more than once"),
        ("jobs/replay_failed_runs.yaml", lambda d: d["tasks"][0].update(each=1), "a task template holds"),
        ("jobs/replay_failed_runs.yaml", lambda d: d.update(name="${env}"), "Job names must be distinct"),
        ("jobs/replay_failed_runs.yaml", lambda d: d.pop("name"), "needs a `name`"),
        ("deployment.yaml", lambda d: d["environments"]["dev"].update(wheel_dir="dbfs:/FileStore/wheels"),
         "wheel_dir must be a /Volumes/"),
        ("deployment.yaml", lambda d: d["environments"]["dev"].update(wheel_dir="/Volumes/main/wheels"),
         "Malformed Volumes path '/Volumes/main/wheels'"),
        ("deployment.yaml", lambda d: d["environments"]["dev"].update(wheel_dir="/Workspace/Shared/../x"),
         "must not contain '..'"),
        ("deployment.yaml", lambda d: d["environments"]["dev"].update(wheel_folder="/Volumes/a/b/c"),
         r"unknown keys \['wheel_folder'\]"),
        ("deployment.yaml", lambda d: d["environments"]["dev"]["overrides"].update(build_tables={"a": 1}),
         r"overrides names no job spec .*build_tables"),
        ("deployment.yaml", lambda d: d["environments"]["dev"]["variables"].update(wheel="x"), "is reserved"),
        ("deployment.yaml", lambda d: d["environments"]["dev"]["variables"]["experiment_groups"][0].update(
            experiment_ids=123), r"task 'build_tables_sandbox' has parameters that are not text: \[123\]"),
    ],
)
def test_bad_specs_are_errors_that_name_the_problem(conf, file, change, message):
    if "name" in message and "distinct" in message:
        edit(conf / "jobs" / "build_experiment_tables.yaml", lambda d: d.update(name="${env}"))
    edit(conf / file, change)
    with pytest.raises(InvalidConfigError, match=message):
        render_jobs(load_environment("dev", conf), conf)


def test_unknown_environment_names_the_known_ones():
    with pytest.raises(InvalidConfigError, match="Unknown environment 'staging'.*dev, prod"):
        load_environment("staging")


def test_specs_ship_with_the_package():
    assert [p.name for p in spec_paths()] == ["build_experiment_tables.yaml", "replay_failed_runs.yaml"]
