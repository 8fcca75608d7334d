"""Input validation uses full matches: no pattern in src/ is anchored with ``$``.

``$`` also matches before a final newline, so ``re.match(r"^kc1:[0-9a-f]{32}$", v)``
accepts ``"kc1:...\\n"``. Patterns end in ``\\Z`` or are used with ``re.fullmatch``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "keycourier"
RE_FUNCS = {"compile", "match", "fullmatch", "search"}


def _dollar_anchored(pattern: str) -> bool:
    # an unescaped "$" (not "\$", not inside a character class) anywhere in the pattern
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        elif c == "$" and not in_class:
            return True
        i += 1
    return False


def _is_re_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "re"
        and node.func.attr in RE_FUNCS
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def _patterns(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.lineno, node.args[0].value)  # type: ignore[attr-defined]
        for node in ast.walk(tree)
        if _is_re_call(node)
    ]


def test_the_checker_sees_a_dollar_anchor() -> None:
    assert _dollar_anchored(r"^kc1:[0-9a-f]{32}$")
    assert not _dollar_anchored(r"^kc1:[0-9a-f]{32}\Z")
    assert not _dollar_anchored(r"\$\{.*\}")
    assert not _dollar_anchored(r"[$]")
    assert re.match(r"^kc1:[0-9a-f]{32}$", "kc1:" + "0" * 32 + "\n")  # why it matters


def test_no_regex_in_src_is_anchored_with_dollar() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{line}: {pattern}"
        for path in sorted(SRC.rglob("*.py"))
        for line, pattern in _patterns(path)
        if _dollar_anchored(pattern)
    ]
    assert offenders == []
