"""deploy --dry-run and deploy against the loopback workspace API; signing keys from secrets."""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import logging
import os

import pytest
import yaml
from click.testing import CliRunner
from databricks.sdk.service.jobs import JobsAPI, JobSettings

from mlflow_spark_tools.cli.main import cli
from mlflow_spark_tools.config import load_settings
from mlflow_spark_tools.databricks.deploy import Wheel
from mlflow_spark_tools.databricks.job_specs import load_environment, render_jobs
from mlflow_spark_tools.failed_runs.replay_job import replay_signing_key
from mlflow_spark_tools.failed_runs.signing import KEY_ENV, SigningKey


def run_cli(*args, settings=None):
    obj = {"settings": settings or load_settings(environ={})}
    return CliRunner().invoke(cli, list(args), obj=obj)


def dry_run(wheel, env, *extra):
    result = run_cli("deploy", "--env", env, "--dry-run", "--wheel", str(wheel), *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def sent(workspace):
    return [r for r in workspace.state.requests if not r.path.startswith("/.well-known/")]


@pytest.fixture
def no_workspace(monkeypatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("DATABRICKS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg


def test_dry_run_prints_every_request_as_the_sdk_types_take_it(built_wheel, no_workspace, signing_key):
    wheel = Wheel.open(built_wheel)
    requests = dry_run(built_wheel, "prod")
    content = built_wheel.read_bytes()
    folder = "/Volumes/prod/ml_tools/wheels/mlflow-spark-tools"
    jobs = render_jobs(load_environment("prod"))
    assert len(requests) == len(jobs) + 2 + 2 * len(jobs)
    lookups, upload, changes = requests[:len(jobs)], requests[len(jobs):len(jobs) + 2], requests[len(jobs) + 2:]
    assert lookups == [{"method": "GET", "path": "/api/2.2/jobs/list", "query": {"name": j.name}} for j in jobs]
    assert upload == [
        {"method": "PUT", "path": f"/api/2.0/fs/directories{folder}"},
        {"method": "PUT", "path": f"/api/2.0/fs/files{folder}/{built_wheel.name}", "query": {"overwrite": "true"},
         "body": f"<{len(content)} bytes, sha256 {hashlib.sha256(content).hexdigest()}>"},
    ]
    create_fields = set(inspect.signature(JobsAPI.create).parameters) - {"self"}
    reset_fields = set(inspect.signature(JobsAPI.reset).parameters) - {"self"}
    for job, (create, reset) in zip(jobs, zip(*[iter(changes)] * 2)):
        assert (create["method"], create["path"]) == ("POST", "/api/2.2/jobs/create")
        assert (reset["method"], reset["path"]) == ("POST", "/api/2.2/jobs/reset")
        assert create["when"].startswith("no ") and reset["when"] == create["when"][3:]
        assert job.name in create["when"]
        body = create["body"]
        assert set(body) <= create_fields and set(reset["body"]) <= reset_fields
        assert JobSettings.from_dict(body).as_dict() == body == reset["body"]["new_settings"] == job.settings
        for task in JobSettings.from_dict(body).tasks:
            assert task.python_wheel_task.entry_point in wheel.entry_points
            assert task.libraries[0].whl == f"{folder}/{built_wheel.name}"
    assert signing_key not in json.dumps(requests)


def test_deploy_sends_what_the_dry_run_printed_and_a_second_deploy_changes_nothing(built_wheel, workspace):
    planned = dry_run(built_wheel, "dev")
    first = run_cli("deploy", "--env", "dev", "--wheel", str(built_wheel))
    assert first.exit_code == 0, first.output
    requests = sent(workspace)
    assert [(r.method, r.path) for r in requests] == [
        (p["method"], p["path"]) for p in planned if p.get("when", "no ").startswith("no ")]
    upload = requests[3]
    assert upload.query == {"overwrite": "true"}
    assert hashlib.sha256(upload.body).hexdigest() in planned[3]["body"]
    creates = [p["body"] for p in planned if p["path"].endswith("/create")]
    assert [r.body for r in requests if r.path.endswith("/create")] == creates
    assert all(r.authorization == f"Bearer {workspace.token}" for r in requests)
    ids = sorted(workspace.state.jobs)
    assert len(ids) == 2 and [workspace.state.jobs[i] for i in ids] == creates
    assert workspace.state.files[f"/Volumes/dev/ml_tools/wheels/mlflow-spark-tools/{built_wheel.name}"] == \
        built_wheel.read_bytes()
    assert "created job 'mlflow-spark-tools: build experiment tables [dev]' (job_id" in first.stdout

    workspace.state.requests.clear()
    second = run_cli("deploy", "--env", "dev", "--wheel", str(built_wheel))
    assert second.exit_code == 0, second.output
    resets = [r.body for r in sent(workspace) if r.path.endswith("/reset")]
    assert resets == [{"job_id": i, "new_settings": body} for i, body in zip(ids, creates)]
    assert not [r for r in sent(workspace) if r.path.endswith("/create")]
    assert sorted(workspace.state.jobs) == ids and [workspace.state.jobs[i] for i in ids] == creates
    assert second.stdout.count("updated job") == 2
    assert workspace.token not in first.output + second.output


def test_deploy_to_a_workspace_folder_goes_through_the_workspace_api(built_wheel, workspace, conf):
    deployment = conf / "deployment.yaml"
    data = yaml.safe_load(deployment.read_text())
    data["environments"]["dev"]["wheel_dir"] = "/Workspace/Shared/mlflow-spark-tools"
    deployment.write_text(yaml.safe_dump(data))
    result = run_cli("deploy", "--env", "dev", "--wheel", str(built_wheel), "--conf-dir", str(conf))
    assert result.exit_code == 0, result.output
    mkdirs, upload = sent(workspace)[2:4]
    assert (mkdirs.path, mkdirs.body) == ("/api/2.0/workspace/mkdirs", {"path": "/Workspace/Shared/mlflow-spark-tools"})
    target = f"/Workspace/Shared/mlflow-spark-tools/{built_wheel.name}"
    assert upload.path == "/api/2.0/workspace/import"
    assert (upload.body["path"], upload.body["format"], upload.body["overwrite"]) == (target.encode(), b"AUTO", b"true")
    assert workspace.state.files[target] == built_wheel.read_bytes()
    # dev runs serverless: the wheel is the dependency of every job's environment
    assert {job["environments"][0]["spec"]["dependencies"][0] for job in workspace.state.jobs.values()} == {target}
    result = run_cli("deploy", "--env", "dev", "--wheel", str(built_wheel), "--conf-dir", str(conf),
                     "--compute", "job_cluster")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("updated job") == 2
    libraries = {lib["whl"] for job in workspace.state.jobs.values() for t in job["tasks"] for lib in t["libraries"]}
    assert libraries == {target}
    assert not any("environments" in job for job in workspace.state.jobs.values())


def test_two_jobs_with_the_name_stop_the_deploy_before_it_changes_anything(built_wheel, workspace):
    name = render_jobs(load_environment("dev"))[1].name  # the second job: the first is not changed either
    workspace.state.jobs.update({7: {"name": name}, 8: {"name": name}})
    result = run_cli("deploy", "--env", "dev", "--wheel", str(built_wheel))
    assert result.exit_code == 2
    assert f"Several jobs are named {name!r} (ids 7, 8)" in result.stderr
    assert [r.method for r in sent(workspace)] == ["GET", "GET"]


def test_a_task_the_wheel_cannot_run_stops_the_deploy_before_any_request(built_wheel, workspace, conf):
    spec = conf / "jobs" / "build_experiment_tables.yaml"
    spec.write_text(spec.read_text().replace("entry_point: build-tables", "entry_point: build-tablez"))
    result = run_cli("deploy", "--env", "dev", "--wheel", str(built_wheel), "--conf-dir", str(conf))
    assert result.exit_code == 2
    assert "entry point 'build-tablez' is not in mlflow_spark_tools-" in result.stderr
    spec.write_text(spec.read_text().replace("entry_point: build-tablez", "entry_point: build-tables")
                    .replace("experiment-ids:", "experiment-idz:"))
    result = run_cli("deploy", "--env", "dev", "--wheel", str(built_wheel), "--conf-dir", str(conf), "--dry-run")
    assert result.exit_code == 2 and "No such option: --experiment-idz" in result.stderr
    assert sent(workspace) == []


@pytest.mark.parametrize("args, message", [
    (["--env", "staging", "--dry-run"], "Unknown environment 'staging'"),
    (["--env", "dev", "--wheel", "setup.py"], "is not a wheel file"),
    (["--env", "dev"], "Cannot authenticate to a Databricks workspace"),
])
def test_usage_errors_are_one_line(built_wheel, no_workspace, args, message):
    result = run_cli("deploy", *args, *([] if "--wheel" in args else ["--wheel", str(built_wheel)]))
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_signing_key_from_a_secret_scope_through_the_sdk_never_logged(workspace, monkeypatch, caplog, tmp_path):
    secret = "secret-signing-key-" + "x" * 20
    workspace.state.secrets[("ml", "signing")] = secret
    monkeypatch.setenv(KEY_ENV, "a-different-key-in-the-environment")
    caplog.set_level(logging.DEBUG)
    key = replay_signing_key("ml", "signing")
    assert key.verify(b"payload", SigningKey(secret).sign(b"payload"))
    assert secret not in repr(key) and secret not in str(key)
    with pytest.raises(Exception, match="Could not read the signing key from secret scope 'ml', key 'nope'"):
        replay_signing_key("ml", "nope")
    result = run_cli("--debug", "replay", "--replay-dir", str(tmp_path / "store"), "--secret-scope", "ml",
                     "--secret-key", "signing", "--no-ledger", "--profile", "unlimited",
                     "--tracking-uri", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.output
    encoded = base64.b64encode(secret.encode()).decode()
    for text in (result.output, caplog.text):
        assert secret not in text and encoded not in text
    assert any(r.path == "/api/2.0/secrets/get" for r in sent(workspace))


def test_replay_needs_a_tracking_server_except_on_a_databricks_runtime(monkeypatch, tmp_path, workspace):
    from mlflow_spark_tools.failed_runs.replay_job import ReplayOptions, run_replay_job

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    settings = load_settings(environ={})
    options = ReplayOptions(replay_dir=str(tmp_path / "store"), ledger=False)
    with pytest.raises(Exception, match="No tracking server: set MLFLOW_TRACKING_URI"):
        run_replay_job(settings, options, echo=lambda line: None)
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    lines = []
    # the workspace's own tracking server, as a job on a cluster has it
    assert run_replay_job(settings, options, echo=lines.append) == 0
    assert json.loads(lines[-1])["replayed"] == 0


def test_deploy_authenticates_with_a_databrickscfg_profile(built_wheel, workspace, monkeypatch, tmp_path, conf):
    config = tmp_path / "databrickscfg"
    config.write_text(f"[ml-dev]\nhost = {workspace.url}\ntoken = {workspace.token}\n\n"
                      "[other]\nhost = http://127.0.0.1:9\ntoken = wrong\n")
    monkeypatch.delenv("DATABRICKS_HOST")
    monkeypatch.delenv("DATABRICKS_TOKEN")
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config))
    result = run_cli("deploy", "--env", "dev", "--wheel", str(built_wheel), "--databricks-profile", "ml-dev")
    assert result.exit_code == 0, result.output
    assert len(workspace.state.jobs) == 2
    # the environment's databricks_profile, when no flag is given
    deployment = conf / "deployment.yaml"
    data = yaml.safe_load(deployment.read_text())
    data["environments"]["dev"]["databricks_profile"] = "ml-dev"
    deployment.write_text(yaml.safe_dump(data))
    workspace.state.requests.clear()
    result = run_cli("deploy", "--env", "dev", "--wheel", str(built_wheel), "--conf-dir", str(conf))
    assert result.exit_code == 0, result.output
    assert [r.path for r in sent(workspace)].count("/api/2.2/jobs/reset") == 2
    assert workspace.token not in result.output
