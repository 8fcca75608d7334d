"""scripts/demo.py prints each command it runs so that it can be pasted into a shell."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("keycourier_demo", ROOT / "scripts" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_printed_command_splits_back_into_the_same_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [
        "seal",
        "--attested-by",
        "Jane Doe, CTO",
        "--partner",
        "Acme's Ltd",
        "--",
        "sh",
        "-c",
        'echo "the child sees: $MONITE_TOKEN"',
    ]
    load_demo().show_cmd("partner", args)
    line = capsys.readouterr().out
    prompt, _, command = line.rstrip("\n").partition("$ ")
    assert prompt == "  [partner]"
    assert shlex.split(command) == ["keycourier", *args]
