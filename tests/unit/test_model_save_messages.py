"""Saving a model in the format the package chose says nothing per model; a format the caller
chose keeps MLflow's own warnings."""

from __future__ import annotations

import logging

import pytest

from mlflow_spark_tools.runs.models import save_model_dir

PICKLE_CAUTION = "pickle or cloudpickle format requires exercising caution"  # MLflow 3.x

sklearn = pytest.importorskip("sklearn.linear_model")


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _saved(tmp_path, name, kwargs, caplog):
    """The pickle cautions MLflow logs (on its own logger, which does not propagate) while saving."""
    recorder = _Recorder()
    logger = logging.getLogger("mlflow.sklearn")
    logger.addHandler(recorder)
    try:
        save_model_dir(sklearn.LinearRegression().fit([[1.0], [2.0]], [1.0, 2.0]), str(tmp_path / name), "sklearn",
                       None, kwargs)
    finally:
        logger.removeHandler(recorder)
    return [m for m in recorder.messages if PICKLE_CAUTION in m]


def test_the_packages_own_cloudpickle_choice_is_not_warned_about_per_model(tmp_path, caplog):
    chosen_by_caller = _saved(tmp_path, "theirs", {"serialization_format": "cloudpickle"}, caplog)
    if not chosen_by_caller:
        pytest.skip("this MLflow does not warn about pickled scikit-learn models")
    assert _saved(tmp_path, "ours", {}, caplog) == []
    assert (tmp_path / "ours" / "MLmodel").is_file()
    # and the filter holds only while the package saves: the caller's choice is warned about again
    assert _saved(tmp_path, "theirs again", {"serialization_format": "cloudpickle"}, caplog)
