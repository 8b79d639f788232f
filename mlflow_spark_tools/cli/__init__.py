"""The ``mlflow-spark-tools`` command line and the Databricks wheel-task entry points."""

from mlflow_spark_tools.cli.main import cli, main

__all__ = ["cli", "main"]
