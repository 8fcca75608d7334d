"""The scripts in docs/api.md run as printed, against the files they name, and do what the
text says: two bundles for two platforms, each opened only by its own platform."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import hvac
import pytest

from keycourier import api
from tests.support.handover import nothing_denied
from tests.support.openbao import BaoServer
from tests.support.random_text import ALNUM

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "api.md"
PASS = "api docs passphrase"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_holds_the_three_scripts() -> None:
    blocks = python_blocks()
    assert len(blocks) == 4  # the import line, the partner's, the two platforms' scripts
    assert "api.seal(" in blocks[1]
    assert "api.open_bundle(" in blocks[2]
    assert "api.ingest(" in blocks[3]


def command_table() -> dict[str, str]:
    """docs/api.md's "Every command, as a function": command name -> its Python column."""
    section = DOC.read_text().split("## Every command, as a function", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`[^|]*`) \| (.*) \|$", section, flags=re.M)
    return {name: python for names, python in rows for name in re.findall(r"`([^`]+)`", names)}


def test_every_command_has_its_row_in_the_api_table() -> None:
    from keycourier.cli.main import COMMANDS

    assert set(command_table()) == set(COMMANDS)


def test_every_api_name_the_table_uses_is_exported() -> None:
    named = {n for python in command_table().values() for n in re.findall(r"api\.(\w+)", python)}
    assert named, "the walker found no api names"
    assert sorted(named - set(api.__all__)) == []
    assert all(hasattr(api, name) for name in api.__all__)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The files the scripts name: three identities, the recipients, the credential."""
    for name in ("partner", "monite", "tesouro"):
        ident = api.KeycourierIdentity.generate()
        (tmp_path / f"{name}.kcid").write_bytes(ident.to_file(api.Secret(PASS), work_factor=10))
        (tmp_path / f"{name}.recipient").write_text(ident.public().recipient + "\n")
        (tmp_path / f"{name}.fingerprint").write_text(ident.public().signing_fingerprint + "\n")
    (tmp_path / "client-id.txt").write_text(
        "AB" + "".join(secrets.choice(ALNUM) for _ in range(48)) + "\n"
    )
    (tmp_path / "secret.txt").write_text("".join(secrets.choice(ALNUM) for _ in range(40)))
    return tmp_path


def run(
    code: str, cwd: Path, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(cwd),
        "KEYCOURIER_PASSPHRASE": PASS,
        "KEYCOURIER_LEDGER": str(cwd / "partner-ledger.db"),
        **(extra or {}),
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_scripts_run_as_printed(folder: Path) -> None:
    _, seal_script, open_script, _ = python_blocks()
    sealed = run(seal_script, folder)
    assert sealed.returncode == 0, sealed.stderr
    secret = (folder / "secret.txt").read_text()
    client_id = (folder / "client-id.txt").read_text().strip()
    for name in ("monite", "tesouro"):
        bundle = folder / f"handover-{name}.kcb"
        assert bundle.stat().st_mode & 0o777 == 0o600
        assert f"{name}: sealed bundle " in sealed.stdout
        inspected = api.inspect_bundle(bundle.read_bytes())
        assert list(inspected.manifest.recipients) == [
            (folder / f"{name}.recipient").read_text().strip()
        ]
        assert inspected.manifest.partner == "Acme Corp"
    # both `sealed` events are in the partner's ledger (from the environment)
    settings = api.Settings.local(folder / "partner-ledger.db")
    with api.open_recorder(settings) as recorder:
        kinds = [s.event.type for s in recorder.ledger.iter_all()]
    assert kinds.count(api.EventType.SEALED) == 2

    opened = run(open_script, folder)
    assert opened.returncode == 0, opened.stderr
    assert f"Acme Corp quickbooks {client_id}" in opened.stdout
    assert "recorded as event #1" in opened.stdout
    assert secret not in opened.stdout + opened.stderr
    # opened once: the same script again is refused (exit code 7, already opened)
    again = run(open_script, folder)
    assert again.returncode == 1
    assert "exit code 7" in again.stderr
    assert "already opened" in again.stderr


def test_a_platform_cannot_open_the_other_platforms_bundle(folder: Path) -> None:
    _, seal_script, _, _ = python_blocks()
    assert run(seal_script, folder).returncode == 0
    monite = api.read_identity(folder / "monite.kcid", api.Secret(PASS))
    request = api.OpenRequest(
        text=(folder / "handover-tesouro.kcb").read_bytes(),
        identity=monite,
        trusted=[(folder / "partner.fingerprint").read_text().strip()],
        policy=api.load_policy(None),
        denied=nothing_denied,
    )
    recorder = api.MemoryRecorder()
    with pytest.raises(api.IntegrityError) as caught:
        api.open_bundle(request, recorder=recorder)
    assert caught.value.exit_code == api.ExitCode.INTEGRITY
    assert recorder.events == []


def test_the_ingest_script_stores_the_credentials_in_vault(
    folder: Path, bao_dev: BaoServer
) -> None:
    _, seal_script, _, ingest_script = python_blocks()
    assert run(seal_script, folder).returncode == 0
    mount = "api-" + secrets.token_hex(6)
    client = hvac.Client(url=bao_dev.addr, token=bao_dev.token)
    client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    tesouro_env = {
        "KEYCOURIER_LEDGER": str(folder / "tesouro-ledger.db"),
        "VAULT_ADDR": bao_dev.addr,
        "VAULT_TOKEN": bao_dev.token,
        "KEYCOURIER_VAULT_MOUNT": mount,
    }
    done = run(ingest_script, folder, tesouro_env)
    assert done.returncode == 0, done.stderr
    assert f"stored at {mount}/handed-over/acme/quickbooks, version 1" in done.stdout
    secret = (folder / "secret.txt").read_text()
    assert secret not in done.stdout + done.stderr
    stored = client.secrets.kv.v2.read_secret_version(
        path="handed-over/acme/quickbooks", mount_point=mount, raise_on_deleted_version=True
    )["data"]
    assert stored["data"]["client_secret"] == secret
    assert stored["data"]["client_id"] == (folder / "client-id.txt").read_text().strip()
    meta = client.secrets.kv.v2.read_secret_metadata(
        path="handed-over/acme/quickbooks", mount_point=mount
    )["data"]["custom_metadata"]
    assert meta["partner"] == "Acme Corp"
    # run again: the bundle was opened, so it is refused (exit code 7), nothing rewritten
    again = run(ingest_script, folder, tesouro_env)
    assert again.returncode == 1
    assert "already opened" in again.stderr
