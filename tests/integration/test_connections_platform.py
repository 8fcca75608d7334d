"""Connections with the token helper's real token flow: the composed platform stand-in.

The partner token comes from ``keycourier.helper.service.ProfileTokenSource`` (its
0600 file cache, minted at the token stand-in's ``/auth/token`` or
``/openid/connect/token``), and the connection routes accept only tokens the
token stand-in issued.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keycourier import config
from keycourier.config import Settings
from keycourier.errors import ConfigError
from keycourier.helper.service import ProfileTokenSource
from keycourier.partner.connections.client import ConnectionClient
from keycourier.partner.connections.model import ConnectionStatus, endpoint_for_profile
from keycourier.partner.connections.workflow import (
    WaitPolicy,
    create_connection,
    wait_for_connection,
)
from tests.support.connections_standin import RunningPlatform, start_platform

ENTITY = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
CLIENT_ID = str(uuid.UUID(int=0x1234))
CLIENT_SECRET = "s3cr3t-" + "x" * 24


@pytest.fixture
def platform() -> Iterator[RunningPlatform]:
    running = start_platform({CLIENT_ID: CLIENT_SECRET})
    try:
        yield running
    finally:
        running.stop()


def settings_for(platform: RunningPlatform, tmp_path: Path, dialect: str) -> Settings:
    base = platform.monite_base if dialect == "monite" else platform.root
    version = "2024-05-25" if dialect == "monite" else "2025-06-23"
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[profiles.p]
dialect = "{dialect}"
base_url = "{base}"
environment = "sandbox"
version = "{version}"
client_id_env = "KC_TEST_CLIENT_ID"
client_secret_env = "KC_TEST_CLIENT_SECRET"
"""
    )
    env = {
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "KC_TEST_CLIENT_ID": CLIENT_ID,
        "KC_TEST_CLIENT_SECRET": CLIENT_SECRET,
    }
    return config.load(config_path=cfg, ledger_path=tmp_path / "ledger.db", env=env)


@pytest.mark.parametrize("dialect", ["monite", "tesouro"])
def test_flow_with_helper_tokens_and_refresh(
    platform: RunningPlatform, tmp_path: Path, dialect: str
) -> None:
    settings = settings_for(platform, tmp_path, dialect)
    endpoint = endpoint_for_profile(settings, "p")
    assert endpoint.base_url == platform.monite_base  # Tesouro: root + /v1
    tokens = ProfileTokenSource(settings, "p")
    client = ConnectionClient(endpoint, tokens)
    conn = create_connection(client, ENTITY).connection
    assert len(platform.auth.issued) == 1
    platform.connections.authorize(conn.id, "xero")
    # A second client (another CLI run) reuses the cached token: no new mint.
    again = ConnectionClient(endpoint, ProfileTokenSource(settings, "p"))
    assert again.get(ENTITY, conn.id).status is ConnectionStatus.CONNECTED
    assert len(platform.auth.issued) == 1
    # The platform forgets the token: one 401, one refresh, one retry.
    with platform.auth.lock:
        platform.auth.issued.clear()
    done = wait_for_connection(client, ENTITY, conn.id, timeout=5, policy=WaitPolicy(first=0.05))
    assert done.connection.platform == "xero"
    assert len(platform.auth.issued) == 1  # a fresh one was minted
    # And a new process after the refresh uses the new cached token.
    third = ConnectionClient(endpoint, ProfileTokenSource(settings, "p"))
    assert third.get(ENTITY, conn.id).platform == "xero"
    assert len(platform.auth.issued) == 1


def test_tesouro_expired_token_400_is_refreshed(platform: RunningPlatform, tmp_path: Path) -> None:
    settings = settings_for(platform, tmp_path, "tesouro")
    client = ConnectionClient(
        endpoint_for_profile(settings, "p"), ProfileTokenSource(settings, "p")
    )
    assert client.list(ENTITY) == ()
    # Expire every issued token on the platform's clock.
    with platform.auth.lock:
        for token, issued in list(platform.auth.issued.items()):
            platform.auth.issued[token] = type(issued)(
                issued.token, issued.client_id, issued.dialect, issued.issued_at, 0.0
            )
    assert client.list(ENTITY) == ()
    statuses = [r.path for r in platform.connections.requests]
    assert len(statuses) == 3  # 200, 400 expired, 200


def test_oauth2_profile_cannot_make_connections(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        """
[profiles.o]
dialect = "oauth2"
base_url = "https://auth.example.com"
environment = "sandbox"
client_id_env = "A"
client_secret_env = "B"
"""
    )
    settings = config.load(config_path=cfg, env={"HOME": str(tmp_path)})
    with pytest.raises(ConfigError, match="connections support the dialects monite, tesouro"):
        endpoint_for_profile(settings, "o")
