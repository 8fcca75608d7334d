"""Two organisations' identities and a credential in one folder, for CLI tests that
seal and open bundles through real subprocesses."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support import cli
from tests.support.random_text import ALNUM

PASS = "test passphrase 123"


REPO = str(Path(__file__).resolve().parents[2])


def run(
    *args: str, cwd: Path, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = {**os.environ, "KEYCOURIER_PASSPHRASE": PASS, **(env or {})}
    return cli.kc_bytes(*args, env=full_env, cwd=cwd, stdin=stdin, timeout=120)


@dataclass
class World:
    dir: Path
    client_id: str
    secret: str
    platform_recipient: str
    partner_fpr: str
    platform_fpr: str

    def seal(self, *extra: str, out: str = "handover.kcb") -> subprocess.CompletedProcess[bytes]:
        return run(*self.seal_args(*extra, out=out), cwd=self.dir)

    def seal_args(self, *extra: str, out: str = "handover.kcb") -> list[str]:
        return [
            "seal",
            "--platform",
            "quickbooks",
            "--client-id",
            self.client_id,
            "--client-secret-file",
            "secret.txt",
            "--environment",
            "production",
            "--attested-by",
            "Test Lead",
            "--identity",
            "partner.kcid",
            "-r",
            self.platform_recipient,
            "--partner",
            "Acme",
            "-o",
            out,
            *extra,
        ]

    def open(self, name: str = "handover.kcb", *extra: str) -> subprocess.CompletedProcess[bytes]:
        return run(*self.open_args(name, *extra), cwd=self.dir)

    def open_args(self, name: str = "handover.kcb", *extra: str) -> list[str]:
        return [
            "open",
            name,
            "--identity",
            "platform.kcid",
            "--trust",
            self.partner_fpr,
            "-o",
            "creds.json",
            "--json",
            *extra,
        ]


def make_world(tmp_path: Path) -> World:
    for name in ("partner", "platform"):
        out = run(
            "identity", "new", "-o", f"{name}.kcid", "--work-factor", "10", "--json", cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr
    pub = {
        n: json.loads(run("identity", "show", f"{n}.kcid", "--json", cwd=tmp_path).stdout)
        for n in ("partner", "platform")
    }
    client_id = "AB" + "".join(secrets.choice(ALNUM) for _ in range(48))
    secret = "".join(secrets.choice(ALNUM) for _ in range(40))
    (tmp_path / "secret.txt").write_text(secret + "\n")
    return World(
        tmp_path,
        client_id,
        secret,
        pub["platform"]["recipient"],
        pub["partner"]["signing_fingerprint"],
        pub["platform"]["signing_fingerprint"],
    )
