"""``python -m mlflow_spark_tools.cli``: the command line."""

from mlflow_spark_tools.cli.main import main

main()
