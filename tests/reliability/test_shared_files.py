"""The helper client file and the token cache, written by parallel processes.

``helper client add`` run by many processes at once must lose no client (each
add re-reads the file under a lock and replaces it atomically); processes
refreshing the same token cache entry at once must leave one valid, private
entry that every one of them can read back, also when they start from a
damaged per-directory key that each of them would replace.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.world import ROOT, base_env

ADDS = 12
REVOKES = 4


def _kc(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "keycourier", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_parallel_client_adds_and_revokes_lose_nothing(tmp_path: Path) -> None:
    env = base_env(tmp_path / "home")
    store = tmp_path / "home" / ".local" / "share" / "keycourier" / "helper-clients.json"
    for n in range(REVOKES):  # clients that the parallel round revokes
        setup = _kc(env, "helper", "client", "add", f"old-{n}", "--profile", "ci")
        _, err = setup.communicate(timeout=60)
        assert setup.returncode == 0, err.decode()
    procs = [
        _kc(env, "helper", "client", "add", f"new-{n}", "--profile", "ci") for n in range(ADDS)
    ]
    procs += [_kc(env, "helper", "client", "revoke", f"old-{n}") for n in range(REVOKES)]
    keys = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        keys.extend(out.decode().split())
    assert len(keys) == ADDS
    listed = _kc(env, "helper", "client", "list", "--json")
    out, err = listed.communicate(timeout=60)
    assert listed.returncode == 0, err.decode()
    clients = {c["name"]: c for c in json.loads(out)}
    assert sorted(clients) == sorted(
        [f"new-{n}" for n in range(ADDS)] + [f"old-{n}" for n in range(REVOKES)]
    )
    assert all(clients[f"new-{n}"]["revoked_at"] is None for n in range(ADDS))
    assert all(clients[f"old-{n}"]["revoked_at"] for n in range(REVOKES))
    assert {k.split("_")[1] for k in keys} == {clients[f"new-{n}"]["id"] for n in range(ADDS)}
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert not [p.name for p in store.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("key_state", ["fresh", "damaged"])
def test_parallel_refreshes_leave_one_valid_cache_entry(tmp_path: Path, key_state: str) -> None:
    """Eight processes refresh one profile's entry in each of five cache directories."""
    directories = [tmp_path / f"tokens-{n}" for n in range(5)]
    for directory in directories:
        directory.mkdir(mode=0o700)
        if key_state == "damaged":  # ours but truncated: every writer wants to replace it
            key = directory / ".credentials-key"
            key.write_bytes(b"short")
            key.chmod(0o600)
    start = tmp_path / "start"
    writers, rounds = 8, 5
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.reliability.token_cache_writer",
                os.pathsep.join(map(str, directories)),
                str(n),
                str(writers),
                str(rounds),
                str(start),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(writers)
    ]
    start.touch()
    read_back = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        read_back.extend(out.decode().split())
    assert len(read_back) == writers * rounds * len(directories)
    # every read after a write found a whole token (its own or a later writer's)
    assert all(re.fullmatch(r"tok-[0-9]+-[0-9]+", t) for t in read_back), read_back
    for directory in directories:
        entries = sorted(p for p in directory.iterdir() if p.name.startswith("ci-"))
        assert len(entries) == 1, [p.name for p in entries]  # one key: one entry name
        doc = json.loads(entries[0].read_text())
        assert re.fullmatch(r"tok-[0-9]+-[0-9]+", doc["access_token"])
        assert stat.S_IMODE(entries[0].stat().st_mode) == 0o600
        assert len((directory / ".credentials-key").read_bytes()) == 32
        assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]
