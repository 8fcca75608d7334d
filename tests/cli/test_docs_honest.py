"""The README documents every command, environment variable and exit code that exists."""

from __future__ import annotations

import re
from pathlib import Path

import click

from keycourier.cli.main import COMMANDS, cli
from keycourier.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _walk(prefix: str, cmd: click.Command) -> list[tuple[str, click.Command]]:
    found = [(prefix, cmd)]
    if isinstance(cmd, click.Group):
        for sub, child in cmd.commands.items():
            found.extend(_walk(f"{prefix} {sub}", child))
    return found


def _all_commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(cli)
    found: list[tuple[str, click.Command]] = []
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        assert cmd is not None
        found.extend(_walk(f"keycourier {name}", cmd))
    return found


def _command_paths() -> list[str]:
    return [path for path, _ in _all_commands()]


def test_every_command_is_in_the_readme() -> None:
    missing = [p for p in _command_paths() if p not in README]
    assert missing == []


def test_every_command_has_help_with_an_example() -> None:
    lacking = [path for path, cmd in _all_commands() if "Example" not in (cmd.help or "")]
    assert lacking == []


def test_every_exit_code_is_in_the_readme() -> None:
    for code in ExitCode:
        assert re.search(rf"\|\s*{int(code)}\s*\|", README), f"exit code {int(code)} undocumented"


def test_every_environment_variable_is_in_the_readme() -> None:
    names: set[str] = set()
    for path in (ROOT / "src").rglob("*.py"):
        names.update(re.findall(r"[\"']((?:KEYCOURIER|VAULT)_[A-Z_]+)[\"']", path.read_text()))
    missing = sorted(n for n in names if n not in README)
    assert missing == []


def test_readme_names_no_command_that_does_not_exist() -> None:
    known = set(_command_paths())
    mentioned = re.findall(r"`(keycourier [a-z][a-z-]*)", README)
    assert mentioned, "the README shows no command at all"
    unknown = sorted({m for m in mentioned if m not in known})
    assert unknown == []


def test_every_variable_name_token_and_exec_set_is_documented() -> None:
    """The defaults of env_name (profile and helper paths) and the _EXPIRES_AT companion."""
    import inspect

    from keycourier._record import fields
    from keycourier.helper import formats
    from keycourier.helper.service import Obtained
    from keycourier.partner.profiles import Profile

    defaults = {
        f.default for cls in (Profile, Obtained) for f in fields(cls) if f.name == "env_name"
    }
    defaults.add(inspect.signature(formats.render).parameters["env_name"].default)
    suffixes = set(re.findall(r'f"\{(?:env_name|name)\}(_[A-Z_]+)"', inspect.getsource(formats)))
    assert suffixes == {"_EXPIRES_AT"}
    token_doc = (ROOT / "docs" / "token-helper.md").read_text()
    for text in (README, token_doc):
        for name in defaults:
            assert f"`{name}`" in text
        assert "`NAME_EXPIRES_AT`" in text
