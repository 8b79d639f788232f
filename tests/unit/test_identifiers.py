import pytest

from mlflow_spark_tools.core.identifiers import (
    experiment_table_name,
    qualified_name,
    sql_string,
    validate_database,
)
from mlflow_spark_tools.errors import InvalidIdentifierError


@pytest.mark.parametrize("name", ["mlflow_exp", "main.mlflow_exp", "_x1"])
def test_valid_databases(name):
    assert ".".join(validate_database(name)) == name


@pytest.mark.parametrize(
    "name", ["", "a;b", "a.b.c", "1abc", "a b", "a`b", "x.", "drop table x", "ä"]
)
def test_invalid_databases_are_rejected_with_the_name(name):
    with pytest.raises(InvalidIdentifierError) as info:
        validate_database(name)
    assert repr(name) in str(info.value) or name == ""


def test_qualified_name_and_table_name():
    assert qualified_name("cat.sch", "exp_1") == "`cat`.`sch`.`exp_1`"
    assert experiment_table_name("123") == "exp_123"
    with pytest.raises(InvalidIdentifierError):
        experiment_table_name("1; DROP")


def test_sql_string_escapes_quotes_and_backslashes():
    assert sql_string("it's") == "'it\\'s'"
    assert sql_string("a\\") == "'a\\\\'"
