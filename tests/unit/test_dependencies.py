"""The MLflow check on import: the wheel does not require MLflow, so a missing or too old one
fails the import with what to install."""

from __future__ import annotations

from importlib import metadata

import pytest

from mlflow_spark_tools.core.dependencies import (
    MLFLOW_FLOOR,
    check_mlflow,
    installed_mlflow,
    mlflow_package_version,
    version_tuple,
)
from mlflow_spark_tools.errors import MissingDependencyError


@pytest.mark.parametrize("version, parsed", [
    ("2.13.1", (2, 13, 1)), ("3.0.1", (3, 0, 1)), ("2.21.3rc0", (2, 21, 3)), ("3.1.0.dev0", (3, 1, 0)),
    ("2.9", (2, 9)), ("unknown", ()),
])
def test_version_tuple(version, parsed):
    assert version_tuple(version) == parsed


def test_the_installed_mlflow_passes_and_its_files_say_its_version():
    import mlflow

    assert mlflow_package_version() == mlflow.__version__
    assert check_mlflow() == mlflow.__version__ and version_tuple(mlflow.__version__) >= MLFLOW_FLOOR
    assert mlflow.__version__ in installed_mlflow().values()


@pytest.mark.parametrize("found, package", [
    ({"mlflow": "2.13.1"}, "2.13.1"), ({"mlflow-skinny": "2.21.3"}, "2.21.3"),
    ({"mlflow": "3.8.1", "mlflow-skinny": "3.8.1"}, "3.8.1"),
    ({"mlflow": "2.13.1"}, ""),  # a version file that cannot be read: the distribution's
])
def test_the_floor_and_newer_pass(found, package):
    assert check_mlflow(found, package) == (package or found["mlflow"])


@pytest.mark.parametrize("found, package", [({}, None), ({}, "2.13.1"), ({"mlflow": "2.13.1"}, None)])
def test_no_mlflow_is_an_import_error_that_says_what_to_install(found, package):
    with pytest.raises(ImportError) as raised:
        check_mlflow(found, package)
    assert isinstance(raised.value, MissingDependencyError) and raised.value.name == "mlflow"
    assert "none is installed" in str(raised.value) and "mlflow-spark-tools[mlflow]" in str(raised.value)


@pytest.mark.parametrize("found, package", [({"mlflow": "2.12.2"}, "2.12.2"),
                                            ({"mlflow-skinny": "2.11.4"}, "2.11.4"),
                                            ({"mlflow": "2.12.2"}, "")])
def test_an_mlflow_below_the_floor_is_named(found, package):
    with pytest.raises(MissingDependencyError, match=r"needs MLflow 2\.13\.1 or newer; MLflow 2\.1[12]\.\d is installed"):
        check_mlflow(found, package)


def test_the_package_files_decide_when_two_distributions_disagree():
    # a runtime's mlflow 2.13.1 with mlflow-skinny 2.16 installed over it: the files are 2.16's
    assert check_mlflow({"mlflow": "2.13.1", "mlflow-skinny": "2.16.0"}, "2.16.0") == "2.16.0"
    with pytest.raises(MissingDependencyError, match=r"\(mlflow 2\.13\.1, mlflow-skinny 2\.11\.4\)"):
        check_mlflow({"mlflow": "2.13.1", "mlflow-skinny": "2.11.4"}, "2.11.4")


def test_importing_the_package_without_mlflow_fails_with_the_hint(monkeypatch):
    def no_mlflow(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", no_mlflow)
    with pytest.raises(MissingDependencyError, match="none is installed"):
        check_mlflow()
