"""Output formats of ``keycourier token``.

* ``raw``: the token and a newline;
* ``json``: ``{"access_token", "token_type", "expires_in", "expires_at"}``;
* ``env``: ``export NAME='...'`` (shell-quoted), plus ``NAME_EXPIRES_AT``;
* ``github``: ``::add-mask::TOKEN`` on stdout (the runner hides the value from
  then on), and ``NAME<<DELIM`` / value / ``DELIM`` appended to
  ``$GITHUB_ENV`` with a random delimiter that is checked not to occur in the
  value (the multi-line-safe form). Nothing else prints the token;
* ``credential-process``: ``{"Version": 1, "AccessToken", "TokenType",
  "Expiration"}`` with Expiration in ISO 8601 UTC, the shape AWS's
  ``credential_process`` contract uses.
"""

from __future__ import annotations

import enum
import json
import os
import shlex
from collections.abc import Mapping

from keycourier.errors import ConfigError, UsageError
from keycourier.partner.profiles import ENV_NAME_RE
from keycourier.partner.tokens import Token, json_payload


class Format(enum.StrEnum):
    RAW = "raw"
    JSON = "json"
    ENV = "env"
    GITHUB = "github"
    CREDENTIAL_PROCESS = "credential-process"


def check_env_name(name: str) -> str:
    if not ENV_NAME_RE.match(name):
        raise UsageError(f"{name[:64]!r} is not a valid environment variable name")
    return name


def render(token: Token, fmt: Format, *, now: float, env_name: str = "PARTNER_TOKEN") -> str:
    """The text for stdout. For ``github`` the $GITHUB_ENV write is separate."""
    if fmt is Format.RAW:
        return token.access_token.reveal() + "\n"
    if fmt is Format.JSON:
        return json.dumps(json_payload(token, now=now), sort_keys=True) + "\n"
    if fmt is Format.ENV:
        name = check_env_name(env_name)
        return (
            f"export {name}={shlex.quote(token.access_token.reveal())}\n"
            f"export {name}_EXPIRES_AT={shlex.quote(token.expires_at_iso())}\n"
        )
    if fmt is Format.CREDENTIAL_PROCESS:
        doc = {
            "Version": 1,
            "AccessToken": token.access_token.reveal(),
            "TokenType": token.token_type,
            "Expiration": token.expires_at_iso(),
        }
        return json.dumps(doc) + "\n"
    if fmt is Format.GITHUB:
        # The mask command is the only place the token reaches stdout.
        return f"::add-mask::{token.access_token.reveal()}\n"
    raise UsageError(f"unknown format {fmt}")  # pragma: no cover


def github_env_block(name: str, value: str) -> str:
    """``NAME<<DELIM\\nvalue\\nDELIM\\n`` with a delimiter that cannot occur in ``value``."""
    import secrets  # only for the github format (it brings random with it)

    check_env_name(name)
    while True:
        delim = f"ghadelimiter_{secrets.token_hex(16)}"
        if delim not in value:
            return f"{name}<<{delim}\n{value}\n{delim}\n"


def write_github_env(token: Token, env_name: str, env: Mapping[str, str]) -> str:
    """Append the token (and its expiry) to ``$GITHUB_ENV``; return the file path."""
    path = env.get("GITHUB_ENV")
    if not path:
        raise ConfigError(
            "--format github needs GITHUB_ENV (it is set inside GitHub Actions)",
            hints=["outside Actions, use --format env or --format json"],
        )
    text = github_env_block(env_name, token.access_token.reveal()) + github_env_block(
        f"{env_name}_EXPIRES_AT", token.expires_at_iso()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot append to GITHUB_ENV ({exc.strerror})") from None
    return path
