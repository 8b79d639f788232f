"""Public face of the tracking client: retries per operation, paced to the rate limits.

The implementation lives in :mod:`mlflow_spark_tools.tracking.client`; import from here.
"""

from mlflow_spark_tools.tracking.client import LoggedModelRef, RetryingClient

__all__ = ["LoggedModelRef", "RetryingClient"]
