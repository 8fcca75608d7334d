"""Dependencies point inward: the core never imports the outer layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "keycourier"
CORE = ["age", "bundle", "policy", "tlog", "errors.py", "redact.py"]
FORBIDDEN = (
    "click",
    "hvac",
    "requests",
    "sqlite_utils",
    "aiohttp",
    "keycourier.cli",
    "keycourier.ledger",
    "keycourier.helper",
    "keycourier.partner",
)


def _core_files() -> list[Path]:
    files: list[Path] = []
    for entry in CORE:
        path = SRC / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_core_module_imports_no_outer_layer(path: Path) -> None:
    bad = [n for n in _imports(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == [], f"{path.relative_to(SRC)} imports {bad}"


def test_the_walker_sees_imports() -> None:
    # Guard against a walker that silently finds nothing.
    assert "keycourier.errors" in _imports(SRC / "bundle" / "core.py")
