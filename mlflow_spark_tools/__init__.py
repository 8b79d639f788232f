"""Spark-native MLflow tools for Databricks.

Flattened per-experiment Delta tables (``exp_<experiment_id>``) so that "which run is best?"
is one SQL query, and the tools around them.
"""

from mlflow_spark_tools.core.dependencies import check_mlflow

__version__ = "0.1.0"

# MLflow is not a hard requirement of the wheel (see setup.py): fail on import, with what to
# install, rather than deep inside a job.
check_mlflow()
