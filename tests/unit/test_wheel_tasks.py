import ast
from pathlib import Path

import pytest

from mlflow_spark_tools.cli import wheel_tasks
from mlflow_spark_tools.cli.main import cli
from mlflow_spark_tools.cli.wheel_tasks import ENTRY_POINTS, check_arguments, command_line, run
from mlflow_spark_tools.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def test_setup_registers_every_entry_point_and_each_resolves_to_its_command():
    tree = ast.parse((ROOT / "setup.py").read_text())
    names = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "WHEEL_ENTRY_POINTS")
    assert tuple(names) == ENTRY_POINTS
    for name in ENTRY_POINTS:
        assert name in cli.commands
        function = getattr(wheel_tasks, name.replace("-", "_"))
        assert callable(function) and name in function.__doc__


def test_named_parameters_with_underscores_flags_and_group_options():
    args = command_line("build-tables", ["--experiment_ids=1,2", "--database=main.ml", "--verbose=true",
                                         "--full-refresh=false", "--profile", "unlimited",
                                         "--include_deleted=yes"])
    # build-tables takes --profile itself; --verbose is the group's
    assert args == ["--verbose", "build-tables", "--experiment-ids=1,2", "--database=main.ml",
                    "--profile", "unlimited", "--include-deleted"]
    params = check_arguments("build-tables", ["--experiment_ids=1,2", "--database=main.ml", "--verbose=true",
                                              "--full-refresh=false", "--profile", "unlimited",
                                              "--include_deleted=yes"])
    assert params["group.verbose"] is True and params["profile_"] == "unlimited"
    # a command without its own --profile passes it to the group
    assert command_line("sql", ["SELECT 1", "--profile=unlimited"]) == ["--profile=unlimited", "sql", "SELECT 1"]
    assert params["experiment_ids"] == ("1,2",)
    assert params["database_"] == "main.ml"
    assert params["include_deleted"] is True and params["full_refresh"] is False


def test_positional_parameters_keep_their_order_and_values_with_equals_signs():
    args = command_line("sql", ["SELECT 'a=b' AS x_y", "--format=json", "--max-rows", "3"])
    assert args == ["sql", "SELECT 'a=b' AS x_y", "--format=json", "--max-rows", "3"]
    params = check_arguments("sql", ["SELECT 'a=b' AS x_y", "--format=json", "--max-rows", "3"])
    assert (params["query"], params["fmt"], params["max_rows"]) == ("SELECT 'a=b' AS x_y", "json", 3)


def test_values_and_everything_after_a_double_dash_keep_their_underscores():
    assert command_line("replay", ["--replay_dir", "--odd_dir_name", "--", "--a_b"]) == \
        ["replay", "--replay-dir", "--odd_dir_name", "--", "--a_b"]


def test_an_option_the_command_defines_itself_stays_with_the_command():
    # replay has its own --profile and --database: they must not move to the group
    args = command_line("replay", ["--replay-dir", "/x", "--profile=unlimited", "--database", "d", "-v"])
    assert args == ["-v", "replay", "--replay-dir", "/x", "--profile=unlimited", "--database", "d"]
    params = check_arguments("replay", ["--replay-dir", "/x", "--profile=unlimited", "--database", "d", "-v"])
    assert params["profile_"] == "unlimited" and params["database_"] == "d" and params["group.verbose"]


def test_a_flag_with_a_value_that_is_not_boolean_is_left_for_the_command_line_to_reject():
    args = command_line("build-tables", ["--full-refresh=maybe"])
    assert args == ["build-tables", "--full-refresh=maybe"]
    with pytest.raises(UsageError, match="does not take a value"):
        check_arguments("build-tables", ["--full-refresh=maybe"])
    with pytest.raises(UsageError, match="No such option: --experiment-idz"):
        check_arguments("build-tables", ["--experiment-idz=1"])
    with pytest.raises(UsageError, match="No wheel entry point 'build-table'"):
        check_arguments("build-table", [])


def test_success_returns_and_failures_raise_with_the_exit_code(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_SPARK_TOOLS_CONF", "/nonexistent/conf.yaml")
    with pytest.raises(SystemExit) as raised:
        run("best-run", ["--experiment-id", "1", "--metric", "m"])
    assert raised.value.code == 2
    assert "/nonexistent/conf.yaml" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_SPARK_TOOLS_CONF")
    assert run("best-run", ["--help"]) is None
    assert "--experiment-id" in capsys.readouterr().out
