"""Public face of the failed-run collector, the part that runs inside Spark tasks.

The implementation lives in :mod:`mlflow_spark_tools.failed_runs.collector`; import from here.
Importing this module imports neither the retrying client, the command line nor Spark.
"""

from mlflow_spark_tools.failed_runs.collector import BufferedRun, FailedRunCollector

__all__ = ["BufferedRun", "FailedRunCollector"]
