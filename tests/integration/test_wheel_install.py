"""The built wheel, installed into a fresh virtualenv, runs its entry points as Databricks does.

A Databricks runtime brings pyspark and friends; the wheel installs on top. Here the fresh venv
sees this test environment's packages (minus this package) as that runtime layer, so the
install resolves every requirement, the local extra included, with ``--no-index``: nothing is
downloaded, and a requirement the layer cannot satisfy fails the install.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .helpers import log_run

# What a Databricks python_wheel_task does: find the entry point by name in the package's
# metadata, put the task's parameters into sys.argv, call it; an exception fails the task.
RUNNER = """
import sys
from importlib.metadata import distribution
import mlflow_spark_tools
assert mlflow_spark_tools.__file__.startswith(sys.prefix), mlflow_spark_tools.__file__
name, *params = sys.argv[1:]
entry = next(e for e in distribution("mlflow_spark_tools").entry_points if e.name == name)
sys.argv = ["mlflow_spark_tools", *params]
entry.load()()
print("TASK-RETURNED")
"""


@pytest.fixture(scope="module")
def fresh_venv(built_wheel, tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    layer = root / "runtime"
    layer.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if entry.name.startswith(("mlflow_spark_tools", "__editable__", "_mlflow_spark_tools")) \
                or entry.suffix == ".pth":
            continue
        (layer / entry.name).symlink_to(entry)
    fresh_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
    Path(fresh_site, "runtime_layer.pth").write_text(f"{layer}\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
         f"mlflow_spark_tools[local] @ {built_wheel.as_uri()}"],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


@pytest.mark.compat
def test_the_wheel_keeps_spark_out_of_its_hard_requirements(built_wheel):
    with zipfile.ZipFile(built_wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA")))
        names = archive.namelist()
    # parsed, not matched as text: setuptools releases write the markers differently
    requires = [Requirement(r) for r in email.message_from_bytes(metadata).get_all("Requires-Dist")]
    hard = {r.name for r in requires if r.marker is None}

    def extra(name):
        return [r for r in requires if r.marker is not None and r.marker.evaluate({"extra": name})]

    assert hard and not hard & {"pyspark", "pysail", "delta-spark"}
    assert {r.name for r in extra("local")} == {"pyspark", "pysail", "delta-spark"}
    # MLflow only in an extra: a runtime's full mlflow must never get mlflow-skinny installed over it
    assert not hard & {"mlflow", "mlflow-skinny"}
    assert [f"{r.name}{r.specifier}" for r in extra("mlflow")] == ["mlflow-skinny>=2.13.1"]
    for shipped in ("defaults.yaml", "deployment.yaml", "jobs/build_experiment_tables.yaml",
                    "jobs/replay_failed_runs.yaml", "rate_limits/databricks.yaml"):
        assert f"mlflow_spark_tools/_conf/{shipped}" in names


def run_task(python, cwd, entry_point, *params):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "MLFLOW_TRACKING_URI")}
    env.update(RUST_LOG="error", PYSPARK_PYTHON=str(python))
    return subprocess.run([str(python), "-c", RUNNER, entry_point, *params], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.compat
def test_entry_points_run_as_wheel_tasks_with_named_and_positional_parameters(
        fresh_venv, tmp_path, tracking_server, client, experiment):
    log_run(client, experiment, params={"alpha": 0.5}, metrics={"rmse": 0.25})
    log_run(client, experiment, params={"alpha": 0.1}, metrics={"rmse": 0.75})
    warehouse = tmp_path / "warehouse"
    # named_parameters arrive as --name=value, as Databricks passes them
    built = run_task(fresh_venv, tmp_path, "build-tables", f"--experiment_ids={experiment}",
                     "--database=wheel_db", f"--warehouse={warehouse}", f"--tracking-uri={tracking_server.url}",
                     "--profile=unlimited", "--format=json", "--verbose=true")
    assert built.returncode == 0, built.stderr
    assert built.stdout.rstrip().endswith("TASK-RETURNED")
    summary = json.loads(built.stdout[:built.stdout.rindex("TASK-RETURNED")])
    assert [(s["experiment_id"], s["mode"], s["row_count"]) for s in summary] == [(experiment, "full", 2)]
    assert (f"Experiment 1/1 {experiment}: full refresh of wheel_db.exp_{experiment} (no table yet), "
            "2 runs fetched") in built.stderr
    # parameters arrive as they are
    query = run_task(fresh_venv, tmp_path, "sql", "--warehouse", str(warehouse), "--format", "json",
                     f"SELECT _p_alpha, _m_rmse FROM wheel_db.exp_{experiment} ORDER BY _m_rmse")
    assert query.returncode == 0, query.stderr
    rows = json.loads(query.stdout[:query.stdout.rindex("TASK-RETURNED")])
    assert rows == [{"_p_alpha": 0.5, "_m_rmse": 0.25}, {"_p_alpha": 0.1, "_m_rmse": 0.75}]
    # a failing task raises SystemExit with the command line's exit code
    failed = run_task(fresh_venv, tmp_path, "best-run", f"--experiment-id={experiment}",
                      f"--tracking-uri={tracking_server.url}")
    assert failed.returncode == 2 and "TASK-RETURNED" not in failed.stdout
    assert "Missing option '--metric'" in failed.stderr
