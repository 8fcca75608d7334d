"""Every click command is parse options -> call the library -> render: its body stays short.

The statements of a command's body are counted with everything nested in it (an ``if``
and what it guards are two); the docstring is not a statement that does anything and is not
counted. A command that needs more has a workflow in it that belongs in the library
(``keycourier.handover`` and the other workflow packages) or a renderer beside it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parents[2] / "src" / "keycourier" / "cli"
LIMIT = 20  # statements: "about 15 lines" with room for an option check or two


def _is_command(node: ast.FunctionDef) -> bool:
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in {"command", "group"}:
            return True
    return False


def _statements(node: ast.FunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return sum(1 for top in body for n in ast.walk(top) if isinstance(n, ast.stmt))


def commands() -> list[tuple[str, int]]:
    return [
        (f"{path.name}:{node.name}", _statements(node))
        for path in sorted(CLI.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.FunctionDef) and _is_command(node)
    ]


def test_the_commands_are_found() -> None:
    names = {name for name, _ in commands()}
    assert len(names) > 40
    assert {"bundle_cmd.py:seal", "provenance_cmd.py:ingest", "main.py:cli"} <= names


@pytest.mark.parametrize(("name", "size"), commands(), ids=[n for n, _ in commands()])
def test_command_body_is_short(name: str, size: int) -> None:
    assert size < LIMIT, f"{name} has {size} statements (limit {LIMIT - 1})"


def test_the_counter_counts_nested_statements() -> None:
    tree = ast.parse(
        "@click.command()\ndef c():\n    '''doc'''\n    if x:\n        y()\n    z = 1\n"
    )
    node = tree.body[0]
    assert isinstance(node, ast.FunctionDef)
    assert _is_command(node)
    assert _statements(node) == 3
