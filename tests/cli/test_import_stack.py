"""The everyday commands start without the packages they do not need.

Each case runs the real command in a subprocess under ``python -X importtime -m
keycourier`` (the console script's entry, fast path included) and reads the
modules it imported. hvac, requests, aiohttp and sqlite_utils cost tens of
milliseconds each at start-up and belong to the adapters that talk to Vault,
the token endpoint or create a ledger; a cached ``token``, ``exec``,
``inspect``, ``audit verify``, ``policy show`` and ``--version`` need none of
them. The ``age`` commands are covered in test_entrypoint.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keycourier import bundle, config
from keycourier.bundle import Credentials, PolicyStamp
from keycourier.helper.credentials import load_credentials
from keycourier.helper.filecache import FileCache, cache_dir
from keycourier.ledger.interface import Event, EventType
from keycourier.ledger.recorder import open_recorder
from keycourier.partner.profiles import get_profile
from keycourier.partner.tokens import Token
from keycourier.redact import Secret

NETWORK_AND_DB = ("hvac", "requests", "aiohttp", "sqlite_utils", "urllib3")
# the token endpoint's client (asyncio), the command tree (click) and the crypto libraries
TOKEN_PATH_FREE = (*NETWORK_AND_DB, "asyncio", "click", "nacl", "cryptography", "sqlite3")
TOKEN = "cached-token-" + "x" * 32


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A config with an env-credential profile and its token cached, a bundle, a ledger."""
    base = tmp_path_factory.mktemp("stack")
    (base / "config.toml").write_text(
        "[profiles.ci]\n"
        'dialect = "monite"\n'
        'base_url = "https://api.sandbox.monite.com/v1"\n'
        'environment = "sandbox"\n'
        'version = "2024-05-25"\n'
        'client_id_env = "MONITE_CLIENT_ID"\n'
        'client_secret_env = "MONITE_CLIENT_SECRET"\n'
    )
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VAULT_", "KEYCOURIER_"))
    }
    env.update(
        HOME=str(base),
        KEYCOURIER_CONFIG=str(base / "config.toml"),
        KEYCOURIER_LEDGER=str(base / "ledger.db"),
        XDG_RUNTIME_DIR=str(runtime),
        MONITE_CLIENT_ID="0c6f0a52-3f7e-4a53-9d55-0d8c2b1e9a77",
        MONITE_CLIENT_SECRET="stack-secret-9a8b7c6d5e4f3a2b1c0d",
    )
    settings = config.load(env=env)
    profile = get_profile(settings, "ci")
    creds = load_credentials(profile, settings)
    FileCache(cache_dir(env)).write(
        profile, creds, Token(Secret(TOKEN), "Bearer", 3600, time.time())
    )

    sender = bundle.KeycourierIdentity.generate()
    sealed = bundle.seal(
        Credentials("quickbooks", "AB" + "c" * 48, Secret("d" * 40)),
        sender=sender,
        recipients=[bundle.KeycourierIdentity.generate().public().recipient],
        policy=PolicyStamp("sha256:" + "0" * 64, "pass"),
        lifetime=timedelta(days=1),
        environment="production",
    )
    (base / "handover.kcb").write_bytes(sealed.text)

    with open_recorder(settings) as recorder:
        for n in range(3):
            recorder.record(
                Event(
                    type=EventType.SEALED,
                    at=datetime.now(UTC),
                    actor="kc1:0123456789abcdef0123456789abcdef",
                    bundle_id=f"bundle-{n}",
                    fingerprint="kc1:fedcba9876543210fedcba9876543210",
                    data={"platform": "quickbooks"},
                )
            )
    return base, env


def imports_of(
    world: tuple[Path, dict[str, str]], *args: str
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    base, env = world
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keycourier", *args],
        cwd=base,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    names = {
        line.rsplit("|", 1)[-1].strip()
        for line in out.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "keycourier" in names  # the walker sees the imports
    return out, {name.split(".")[0] for name in names} | names


def test_cached_token_imports_no_network_database_click_or_crypto(
    world: tuple[Path, dict[str, str]],
) -> None:
    out, names = imports_of(world, "token", "--profile", "ci")
    assert out.returncode == 0, out.stderr
    assert out.stdout == TOKEN + "\n"  # served from the cache file
    assert sorted(names & set(TOKEN_PATH_FREE)) == []
    # nor the child-process machinery that only exec needs
    assert sorted(names & {"subprocess", "threading"}) == []


def test_exec_imports_no_network_database_click_or_crypto(
    world: tuple[Path, dict[str, str]],
) -> None:
    out, names = imports_of(
        world, "exec", "--profile", "ci", "--", sys.executable, "-c", "print('ran')"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "ran"
    assert sorted(names & set(TOKEN_PATH_FREE)) == []
    # the child is started with os.posix_spawn and its output pumped by the main thread
    assert sorted(names & {"subprocess", "threading"}) == []


def test_inspect_imports_no_network_or_database_stack(world: tuple[Path, dict[str, str]]) -> None:
    out, names = imports_of(world, "inspect", "handover.kcb")
    assert out.returncode == 0, out.stderr
    assert "signature:    valid" in out.stdout
    assert sorted(names & {*NETWORK_AND_DB, "asyncio", "sqlite3"}) == []
    # the packaged policy file is not read, so neither is its loader; manifest times are
    # read without strptime (its first use imports _strptime and sets up the locale)
    assert sorted(names & {"importlib.resources", "_strptime"}) == []
    # nothing is decrypted, so no age engine (cryptography): the payload's age header is
    # read for its structure only and the signature checked with libsodium (PyNaCl); the
    # plain form is click-free, sealing's handover policy is not needed, and bundle IDs are
    # checked without the uuid module (which imports platform)
    assert "nacl" in names
    unneeded = {"cryptography", "keycourier.age._format", "click", "keycourier.policy", "uuid"}
    assert sorted(names & unneeded) == []


def test_inspect_json_imports_no_crypto_engine_or_click(
    world: tuple[Path, dict[str, str]],
) -> None:
    out, names = imports_of(world, "inspect", "--json", "handover.kcb")
    assert out.returncode == 0, out.stderr
    assert '"signature_valid": true' in out.stdout
    assert sorted(names & {"cryptography", "click", "keycourier.policy"}) == []


def test_audit_verify_reads_the_ledger_with_stdlib_sqlite3(
    world: tuple[Path, dict[str, str]],
) -> None:
    out, names = imports_of(world, "audit", "verify")
    assert out.returncode == 0, out.stderr
    assert "result:       OK" in out.stdout
    assert "events:       3" in out.stdout
    assert "sqlite3" in names
    assert sorted(names & {*NETWORK_AND_DB, "asyncio", "cryptography"}) == []
    # neither click (the fast path), the bundle commands, the handover policy, nor what only
    # creating a ledger uses
    unneeded = {"click", "keycourier.cli.bundle_cmd", "keycourier.policy", "secrets"}
    assert sorted(names & unneeded) == []


def test_policy_show_imports_no_network_database_or_crypto(
    world: tuple[Path, dict[str, str]],
) -> None:
    out, names = imports_of(world, "policy", "show")
    assert out.returncode == 0, out.stderr
    assert sorted(names & {*NETWORK_AND_DB, "asyncio", "sqlite3", "nacl", "cryptography"}) == []


def test_version_imports_nothing_but_keycourier(world: tuple[Path, dict[str, str]]) -> None:
    out, names = imports_of(world, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "keycourier, version 0.1.0\n"
    assert sorted(names & {*TOKEN_PATH_FREE, "keycourier.config"}) == []
