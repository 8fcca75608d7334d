"""Profiles whose credentials live in Vault, and Vault-token auth on the helper (real OpenBao)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest

from tests.support.helper_server import add_client, call, kc, start_helper
from tests.support.openbao import BaoServer
from tests.support.platform_standin import RunningStandin, StandinState, start_standin

CLIENT_ID = "7a1e2b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b"
CLIENT_SECRET = "vault-held-secret-1a2b3c4d5e6f7a8b"


@pytest.fixture
def standin() -> Iterator[RunningStandin]:
    running = start_standin(StandinState(clients={CLIENT_ID: CLIENT_SECRET}))
    try:
        yield running
    finally:
        running.stop()


def _setup(
    tmp_path: Path, bao: BaoServer, standin: RunningStandin, secret: str, helper_table: str = ""
) -> dict[str, str]:
    path = f"kc-helper-test/{uuid.uuid4().hex}"
    client = hvac.Client(url=bao.addr, token=bao.token)
    client.secrets.kv.v2.create_or_update_secret(
        path=path, secret={"client_id": CLIENT_ID, "client_secret": secret}, mount_point="secret"
    )
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[profiles.vaulted]
dialect = "monite"
base_url = "{standin.url}/v1"
environment = "sandbox"
version = "2024-05-25"
vault_path = "{path}"
{helper_table}
"""
    )
    env = bao.env()
    env.update(KEYCOURIER_CONFIG=str(cfg), KEYCOURIER_LEDGER=str(tmp_path / "ledger.db"))
    return env


def test_credentials_from_vault_kv(
    tmp_path: Path, bao_dev: BaoServer, standin: RunningStandin
) -> None:
    env = _setup(tmp_path, bao_dev, standin, CLIENT_SECRET)
    r = kc(env, "token", "--profile", "vaulted", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert standin.state.is_valid(json.loads(r.stdout)["access_token"])
    assert CLIENT_SECRET not in r.stderr


def test_wrong_secret_in_vault_names_the_vault_source(
    tmp_path: Path, bao_dev: BaoServer, standin: RunningStandin
) -> None:
    env = _setup(tmp_path, bao_dev, standin, "stale-secret-in-vault-000000")
    r = kc(env, "token", "--profile", "vaulted")
    assert r.returncode == 5
    assert "profile vaulted" in r.stderr
    assert "Vault KV secret/kc-helper-test/" in r.stderr
    assert "stale-secret-in-vault-000000" not in r.stderr


def test_missing_vault_secret_is_a_config_error(
    tmp_path: Path, bao_dev: BaoServer, standin: RunningStandin
) -> None:
    env = _setup(tmp_path, bao_dev, standin, CLIENT_SECRET)
    cfg = Path(env["KEYCOURIER_CONFIG"])
    cfg.write_text(
        cfg.read_text().replace('vault_path = "kc-helper-test/', 'vault_path = "kc-helper-nothing/')
    )
    r = kc(env, "token", "--profile", "vaulted")
    assert r.returncode == 3
    assert "no such secret" in r.stderr


def test_helper_accepts_vault_tokens_with_the_configured_policy(
    tmp_path: Path, bao_dev: BaoServer, standin: RunningStandin
) -> None:
    env = _setup(
        tmp_path, bao_dev, standin, CLIENT_SECRET, '[helper]\nvault_policy = "kc-token-helper"\n'
    )
    admin = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    admin.sys.create_or_update_policy(
        name="kc-token-helper", policy='path "auth/token/lookup-self" { capabilities = ["read"] }'
    )
    good = admin.auth.token.create(policies=["kc-token-helper"], ttl="10m")["auth"]["client_token"]
    other = admin.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
    h = start_helper(env, tmp_path)
    try:
        body = {"profile": "vaulted"}
        status, _, data = call(h.url, "/v1/token", body=body, headers={"X-Vault-Token": good})
        assert status == 200, data
        assert standin.state.is_valid(json.loads(data)["access_token"])
        assert call(h.url, "/v1/token", body=body, headers={"X-Vault-Token": other})[0] == 401
        assert call(h.url, "/v1/token", body=body, headers={"X-Vault-Token": "s.bogus"})[0] == 401
        key = add_client(env, "ci", "--profile", "vaulted")
        assert call(h.url, "/v1/token", key=key, body=body)[0] == 200
        # made-up tokens cannot turn into a flood of lookup-self calls
        codes = [
            call(h.url, "/v1/token", body=body, headers={"X-Vault-Token": f"s.bogus{i}"})
            for i in range(80)
        ]
        statuses = {c[0] for c in codes}
        assert statuses <= {401, 429}
        assert 429 in statuses
        assert all("Retry-After" in c[1] for c in codes if c[0] == 429)
        # cached good tokens and client keys are not affected
        assert call(h.url, "/v1/token", body=body, headers={"X-Vault-Token": good})[0] == 200
        assert call(h.url, "/v1/token", key=key, body=body)[0] == 200
    finally:
        err, code = h.stop()
    assert code == 0, err


def test_a_cached_token_reads_vault_without_hvac_or_requests(
    tmp_path: Path, bao_dev: BaoServer, standin: RunningStandin
) -> None:
    """With token auth the credentials are read with one http.client GET: a cached token
    needs neither hvac nor requests (most of the command's start-up), nor aiohttp."""
    env = _setup(tmp_path, bao_dev, standin, CLIENT_SECRET)
    env["XDG_RUNTIME_DIR"] = ""
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    first = kc(env, "token", "--profile", "vaulted")  # mints and caches
    assert first.returncode == 0, first.stderr
    calls = standin.state.token_calls
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keycourier", "token", "--profile", "vaulted"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == first.stdout  # the cached token
    assert standin.state.token_calls == calls
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in out.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "keycourier" in imported
    assert sorted(imported & {"hvac", "requests", "aiohttp", "asyncio", "click"}) == []
