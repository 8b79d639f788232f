"""Every source a table build can read, by the name ``--source`` and ``tables.source`` give.

Adding a source is one module that implements
:class:`~mlflow_spark_tools.tables.source_plans.TableSource` (its readers implement
:mod:`~mlflow_spark_tools.tables.source_interface`) and one entry in :data:`SOURCES`; the build
job and the command line know only this registry (docs/ARCHITECTURE.md has the steps). A
source's module is imported when a build opens it, so that the command line starts without
importing every source.
"""

from __future__ import annotations

import importlib
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlflow_spark_tools.errors import InvalidConfigError

if TYPE_CHECKING:
    from mlflow_spark_tools.config import Settings
    from mlflow_spark_tools.tables.source_plans import TableSource


@dataclass(frozen=True)
class SourceEntry:
    """One source: its name, what it reads (for the command line's help), and the class of its
    module that opens it (``open(settings, stack)``, a :class:`TableSource`)."""

    name: str
    description: str
    module: str
    opener: str

    def open(self, settings: Settings, stack: ExitStack) -> TableSource:
        opener = getattr(importlib.import_module(self.module), self.opener)
        source: TableSource = opener.open(settings, stack)
        return source


SOURCES: dict[str, SourceEntry] = {entry.name: entry for entry in (
    SourceEntry("rest", "the tracking server's API", "mlflow_spark_tools.tables.rest_source", "RestSource"),
    SourceEntry("database", "its backend database, read-only, no API requests",
                "mlflow_spark_tools.tables.database_source", "DatabaseSource"),
    SourceEntry("system-tables", "Databricks' MLflow system tables, inside Spark",
                "mlflow_spark_tools.tables.system_tables_source", "SystemTablesSource"),
)}


def source_names() -> list[str]:
    return list(SOURCES)


def open_source(settings: Settings, stack: ExitStack) -> TableSource:
    """The configured source (``tables.source``), opened; its resources close with ``stack``."""
    entry = SOURCES.get(settings.tables.source)
    if entry is None:
        raise InvalidConfigError(
            f"tables.source must be one of {', '.join(SOURCES)}, got {settings.tables.source!r}.")
    return entry.open(settings, stack)


def sources_help() -> str:
    """The sources with what each reads: ``rest (...), database (...) or system-tables (...)``."""
    described = [f"{name} ({entry.description})" for name, entry in SOURCES.items()]
    return ", ".join(described[:-1]) + " or " + described[-1]
