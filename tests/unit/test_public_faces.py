"""The public faces keep their names, and what users read (notebooks, README, docs) uses them only."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FACES = {
    "mlflow_spark_tools.client": {"RetryingClient"},
    "mlflow_spark_tools.collector": {"FailedRunCollector"},
    "mlflow_spark_tools.replay": {"Replayer", "ReplayOptions", "run_replay_job", "LEDGER_TABLE"},
    "mlflow_spark_tools.config": {"load_settings", "Settings", "RateLimitProfile"},
    "mlflow_spark_tools.build_tables": {"build_experiment_tables"},
    "mlflow_spark_tools.queries": {"best_run", "last_run", "qualified_name", "quote", "sql_string"},
    "mlflow_spark_tools.engine": {"get_engine"},
    "mlflow_spark_tools.report": {"experiment_report", "ExperimentReport"},
    "mlflow_spark_tools.errors": {"MlflowSparkToolsError", "UsageError", "RunNotFoundError"},
}


@pytest.mark.parametrize("module", sorted(FACES))
def test_every_face_exports_its_names(module):
    face = importlib.import_module(module)
    for name in FACES[module]:
        assert getattr(face, name, None) is not None, (module, name)
    for name in getattr(face, "__all__", ()):
        assert hasattr(face, name), (module, name)


def _user_facing_files():
    yield from sorted((ROOT / "notebooks").glob("*.py"))
    yield ROOT / "README.md"
    yield from sorted((ROOT / "docs").glob("*.md"))


def test_notebooks_readme_and_docs_import_public_faces_only():
    imports = re.compile(r"^\s*from (mlflow_spark_tools(?:\.\w+)*) import ", re.M)
    wrong = [(path.name, module) for path in _user_facing_files()
             for module in imports.findall(path.read_text(encoding="utf-8")) if module not in FACES]
    assert wrong == []


def test_importing_the_collector_loads_neither_spark_nor_the_client_nor_the_cli():
    code = ("import sys, mlflow_spark_tools.collector; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark' "
            "or m in ('mlflow_spark_tools.tracking.client', 'mlflow_spark_tools.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
