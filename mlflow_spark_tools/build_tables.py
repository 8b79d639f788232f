"""Public face of the experiment-table build.

The implementation lives in :mod:`mlflow_spark_tools.tables.build`; import from here.
"""

from mlflow_spark_tools.tables.build import BuildResult, build_experiment_tables

__all__ = ["BuildResult", "build_experiment_tables"]
