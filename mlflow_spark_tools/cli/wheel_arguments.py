"""Reading a Databricks wheel task's arguments as the command line would.

See :mod:`mlflow_spark_tools.cli.wheel_tasks` for the forms a task's parameters arrive in.
The functions take the command group, so that the deployment check and the entry points parse
with the same group.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import click

from mlflow_spark_tools.errors import UsageError

# The commands with a wheel entry point of the same name (what job specs put into
# `entry_point`); setup.py registers each as `<name>=mlflow_spark_tools.cli.wheel_tasks:<function>`.
ENTRY_POINTS = ("build-tables", "replay", "best-run", "last-run", "sql", "dump-run",
                "dump-experiment", "system-tags", "log-model", "report")


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


def command_line(group: click.Group, command_name: str, argv: Sequence[str]) -> list[str]:
    """The ``mlflow-spark-tools`` arguments that a wheel task's ``argv`` stands for.

    Options of the command group that the command itself does not define move in front of the
    command name, with their values; everything else keeps its order. A flag given as a named
    parameter (``--full-refresh=true``) is set for true/1/yes/on and left out for
    false/0/no/off. Tokens after ``--`` are left as they are.
    """
    command = group.commands[command_name]
    own = _option_arity(command)
    group_arity = _option_arity(group)
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
        target = leading if name in group_arity and name not in own else rest
        takes_value = (group_arity if target is leading else own).get(name)
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


def check_arguments(group: click.Group, command_name: str, argv: Sequence[str]) -> dict[str, Any]:
    """Parse a wheel task's ``argv`` as the command would, without running it.

    Returns:
        The command's parameter values by name (group options under ``group.<name>``).

    Raises:
        UsageError: the command does not exist or does not accept the arguments.
    """
    if command_name not in ENTRY_POINTS:
        raise UsageError(f"No wheel entry point {command_name!r}; there are {', '.join(ENTRY_POINTS)}.")
    args = command_line(group, command_name, argv)
    try:
        group_context = group.make_context("mlflow-spark-tools", list(args))
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args, which 8.1 needs
            warnings.simplefilter("ignore", DeprecationWarning)
            remaining = [*group_context.protected_args, *group_context.args]
        name, command, rest = group.resolve_command(group_context, remaining)
        assert command is not None and name is not None
        parsed = command.make_context(name, rest, parent=group_context)
    except click.ClickException as exc:
        raise UsageError(f"{command_name} {' '.join(argv)}: {exc.format_message()}") from None
    return {**{f"group.{k}": v for k, v in group_context.params.items()}, **parsed.params}
