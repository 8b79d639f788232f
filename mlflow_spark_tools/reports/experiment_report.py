"""``experiment_report``: the report of one experiment's table for one metric."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow_spark_tools.config import load_settings
from mlflow_spark_tools.core.identifiers import validate_experiment_id
from mlflow_spark_tools.errors import UsageError
from mlflow_spark_tools.reports.charts import altair
from mlflow_spark_tools.reports.document import ExperimentReport
from mlflow_spark_tools.reports.report_data import read_report_data
from mlflow_spark_tools.spark.catalog import Database
from mlflow_spark_tools.spark.engine import Engine, get_engine

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def experiment_report(experiment_id: str, metric: str, *, ascending: bool = True, top: int = 10,
                      max_points: int = 1000, max_params: int = 12, engine: Engine | None = None,
                      spark: SparkSession | None = None, database: str | None = None) -> ExperimentReport:
    """The report of ``<database>.exp_<experiment_id>`` for ``metric``.

    Args:
        ascending: the lowest value is best (else the highest).
        top: how many best runs the table and the history chart show.
        max_points: how many runs the parallel coordinates and scatter plots draw at most.
        max_params: how many params are charted at most.
        engine, spark: where the tables are (default: the notebook's or cluster's session, else
            the configured engine).
        database: the tables' database (default: ``tables.database`` of the configuration).

    In a Databricks notebook: ``experiment_report("1", "rmse").display()``.
    """
    validate_experiment_id(experiment_id)
    if top < 1 or max_points < 2 or max_params < 1:
        raise UsageError("top and max_params must be at least 1, max_points at least 2.")
    altair()  # a missing charting library fails before any Spark work
    if engine is None:
        engine = get_engine(spark) if spark is not None else get_engine()
    db = Database(engine, database or load_settings().tables.database)
    data = read_report_data(db, experiment_id, metric, ascending=ascending, top=top, max_points=max_points,
                            max_params=max_params)
    return ExperimentReport(data)
