"""Build or refresh the flattened experiment tables.

    spark-submit jobs/build_experiment_tables.py --experiment-ids 1,2 [--database mlflow_exp]
    spark-submit --remote sc://host:15002 jobs/build_experiment_tables.py --all
    python jobs/build_experiment_tables.py --experiment-names my-exp --full-refresh

Takes the options of ``mlflow-spark-tools build-tables``.
"""

import sys

from mlflow_spark_tools.cli import main

if __name__ == "__main__":
    main(["build-tables", *sys.argv[1:]])
