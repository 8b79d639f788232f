"""The registry of table sources: every entry opens a source of its module, the command line
offers exactly its names, and an unknown name is refused before anything is opened."""

from __future__ import annotations

import importlib
import inspect
from contextlib import ExitStack

import click
import pytest

from mlflow_spark_tools.cli.main import cli
from mlflow_spark_tools.config import load_settings
from mlflow_spark_tools.errors import InvalidConfigError, UsageError
from mlflow_spark_tools.tables.source_plans import TableSource
from mlflow_spark_tools.tables.source_registry import SOURCES, open_source, source_names, sources_help


def test_every_entry_names_a_class_that_opens_a_table_source():
    assert source_names() == ["rest", "database", "system-tables"]
    for name, entry in SOURCES.items():
        assert entry.name == name
        opener = getattr(importlib.import_module(entry.module), entry.opener)
        assert inspect.signature(opener.open).parameters.keys() == {"settings", "stack"}
        for member in ("experiment_groups", "tracking"):  # what TableSource asks for
            assert callable(getattr(opener, member)), (name, member)
    assert {"experiment_groups", "tracking"} <= set(dir(TableSource))


def test_the_command_line_offers_the_registry_and_says_what_each_reads():
    option = next(p for p in cli.commands["build-tables"].params if p.name == "source")
    assert isinstance(option.type, click.Choice) and list(option.type.choices) == source_names()
    assert sources_help() in (option.help or "")
    assert sources_help().startswith("rest (the tracking server's API), database (")


def test_an_unknown_source_is_refused_with_the_names_there_are():
    settings = load_settings(environ={}).with_overrides(tables__source="mlflow-traces")
    with ExitStack() as stack, pytest.raises(InvalidConfigError) as refused:
        open_source(settings, stack)
    assert str(refused.value) == ("tables.source must be one of rest, database, system-tables, "
                                  "got 'mlflow-traces'.")
    with pytest.raises(InvalidConfigError, match="tables.source must name a source"):
        load_settings(environ={}).with_overrides(tables__source="")


def test_the_database_source_says_what_it_needs_before_opening_anything():
    settings = load_settings(environ={}).with_overrides(tables__source="database")
    with ExitStack() as stack, pytest.raises(UsageError, match="--source database needs --backend-store-uri"):
        open_source(settings, stack)
