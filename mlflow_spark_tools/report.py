"""Public face of experiment reports: charts of an experiment's table for one metric.

``experiment_report(...)`` reads the table through Spark and returns an :class:`ExperimentReport`
(``.chart(name)``, ``.html()``, ``.save(path, fmt)``, ``.display()``). Implementation:
:mod:`mlflow_spark_tools.reports`.
"""

from mlflow_spark_tools.reports.document import ExperimentReport
from mlflow_spark_tools.reports.experiment_report import experiment_report

__all__ = ["ExperimentReport", "experiment_report"]
