"""Public face of the Spark engine: the cluster's session, a Spark Connect server or the
embedded one.

The implementation lives in :mod:`mlflow_spark_tools.spark.engine`; import from here.
"""

from mlflow_spark_tools.spark.engine import Engine, get_engine

__all__ = ["Engine", "get_engine"]
