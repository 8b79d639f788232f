"""The ``mlflow-spark-tools`` command line: the group and every command registered on it."""

from __future__ import annotations

from mlflow_spark_tools.cli import (
    databricks_commands,
    replay_commands,
    report_commands,
    run_commands,
    table_commands,
)
from mlflow_spark_tools.cli.app import cli

COMMAND_MODULES = (table_commands, report_commands, replay_commands, run_commands, databricks_commands)

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="mlflow-spark-tools")
