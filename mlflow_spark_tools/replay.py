"""Public face of the replay: the replayer, its lease on a store, the replay job and its ledger table.

The implementations live in :mod:`mlflow_spark_tools.failed_runs`; import from here.
"""

from mlflow_spark_tools.failed_runs.lease import DeltaLease, LeaseLost
from mlflow_spark_tools.failed_runs.ledger import LEDGER_TABLE, existing_ledger
from mlflow_spark_tools.failed_runs.replay_job import UNTIL_EMPTY, ReplayOptions, run_replay_job
from mlflow_spark_tools.failed_runs.replayer import Replayer, ReplaySummary

__all__ = ["LEDGER_TABLE", "UNTIL_EMPTY", "DeltaLease", "LeaseLost", "existing_ledger", "ReplayOptions",
           "ReplaySummary", "Replayer", "run_replay_job"]
