"""Profile validation: every malformed table is a ConfigError naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from keycourier.errors import ConfigError, ExitCode
from keycourier.partner.profiles import (
    ClientAuth,
    Dialect,
    EnvCredentials,
    Environment,
    VaultCredentials,
    host_environment,
    parse_profile,
)
from tests.support.profiles import BASE


def _with(**changes: Any) -> dict[str, Any]:
    table = dict(BASE)
    for key, value in changes.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def test_a_valid_monite_profile() -> None:
    p = parse_profile("ci", BASE, "cfg.toml")
    assert p.dialect is Dialect.MONITE
    assert p.environment is Environment.SANDBOX
    assert p.token_url == "https://api.sandbox.monite.com/v1/auth/token"
    assert p.version_header == "x-monite-version"
    assert p.credentials == EnvCredentials("MONITE_CLIENT_ID", "MONITE_CLIENT_SECRET")
    assert p.refresh_fraction == 0.8


def test_tesouro_and_oauth2_defaults() -> None:
    t = parse_profile(
        "t",
        _with(dialect="tesouro", base_url="https://api.sandbox.tesouro.com", version="2025-06-23"),
        "cfg",
    )
    assert t.token_url == "https://api.sandbox.tesouro.com/openid/connect/token"
    assert t.version_header == "x-tesouro-version"
    o = parse_profile(
        "o",
        _with(
            dialect="oauth2",
            base_url="http://127.0.0.1:9999",
            version=None,
            auth_method="client_secret_post",
            scope="read write",
        ),
        "cfg",
    )
    assert o.client_auth is ClientAuth.POST
    assert o.version_header is None
    assert o.scope == "read write"


def test_vault_source() -> None:
    p = parse_profile(
        "v",
        _with(
            client_id_env=None, client_secret_env=None, vault_path="partners/acme", vault_mount="kv"
        ),
        "cfg",
    )
    assert p.credentials == VaultCredentials("partners/acme", "kv")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"dialect": "soap"}, "profiles.ci.dialect"),
        ({"environment": "staging"}, "profiles.ci.environment"),
        ({"base_url": "ftp://x/"}, "profiles.ci.base_url"),
        ({"base_url": "http://api.sandbox.monite.com/v1"}, "profiles.ci.base_url"),
        ({"base_url": "https://user:pw@api.sandbox.monite.com/v1"}, "profiles.ci.base_url"),
        ({"version": "May 2024"}, "profiles.ci.version"),
        ({"version": None}, "profiles.ci.version"),
        ({"version": 20240525}, "profiles.ci.version"),
        ({"client_secret": "hunter2"}, "profiles.ci.client_secret"),
        ({"colour": "blue"}, "colour"),
        ({"client_id_env": "1BAD"}, "profiles.ci.client_id_env"),
        ({"client_secret_env": None}, "profiles.ci.client_secret_env"),
        ({"vault_path": "a/../b"}, "profiles.ci"),
        ({"refresh_at": 1.5}, "profiles.ci.refresh_at"),
        ({"max_retries": 99}, "profiles.ci.max_retries"),
        ({"auth_method": "client_secret_post"}, "profiles.ci.auth_method"),
        ({"token_path": "auth/token"}, "profiles.ci.token_path"),
        ({"env_name": "A-B"}, "profiles.ci.env_name"),
    ],
)
def test_malformed_tables_name_the_key(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_profile("ci", _with(**changes), "cfg.toml")
    assert named in info.value.message
    assert info.value.exit_code is ExitCode.CONFIG
    assert "hunter2" not in info.value.message


def test_no_credential_source() -> None:
    with pytest.raises(ConfigError, match="no credential source"):
        parse_profile("ci", _with(client_id_env=None, client_secret_env=None), "cfg")


def test_production_profile_refuses_a_sandbox_url_and_the_reverse() -> None:
    with pytest.raises(ConfigError, match="production profile refuses the sandbox host"):
        parse_profile("p", _with(environment="production"), "cfg")
    with pytest.raises(ConfigError, match="sandbox profile refuses the production host"):
        parse_profile("s", _with(base_url="https://api.monite.com/v1"), "cfg")
    with pytest.raises(ConfigError, match="sandbox profile refuses"):
        parse_profile(
            "s2",
            _with(dialect="tesouro", base_url="https://api.tesouro.com", version="2025-06-23"),
            "cfg",
        )
    ok = parse_profile(
        "p", _with(environment="production", base_url="https://us.api.monite.com/v1"), "c"
    )
    assert ok.environment is Environment.PRODUCTION


@pytest.mark.parametrize(
    ("host", "env"),
    [
        ("api.sandbox.monite.com", Environment.SANDBOX),
        ("api.dev.monite.com", Environment.SANDBOX),
        ("api.monite.com", Environment.PRODUCTION),
        ("us.api.monite.com", Environment.PRODUCTION),
        ("api.tesouro.com", Environment.PRODUCTION),
        ("auth.example.com", None),
        ("127.0.0.1", None),
    ],
)
def test_host_environment(host: str, env: Environment | None) -> None:
    assert host_environment(host) is env
