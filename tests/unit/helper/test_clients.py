"""Client key store: shown once, stored hashed, 0600, constant-time checks, revocation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from keycourier.errors import ConfigError, UsageError
from keycourier.helper.clients import KEY_RE, ClientStore


def test_add_authenticate_revoke(tmp_path: Path) -> None:
    store = ClientStore(tmp_path / "data" / "clients.json")
    client, key = store.add("ci", ["ci", "other"], rate=5)
    assert KEY_RE.match(key.reveal())
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    text = store.path.read_text()
    assert key.reveal() not in text
    assert json.loads(text)["clients"][0]["key_sha256"] != key.reveal()
    found = store.authenticate(key.reveal())
    assert found is not None
    assert found.name == "ci"
    assert found.allows("other")
    assert not found.allows("prod")
    raw = key.reveal()
    assert store.authenticate(raw[:-1] + ("A" if raw[-1] != "A" else "B")) is None
    assert store.authenticate("kck_" + client.id + "_" + "x" * 43) is None
    assert store.authenticate("garbage") is None
    store.revoke("ci")
    store.refresh(max_age=0)
    assert store.authenticate(key.reveal()) is None
    assert store.clients()[0].revoked_at is not None


def test_names_scopes_and_duplicates(tmp_path: Path) -> None:
    store = ClientStore(tmp_path / "clients.json")
    with pytest.raises(UsageError):
        store.add("bad name", ["ci"])
    with pytest.raises(UsageError):
        store.add("ci", [])
    store.add("ci", ["*"])
    with pytest.raises(UsageError, match="exists"):
        store.add("ci", ["ci"])
    with pytest.raises(UsageError, match="no active client"):
        store.revoke("nobody")


def test_a_readable_store_is_refused(tmp_path: Path) -> None:
    store = ClientStore(tmp_path / "clients.json")
    store.add("ci", ["ci"])
    os.chmod(store.path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        ClientStore(store.path).clients()


def test_a_malformed_store_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    path.write_text('{"clients": [{"id": 1}]}')
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="malformed"):
        ClientStore(path).clients()
