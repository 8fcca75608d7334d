"""Running keycourier as a subprocess for the provenance CLI tests: identities, a sealed
handover, a Vault environment."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

from tests.support import cli
from tests.support.openbao import BaoServer
from tests.support.random_text import ALNUM

PASS = "test passphrase 123"


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "KEYCOURIER_PASSPHRASE": PASS,
        "KEYCOURIER_LEDGER": str(cwd / "ledger.db"),
    }
    for var in ("VAULT_ADDR", "VAULT_TOKEN"):
        full.pop(var, None)
    full.update(env or {})
    return cli.kc(*args, env=full, cwd=cwd, timeout=120)


def vault_env(server: BaoServer) -> dict[str, str]:
    return {"VAULT_ADDR": server.addr, "VAULT_TOKEN": server.token}


def make_identities(tmp_path: Path, *names: str) -> dict[str, dict[str, str]]:
    for name in names:
        out = run("identity", "new", "-o", f"{name}.kcid", "--work-factor", "10", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    return {
        n: json.loads(run("identity", "show", f"{n}.kcid", "--json", cwd=tmp_path).stdout)
        for n in names
    }


def seal_args(tmp_path: Path, client_id: str, *recipients: str, out: str) -> list[str]:
    """`seal` arguments for a fresh production QuickBooks credential, by partner.kcid."""
    (tmp_path / "secret.txt").write_text("".join(secrets.choice(ALNUM) for _ in range(40)) + "\n")
    args = ["seal", "--platform", "quickbooks", "--client-id", client_id]
    args += ["--client-secret-file", "secret.txt", "--environment", "production"]
    args += ["--attested-by", "Test Lead", "--identity", "partner.kcid", "--partner", "Acme"]
    for r in recipients:
        args += ["-r", r]
    return [*args, "-o", out, "--json"]


def new_client_id() -> str:
    return "AB" + "".join(secrets.choice(ALNUM) for _ in range(48))


def seal_handover(tmp_path: Path, bao_dev: BaoServer, *receivers: str) -> dict[str, str]:
    """Identities (partner + receivers) and a bundle for the receivers (sealed event in Vault)."""
    pub = make_identities(tmp_path, "partner", *receivers)
    client_id = new_client_id()
    recipients = [pub[n]["recipient"] for n in receivers]
    sealed = run(
        *seal_args(tmp_path, client_id, *recipients, out="handover.kcb"),
        cwd=tmp_path,
        env={**vault_env(bao_dev), "KEYCOURIER_LEDGER": str(tmp_path / "sender.db")},
    )
    assert sealed.returncode == 0, sealed.stderr
    summary = json.loads(sealed.stdout)
    return {
        "bundle_id": summary["bundle_id"],
        "fingerprint": summary["fingerprint"],
        "partner_fpr": pub["partner"]["signing_fingerprint"],
        "client_id": client_id,
        **{f"{n}_fpr": pub[n]["signing_fingerprint"] for n in receivers},
    }
