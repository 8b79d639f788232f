"""Run Databricks source-format notebooks on a local Spark session.

A notebook file starts with ``# Databricks notebook source``; its cells are separated by a
``# COMMAND ----------`` line with a blank line on each side, and markdown cells are
``# MAGIC %md`` lines. :class:`Notebook` executes the code cells in order in one namespace that
holds what a Databricks notebook finds there: ``spark``, ``dbutils`` and ``display``.

``dbutils`` here has widgets and secrets only, answered from values the test supplies: a widget
the test gives no value for raises, and so does a value given for a widget the notebook never
defines, so a test and its notebook cannot drift apart. ``display`` records what it was given,
Spark DataFrames as pandas.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
MAGIC = "# MAGIC"
MARKDOWN = "# MAGIC %md"
WIDGET_KINDS = ("text", "dropdown")


class NotebookFormatError(ValueError):
    """The file is not a Databricks source-format notebook this runner can execute."""


class UnknownWidgetError(LookupError):
    """A widget without a value from the test, or a value for a widget the notebook lacks."""


class SecretNotFoundError(LookupError):
    """A secret the test did not supply."""


@dataclass(frozen=True)
class Cell:
    """One cell: its 1-based number, the file line it starts on, its text, whether markdown."""

    number: int
    first_line: int
    source: str
    markdown: bool


def _cell(number: int, first_line: int, lines: list[str], path: Path) -> Cell | None:
    while lines and not lines[0].strip():
        lines.pop(0)
        first_line += 1
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return None
    magic = [line.startswith(MAGIC) for line in lines]
    if any(magic):
        if not all(magic) or lines[0].strip() != MARKDOWN:
            raise NotebookFormatError(
                f"{path}:{first_line}: cell {number} holds '{MAGIC}' lines other than one markdown "
                f"cell ('{MARKDOWN}' first, every line magic); this runner executes Python cells only."
            )
        return Cell(number, first_line, "\n".join(lines), markdown=True)
    return Cell(number, first_line, "\n".join(lines), markdown=False)


def parse_notebook(path: str | Path) -> list[Cell]:
    """The cells of a source-format notebook, markdown included; raises NotebookFormatError."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != HEADER:
        raise NotebookFormatError(f"{path}: the first line must be {HEADER!r}.")
    cells: list[Cell] = []
    current: list[str] = []
    start = 2  # 1-based line number of the current cell's first line
    for index in range(1, len(lines)):
        line = lines[index]
        if line.strip() != SEPARATOR:
            current.append(line)
            continue
        if line != SEPARATOR or lines[index - 1].strip() or index + 1 >= len(lines) or lines[index + 1].strip():
            raise NotebookFormatError(
                f"{path}:{index + 1}: a cell separator must read {SEPARATOR!r} and have a blank line "
                "before and after it."
            )
        cell = _cell(len(cells) + 1, start, current, path)
        if cell is not None:
            cells.append(cell)
        current, start = [], index + 2
    cell = _cell(len(cells) + 1, start, current, path)
    if cell is not None:
        cells.append(cell)
    return cells


def declared_widgets(path: str | Path) -> set[str]:
    """Names of the widgets a notebook defines or reads, found in its code (not by running it).

    Raises NotebookFormatError for a widget name that is not a string literal: such a widget
    could not be checked against what a test supplies.
    """
    names: set[str] = set()
    for cell in parse_notebook(path):
        if cell.markdown:
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if not (isinstance(owner, ast.Attribute) and owner.attr == "widgets"
                    and isinstance(owner.value, ast.Name) and owner.value.id == "dbutils"):
                continue
            if node.func.attr not in (*WIDGET_KINDS, "get"):
                raise NotebookFormatError(f"{path}: dbutils.widgets.{node.func.attr} is not supported here.")
            first = node.args[0] if node.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                raise NotebookFormatError(f"{path}: a widget name must be a string literal "
                                          f"(line {cell.first_line + node.lineno - 1}).")
            names.add(first.value)
    return names


class Widgets:
    """``dbutils.widgets``: ``text``, ``dropdown`` and ``get``, with the test's values."""

    def __init__(self, values: Mapping[str, str]) -> None:
        for name, value in values.items():
            if not isinstance(value, str):
                raise TypeError(f"Widget values are strings on Databricks: {name}={value!r}")
        self._values = dict(values)
        self._defined: dict[str, str] = {}

    def _define(self, name: str) -> None:
        if name not in self._values:
            raise UnknownWidgetError(f"The notebook defines widget {name!r}; the test gives no value for it.")
        self._defined[name] = self._values[name]

    def text(self, name: str, defaultValue: str, label: str | None = None) -> None:  # noqa: N803
        self._define(name)

    def dropdown(self, name: str, defaultValue: str, choices: Iterable[str],  # noqa: N803
                 label: str | None = None) -> None:
        choices = list(choices)
        if defaultValue not in choices:
            raise ValueError(f"Widget {name!r}: default {defaultValue!r} is not one of {choices}")
        if self._values.get(name, defaultValue) not in choices:
            raise ValueError(f"Widget {name!r}: {self._values[name]!r} is not one of {choices}")
        self._define(name)

    def get(self, name: str) -> str:
        if name not in self._defined:
            raise UnknownWidgetError(f"Widget {name!r} is read before it is defined.")
        return self._defined[name]

    def unused(self) -> set[str]:
        """Names the test gave values for that the notebook never defined."""
        return set(self._values) - set(self._defined)


class Secrets:
    """``dbutils.secrets.get`` with the test's values, keyed by (scope, key)."""

    def __init__(self, values: Mapping[tuple[str, str], str]) -> None:
        self._values = dict(values)
        self.read: list[tuple[str, str]] = []

    def get(self, scope: str, key: str) -> str:
        if (scope, key) not in self._values:
            raise SecretNotFoundError(f"No secret {key!r} in scope {scope!r}.")
        self.read.append((scope, key))
        return self._values[(scope, key)]


class DBUtils:
    """The part of ``dbutils`` the notebooks may use; anything else is an AttributeError."""

    __slots__ = ("widgets", "secrets")

    def __init__(self, widgets: Widgets, secrets: Secrets) -> None:
        self.widgets = widgets
        self.secrets = secrets


class Display:
    """``display`` (and ``displayHTML``): records each object shown, Spark DataFrames converted
    to pandas."""

    def __init__(self) -> None:
        self.shown: list[Any] = []

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> None:
        self.shown.append(obj.toPandas() if hasattr(obj, "toPandas") else obj)


@dataclass
class Notebook:
    """A notebook file to execute on ``spark`` with the test's widget values and secrets.

    After :meth:`run` (also when a cell raised): ``displayed`` holds what was displayed,
    ``namespace`` the notebook's variables, ``cells_run`` the numbers of the cells that finished.
    """

    path: Path
    spark: Any
    widgets: Mapping[str, str]
    secrets: Mapping[tuple[str, str], str] = field(default_factory=dict)
    namespace: dict[str, Any] = field(init=False)
    cells_run: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.dbutils = DBUtils(Widgets(self.widgets), Secrets(self.secrets))
        self.display = Display()
        self.namespace = {"__name__": "__main__", "spark": self.spark, "dbutils": self.dbutils,
                          "display": self.display, "displayHTML": self.display}

    @property
    def displayed(self) -> list[Any]:
        return self.display.shown

    def run(self) -> Notebook:
        """Execute every code cell in order; a cell's error propagates with the file's line numbers."""
        for cell in parse_notebook(self.path):
            if cell.markdown:
                continue
            # padded so that tracebacks point at the notebook file's own lines
            code = compile("\n" * (cell.first_line - 1) + cell.source, str(self.path), "exec")
            exec(code, self.namespace)
            self.cells_run.append(cell.number)
        unused = self.dbutils.widgets.unused()
        if unused:
            raise UnknownWidgetError(f"The test gives values for widgets {sorted(unused)} that "
                                     f"{self.path.name} does not define.")
        return self
