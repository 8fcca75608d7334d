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


def _units() -> set[str]:
    """keycourier's top-level packages and modules (``ledger``, ``config``, ...)."""
    return {
        p.name.removesuffix(".py")
        for p in SRC.iterdir()
        if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")
    }


def _unit_graph() -> dict[str, set[str]]:
    """unit -> the other units it imports, counting every import: module level, inside a
    function, under TYPE_CHECKING, and ``from keycourier import x`` as unit ``x``."""
    units = _units()
    graph: dict[str, set[str]] = {u: set() for u in units}
    for path in SRC.rglob("*.py"):
        me = path.relative_to(SRC).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                parts = name.split(".")
                if parts[0] == "keycourier" and len(parts) > 1 and parts[1] in units - {me}:
                    graph[me].add(parts[1])
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path start -> ... -> start, if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycle_between_packages() -> None:
    """The structure reads from the imports: no package or top-level module reaches itself
    (partner profiles live in keycourier.partner; the helper serves them)."""
    graph = _unit_graph()
    cycles = [c for u in sorted(graph) if (c := _cycle_through(graph, u)) is not None]
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle_through({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    assert _cycle_through({"a": {"b"}, "b": set()}, "a") is None
    graph = _unit_graph()
    assert "partner" in graph["helper"]  # the walker sees real imports
    assert "receipt" in graph["cli"]  # and `from keycourier import receipt` in a function


# Top to bottom: a unit may import units of its own layer or of a lower one, never of a higher
# one (docs/architecture.md, "Layers"). Every top-level package and module is in one layer.
LAYERS: list[tuple[str, set[str]]] = [
    ("entry points", {"__main__", "api"}),
    ("command line", {"cli"}),
    ("workflows", {"handover", "receipt", "audit", "helper", "partner"}),
    ("records", {"ledger", "tlog"}),
    ("formats", {"bundle", "age", "policy"}),
    ("adapters", {"vault", "urls", "files", "config"}),
    ("base", {"errors", "redact", "_record", "durations", "__init__"}),
]


def _rank() -> dict[str, int]:
    return {unit: len(LAYERS) - i for i, (_, units) in enumerate(LAYERS) for unit in units}


def test_every_unit_has_a_layer() -> None:
    placed = [unit for _, units in LAYERS for unit in units]
    assert len(placed) == len(set(placed)), "a unit is in two layers"
    assert _units() == set(placed), "place the new unit in LAYERS and docs/architecture.md"


def test_no_import_points_to_a_higher_layer() -> None:
    rank = _rank()
    upward = [
        f"{unit} -> {other}"
        for unit, others in sorted(_unit_graph().items())
        for other in sorted(others)
        if rank[other] > rank[unit]
    ]
    assert upward == [], "imports into a higher layer: " + ", ".join(upward)


def test_the_layer_check_sees_the_workflows_above_the_records() -> None:
    rank = _rank()
    assert rank["cli"] > rank["handover"] > rank["ledger"] > rank["bundle"] > rank["vault"]
    assert "handover" in _unit_graph()["cli"]
    assert "vault" in _unit_graph()["ledger"]


TESTS = SRC.parents[1] / "tests"


def test_no_test_module_is_imported_by_another() -> None:
    """What tests share lives in tests/support (or a conftest's fixtures), so a test module
    can be read, moved or deleted on its own."""
    offenders = []
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                last = name.rsplit(".", 1)[-1]
                if name.startswith("tests.") and (last.startswith("test_") or last == "conftest"):
                    offenders.append(f"{path.relative_to(TESTS)} imports {name}")
    assert offenders == [], "; ".join(offenders)


# The click-free fast paths of cli/entry.py: each import there is paid by `token`, `exec`,
# `inspect`, `audit verify` or `age` on every run, so these modules import on first use.
FAST_PATH_MODULES = {"cli/entry.py", "cli/age_ops.py", "cli/helper_ops.py", "cli/bundle_ops.py",
                     "cli/provenance_ops.py", "__main__.py"}  # fmt: skip


def _said_lazy(lines: list[str], lineno: int) -> bool:
    """Whether a ``lazy:`` comment is on the import's line, or above the block of imports
    (and blank lines) the import ends."""
    if "lazy:" in lines[lineno - 1]:
        return True
    i = lineno - 2
    while i >= 0:
        text = lines[i].strip()
        if text.startswith("#"):
            return "lazy:" in text
        if text and not text.startswith(("from ", "import ", ")")) and not text.endswith(","):
            return False
        i -= 1
    return False


def _function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of each import of a keycourier module made inside a function without
    a ``lazy:`` comment on its line or the line above saying why."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source, filename=str(path))):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                module = node.module
            elif isinstance(node, ast.Import):
                module = node.names[0].name
            else:
                continue
            if module.split(".")[0] != "keycourier":
                continue
            if not _said_lazy(lines, node.lineno):
                found.append((node.lineno, module))
    return found


def test_keycouriers_own_modules_are_imported_at_the_top() -> None:
    """The structure reads from the top of each file. An import inside a function is for
    start-up time only: on a fast path, or with a ``# lazy: <why>`` comment."""
    hidden = [
        f"{path.relative_to(SRC)}:{line} {module}"
        for path in sorted(SRC.rglob("*.py"))
        if str(path.relative_to(SRC)) not in FAST_PATH_MODULES
        for line, module in _function_level_imports(path)
    ]
    assert hidden == [], "import at the top, or say why not with '# lazy:': " + ", ".join(hidden)


def test_the_hidden_import_finder_finds_them(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from keycourier import vault\n\n"
        "def g():\n    # lazy: costs 10 ms\n    from keycourier.policy import probe\n"
        "    from keycourier.policy import (\n        rules,\n    )\n\n    import keycourier.age\n"
        "def h():\n    import json\n    x = 1\n    from keycourier import bundle\n"
    )
    assert _function_level_imports(module) == [(2, "keycourier"), (15, "keycourier")]


def test_no_command_module_imports_another() -> None:
    """What several commands share lives in a module of its own (cli/common.py,
    cli/handover_args.py, cli/identities.py, cli/receipt_files.py, cli/record.py, the *_ops
    modules), so one
    command's module can change without another noticing."""
    offenders = [
        f"{path.name} imports {module}"
        for path in sorted((SRC / "cli").glob("*_cmd.py"))
        for module in _imports(path)
        if module.startswith("keycourier.cli.") and module.endswith("_cmd")
    ]
    assert offenders == [], "; ".join(offenders)
