"""Output formats: json, env, credential-process, github heredoc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keycourier.errors import ConfigError, UsageError
from keycourier.helper.formats import Format, github_env_block, render, write_github_env
from keycourier.partner.tokens import Token
from keycourier.redact import Secret

TOKEN = Token(Secret("abc.def'ghi"), "Bearer", 3600, 1_700_000_000.0)


def test_json_and_credential_process() -> None:
    doc = json.loads(render(TOKEN, Format.JSON, now=1_700_000_600.0))
    assert doc == {
        "access_token": "abc.def'ghi",
        "token_type": "Bearer",
        "expires_in": 3000,
        "expires_at": "2023-11-14T23:13:20Z",
    }
    cp = json.loads(render(TOKEN, Format.CREDENTIAL_PROCESS, now=0))
    assert cp["Version"] == 1
    assert cp["Expiration"] == "2023-11-14T23:13:20Z"


def test_env_is_shell_quoted() -> None:
    out = render(TOKEN, Format.ENV, now=0, env_name="TOK")
    assert out.splitlines()[0] == "export TOK='abc.def'\"'\"'ghi'"
    with pytest.raises(UsageError):
        render(TOKEN, Format.ENV, now=0, env_name="1BAD")


def test_github_prints_only_the_mask_and_writes_a_heredoc(tmp_path: Path) -> None:
    assert render(TOKEN, Format.GITHUB, now=0) == "::add-mask::abc.def'ghi\n"
    gh = tmp_path / "env"
    write_github_env(TOKEN, "TOK", {"GITHUB_ENV": str(gh)})
    lines = gh.read_text().splitlines()
    assert lines[0].startswith("TOK<<ghadelimiter_")
    assert lines[1] == "abc.def'ghi"
    assert lines[2] == lines[0].split("<<")[1]
    with pytest.raises(ConfigError):
        write_github_env(TOKEN, "TOK", {})


def test_heredoc_delimiter_never_occurs_in_a_multiline_value() -> None:
    value = "line1\nghadelimiter_\nline3"
    block = github_env_block("X", value)
    delim = block.splitlines()[0].split("<<")[1]
    assert delim not in value
    assert block == f"X<<{delim}\n{value}\n{delim}\n"
