"""The README documents every command, environment variable and exit code that exists."""

from __future__ import annotations

import re
from pathlib import Path

import click

from keycourier.cli.main import COMMANDS, cli
from keycourier.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _command_paths() -> list[str]:
    paths: list[str] = []
    ctx = click.Context(cli)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None
        paths.append(f"keycourier {name}")
        if isinstance(cmd, click.Group):
            paths.extend(f"keycourier {name} {sub}" for sub in cmd.commands)
    return paths


def test_every_command_is_in_the_readme() -> None:
    missing = [p for p in _command_paths() if p not in README]
    assert missing == []


def test_every_command_has_help_with_an_example() -> None:
    ctx = click.Context(cli)
    lacking: list[str | None] = []
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None
        cmds = [cmd, *(cmd.commands.values() if isinstance(cmd, click.Group) else [])]
        lacking.extend(c.name for c in cmds if "Example" not in (c.help or ""))
    assert lacking == []


def test_every_exit_code_is_in_the_readme() -> None:
    for code in ExitCode:
        assert re.search(rf"\|\s*{int(code)}\s*\|", README), f"exit code {int(code)} undocumented"


def test_every_environment_variable_is_in_the_readme() -> None:
    names: set[str] = set()
    for path in (ROOT / "src").rglob("*.py"):
        names.update(re.findall(r"\b((?:KEYCOURIER|VAULT)_[A-Z_]+)\b", path.read_text()))
    missing = sorted(n for n in names if n not in README)
    assert missing == []


def test_readme_names_no_command_that_does_not_exist() -> None:
    known = set(_command_paths())
    mentioned = set(re.findall(r"`(keycourier [a-z][a-z-]*(?: [a-z][a-z-]*)?)", README))
    unknown = []
    for m in mentioned:
        parts = m.split()
        if " ".join(parts[:2]) not in known and m not in known:
            unknown.append(m)
    assert unknown == []
