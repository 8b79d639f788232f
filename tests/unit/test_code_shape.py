"""The package keeps the shape its maintainers agreed on: no module over 450 lines, no function
body over 60 (from its first statement after the docstring to its end)."""

from __future__ import annotations

import ast
from pathlib import Path

import mlflow_spark_tools

PACKAGE = Path(mlflow_spark_tools.__file__).parent
MAX_MODULE_LINES = 450
MAX_BODY_LINES = 60


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = function.body
    first = body[0]
    has_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
        first.value.value, str)
    start = body[1].lineno if has_docstring and len(body) > 1 else first.lineno
    return (function.end_lineno or start) - start + 1


def test_no_module_over_450_lines_and_no_function_body_over_60():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        where = path.relative_to(PACKAGE.parent)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{where}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and body_lines(node) > MAX_BODY_LINES:
                too_long.append(f"{where}:{node.lineno} {node.name}: a body of {body_lines(node)} lines")
    assert not too_long, "split these by responsibility:\n" + "\n".join(too_long)


def test_the_measure_counts_a_body_without_its_docstring():
    tree = ast.parse('def f():\n    """doc\n    more"""\n    a = 1\n    return a\n')
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef) and body_lines(function) == 2
