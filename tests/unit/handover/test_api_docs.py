"""The scripts in docs/api.md run as printed, against the files they name, and do what the
text says: two bundles for two platforms, each opened only by its own platform."""

from __future__ import annotations

import os
import re
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest

from keycourier import api

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "api.md"
PASS = "api docs passphrase"
ALNUM = string.ascii_letters + string.digits


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_holds_the_two_scripts() -> None:
    blocks = python_blocks()
    assert len(blocks) == 3  # the import line, the partner's script, the platform's script
    assert "api.seal(" in blocks[1]
    assert "api.open_bundle(" in blocks[2]


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


def run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(cwd),
        "KEYCOURIER_PASSPHRASE": PASS,
        "KEYCOURIER_LEDGER": str(cwd / "partner-ledger.db"),
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
    _, seal_script, open_script = python_blocks()
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
    _, seal_script, _ = python_blocks()
    assert run(seal_script, folder).returncode == 0
    monite = api.read_identity(folder / "monite.kcid", api.Secret(PASS))
    request = api.OpenRequest(
        text=(folder / "handover-tesouro.kcb").read_bytes(),
        identity=monite,
        trusted=[(folder / "partner.fingerprint").read_text().strip()],
        policy=api.load_policy(None),
    )
    recorder = api.MemoryRecorder()
    with pytest.raises(api.IntegrityError) as caught:
        api.open_bundle(request, recorder=recorder)
    assert caught.value.exit_code == api.ExitCode.INTEGRITY
    assert recorder.events == []
