"""A throw-away keycourier installation for the reliability tests: HOME, identities, secret."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import cli
from tests.support.random_text import ALNUM as ALNUM

ROOT = Path(__file__).resolve().parents[2]

PASS = "reliability passphrase 42"
_DROP = ("VAULT_", "KEYCOURIER_", "BAO_")


@dataclass
class World:
    dir: Path
    home: Path
    env: dict[str, str]
    client_id: str
    secret: str  # the sentinel: a valid-format QuickBooks client secret, random
    platform_recipient: str = ""
    partner_fpr: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def sentinel(self) -> bytes:
        return self.secret.encode()

    @property
    def ledger(self) -> Path:
        return Path(self.env["KEYCOURIER_LEDGER"])

    def seal_args(self, out: str = "handover.kcb", *extra: str) -> list[str]:
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


def kc(
    world: World,
    *args: str,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    return cli.kc_bytes(
        *args, env={**world.env, **(env or {})}, cwd=world.dir, stdin=stdin, timeout=timeout
    )


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP)}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        KEYCOURIER_LEDGER=str(home / ".local" / "share" / "keycourier" / "ledger.db"),
        KEYCOURIER_PASSPHRASE=PASS,
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def make_world(tmp_path: Path, *, identities: bool = True) -> World:
    home = tmp_path / "kc-home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    client_id = "AB" + "".join(secrets.choice(ALNUM) for _ in range(48))
    secret = "".join(secrets.choice(ALNUM) for _ in range(40))
    secret_file = work / "secret.txt"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    world = World(work, home, base_env(home), client_id, secret)
    if identities:
        for name in ("partner", "platform"):
            r = kc(world, "identity", "new", "-o", f"{name}.kcid", "--work-factor", "10")
            assert r.returncode == 0, r.stderr
        pub = {
            n: json.loads(kc(world, "identity", "show", f"{n}.kcid", "--json").stdout)
            for n in ("partner", "platform")
        }
        world.platform_recipient = pub["platform"]["recipient"]
        world.partner_fpr = pub["partner"]["signing_fingerprint"]
    return world
