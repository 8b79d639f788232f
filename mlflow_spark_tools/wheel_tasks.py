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
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import click

from mlflow_spark_tools.cli import cli
from mlflow_spark_tools.errors import UsageError

# The commands with a wheel entry point of the same name (what job specs put into
# `entry_point`); setup.py registers each as `<name>=mlflow_spark_tools.wheel_tasks:<function>`.
ENTRY_POINTS = ("build-tables", "replay", "best-run", "last-run", "sql", "dump-run",
                "dump-experiment", "system-tags", "log-model")


def _option_arity(command: click.Command) -> dict[str, bool]:
    """Every option string of ``command`` -> whether it takes a value."""
    arity = {}
    for param in command.params:
        if isinstance(param, click.Option):
            takes_value = not (param.is_flag or param.count)
            for name in (*param.opts, *param.secondary_opts):
                arity[name] = takes_value
    return arity


def _normalize(token: str) -> str:
    """``--experiment_ids=1`` -> ``--experiment-ids=1``; values are left alone."""
    if not token.startswith("--"):
        return token
    name, sep, value = token.partition("=")
    return name.replace("_", "-") + sep + value


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def command_line(command_name: str, argv: Sequence[str]) -> list[str]:
    """The ``mlflow-spark-tools`` arguments that a wheel task's ``argv`` stands for.

    Options of the command group that the command itself does not define move in front of the
    command name, with their values; everything else keeps its order. A flag given as a named
    parameter (``--full-refresh=true``) is set for true/1/yes/on and left out for
    false/0/no/off. Tokens after ``--`` are left as they are.
    """
    command = cli.commands[command_name]
    own = _option_arity(command)
    group = _option_arity(cli)
    leading: list[str] = []
    rest: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        if tokens[i] == "--":
            rest.extend(tokens[i:])
            break
        token = _normalize(tokens[i])  # an option's name; the values it takes stay as given
        name, has_value, value = token.partition("=")
        target = leading if name in group and name not in own else rest
        takes_value = (group if target is leading else own).get(name)
        if takes_value is False and has_value and value.lower() in _TRUE | _FALSE:
            if value.lower() in _TRUE:
                target.append(name)
        else:
            target.append(token)
            if takes_value and not has_value and i + 1 < len(tokens):
                target.append(tokens[i + 1])
                i += 1
        i += 1
    return [*leading, command_name, *rest]


def check_arguments(command_name: str, argv: Sequence[str]) -> dict[str, Any]:
    """Parse a wheel task's ``argv`` as the command would, without running it.

    Returns:
        The command's parameter values by name (group options under ``group.<name>``).

    Raises:
        UsageError: the command does not exist or does not accept the arguments.
    """
    if command_name not in ENTRY_POINTS:
        raise UsageError(f"No wheel entry point {command_name!r}; there are {', '.join(ENTRY_POINTS)}.")
    args = command_line(command_name, argv)
    try:
        group = cli.make_context("mlflow-spark-tools", list(args))
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args, which 8.1 needs
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*group.protected_args, *group.args]
        name, command, rest = cli.resolve_command(group, remaining)
        assert command is not None and name is not None
        parsed = command.make_context(name, rest, parent=group)
    except click.ClickException as exc:
        raise UsageError(f"{command_name} {' '.join(argv)}: {exc.format_message()}") from None
    return {**{f"group.{k}": v for k, v in group.params.items()}, **parsed.params}


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

