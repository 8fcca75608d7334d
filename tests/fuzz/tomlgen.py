"""A small TOML writer and value strategies for the config and policy fuzz tests."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

# Surrogates cannot be written as UTF-8; everything else, controls included, can.
toml_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
toml_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | toml_text
    | st.sampled_from(["", "reject", "warn", "0s", "1h", "30d", "-1d", "~", "~nosuchuser/x", "."])
)
# Shallow on purpose: a recursive strategy costs several ms per example to
# generate, ten times the parse it feeds; one level of nesting reaches every
# type check of the config and policy schemas.
toml_values = (
    toml_scalars
    | st.lists(toml_scalars, max_size=3)
    | st.dictionaries(toml_text, toml_scalars, max_size=2)
)


def _string(value: str) -> str:
    out = json.dumps(value, ensure_ascii=False)
    return out.replace("\x7f", "\\u007f")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_string(k)} = {_scalar(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value).__name__)


def dumps(doc: dict[str, Any]) -> str:
    """Write ``doc``: plain keys first, then one ``[table]`` per nested dict."""
    lines: list[str] = []

    def table(path: list[str], node: dict[str, Any]) -> None:
        subtables = {k: v for k, v in node.items() if isinstance(v, dict) and v}
        if path:
            lines.append("[" + ".".join(_string(p) for p in path) + "]")
        for key, value in node.items():
            if key not in subtables:
                lines.append(f"{_string(key)} = {_scalar(value)}")
        for key, value in subtables.items():
            table([*path, key], value)

    table([], doc)
    return "\n".join(lines) + "\n"


def leaves(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of ``doc`` (tables and values)."""
    out: list[tuple[str, ...]] = []
    for key, value in doc.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out.extend(leaves(value, (*prefix, key)))
    return out


@st.composite
def edited(draw: st.DrawFn, base: dict[str, Any], *, max_edits: int = 3) -> dict[str, Any]:
    """``base`` with one to ``max_edits`` keys replaced, removed or added."""
    doc: dict[str, Any] = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, max_edits))):
        paths = leaves(doc)
        path = draw(st.sampled_from(paths)) if paths else ("x",)
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if op == "replace":
            parent[path[-1]] = draw(toml_values)
        elif op == "delete":
            parent.pop(path[-1], None)
        else:
            parent[draw(toml_text)] = draw(toml_values)
    return doc
