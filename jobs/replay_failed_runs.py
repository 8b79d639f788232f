"""Replay the runs that a rate limit kept from being logged.

    spark-submit jobs/replay_failed_runs.py --replay-dir /dbfs/ml/failed_runs --until-empty
    python jobs/replay_failed_runs.py --replay-dir /Volumes/main/ml/failed_runs --loop --interval 60

Takes the options of ``mlflow-spark-tools replay``.
"""

import sys

from mlflow_spark_tools.cli import main

if __name__ == "__main__":
    main(["replay", *sys.argv[1:]])
