"""Entry points for Databricks ``python_wheel_task``: one per command.

A wheel task names the package (``mlflow_spark_tools``) and an entry point (``build-tables``,
``replay``, ...). Databricks finds the entry point by name in the wheel's metadata (any group;
this package registers them in the group ``packages``, which puts nothing on ``PATH``), calls
it without arguments, and hands the task's parameters over in ``sys.argv[1:]``:

- ``parameters: ["--experiment-ids", "1,2", "--full-refresh"]`` arrive as they are;
- ``named_parameters: {"experiment-ids": "1,2", "database": "main.ml"}`` arrive as
  ``--experiment-ids=1,2 --database=main.ml``.

The entry points make both forms work for every command:

- ``--experiment_ids=...`` is read as ``--experiment-ids=...`` (job parameters are often
  written with underscores);
- flags take a value, as named parameters must: ``--full-refresh=true`` / ``=false``;
- options of the command group (``--database``, ``--profile``, ``--tracking-uri``,
  ``--verbose`` ...) are accepted after the command, where a wheel task puts them;
- success returns normally (a task ends green), any other outcome raises ``SystemExit``
  with the command line's exit code (1 failure, 2 usage error, 3 partial).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from mlflow_spark_tools.cli import wheel_arguments
from mlflow_spark_tools.cli.main import cli
from mlflow_spark_tools.cli.wheel_arguments import ENTRY_POINTS

__all__ = ["ENTRY_POINTS", "check_arguments", "command_line", "run"]


def command_line(command_name: str, argv: Sequence[str]) -> list[str]:
    """The ``mlflow-spark-tools`` arguments a wheel task's ``argv`` stands for
    (:func:`mlflow_spark_tools.cli.wheel_arguments.command_line`)."""
    return wheel_arguments.command_line(cli, command_name, argv)


def check_arguments(command_name: str, argv: Sequence[str]) -> dict[str, Any]:
    """Parse a wheel task's ``argv`` as the command would, without running it
    (:func:`mlflow_spark_tools.cli.wheel_arguments.check_arguments`)."""
    return wheel_arguments.check_arguments(cli, command_name, argv)


def run(command_name: str, argv: Sequence[str] | None = None) -> None:
    """Run one command as a wheel task: returns on success, raises SystemExit otherwise."""
    args = command_line(command_name, sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=args, prog_name="mlflow-spark-tools")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


def _entry_point(command_name: str) -> Callable[[], None]:
    def entry_point() -> None:
        run(command_name)

    entry_point.__name__ = command_name.replace("-", "_")
    entry_point.__doc__ = f"Wheel task entry point of ``mlflow-spark-tools {command_name}``."
    return entry_point


build_tables = _entry_point("build-tables")
replay = _entry_point("replay")
best_run = _entry_point("best-run")
last_run = _entry_point("last-run")
sql = _entry_point("sql")
dump_run = _entry_point("dump-run")
dump_experiment = _entry_point("dump-experiment")
system_tags = _entry_point("system-tags")
log_model = _entry_point("log-model")
report = _entry_point("report")

