"""The partner and the platform as two organisations.

Two OpenBao servers, two ledgers, two identities (each with its own passphrase),
two HOMEs, and nothing shared but the files handed from one side to the other.
Every command runs as a real ``keycourier`` process.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from keycourier.cli.provenance_cmd import receipt_from_metadata
from tests.support.openbao import BaoServer, start_dev_server

KC = str(Path(sys.executable).with_name("keycourier"))
ENV_DROP = (
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "KEYCOURIER_CONFIG",
    "KEYCOURIER_LEDGER",
    "KEYCOURIER_POLICY",
    "KEYCOURIER_PASSPHRASE",
    "KEYCOURIER_HELPER_URL",
)


@dataclass
class Org:
    """One organisation: its HOME, its Vault, its identity; files go through ``work``."""

    name: str
    work: Path
    bao: BaoServer
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        home = self.work / f"home-{self.name}"
        home.mkdir(mode=0o700)
        env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
        env.update(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_CACHE_HOME=str(home / ".cache"),
            KEYCOURIER_PASSPHRASE=f"{self.name} passphrase {secrets.token_hex(4)}",
            VAULT_ADDR=self.bao.addr,
            VAULT_TOKEN=self.bao.token,
        )
        self.env = env

    def kc(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [KC, *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.work,
            check=False,
            timeout=120,
        )
        if expect is not None:
            assert out.returncode == expect, (args, out.returncode, out.stderr)
        return out

    def ledger_events(self) -> list[dict[str, object]]:
        out = self.kc("audit", "export", "--format", "jsonl").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def vault_paths(self) -> set[str]:
        found: set[str] = set()
        todo = [""]
        while todo:
            prefix = todo.pop()
            try:
                listed = json.loads(self.bao.bao("kv", "list", "-format=json", f"secret/{prefix}"))
            except RuntimeError:
                listed = []  # `bao kv list` fails on a folder that does not exist
            for name in listed:
                if name.endswith("/"):
                    todo.append(prefix + name)
                else:
                    found.add(prefix + name)
        return found


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BaoServer, BaoServer]]:
    partner = start_dev_server(tmp_path_factory.mktemp("bao-partner"))
    try:
        platform = start_dev_server(tmp_path_factory.mktemp("bao-platform"))
        try:
            for bao in (partner, platform):
                bao.bao("write", "secret/config", "cas_required=true")
            yield partner, platform
        finally:
            platform.stop()
    finally:
        partner.stop()


@pytest.fixture
def orgs(tmp_path: Path, servers: tuple[BaoServer, BaoServer]) -> tuple[Org, Org]:
    work = tmp_path / "shared-files"
    work.mkdir()
    return Org("partner", work, servers[0]), Org("platform", work, servers[1])


def _identities(partner: Org, platform: Org) -> tuple[dict[str, str], dict[str, str]]:
    partner.kc("identity", "new", "-o", "partner.kcid", "--work-factor", "12")
    platform.kc("identity", "new", "-o", "platform.kcid", "--work-factor", "12")
    pub_partner = json.loads(partner.kc("identity", "show", "partner.kcid", "--json").stdout)
    pub_platform = json.loads(platform.kc("identity", "show", "platform.kcid", "--json").stdout)
    return pub_partner, pub_platform


def _qbo_secret(work: Path, name: str) -> tuple[str, str]:
    alnum = string.ascii_letters + string.digits
    client_id = "AB" + "".join(secrets.choice(alnum) for _ in range(48))
    client_secret = "".join(secrets.choice(alnum) for _ in range(40))
    path = work / name
    path.write_text(client_secret + "\n")
    path.chmod(0o600)
    return client_id, client_secret


def _seal(partner: Org, recipient: str, client_id: str, secret_file: str, out: str) -> str:
    partner.kc(
        "seal", "--platform", "quickbooks", "--client-id", client_id,
        "--client-secret-file", secret_file, "--environment", "production",
        "--attested-by", "Jane Doe, CTO of Acme", "--partner", "Acme Ltd",
        "--identity", "partner.kcid", "-r", recipient, "--expires-in", "7d", "-o", out,
    )  # fmt: skip
    inspected = json.loads(partner.kc("inspect", out, "--json").stdout)
    return str(inspected["manifest"]["bundle_id"])


def test_handover_between_two_organisations(orgs: tuple[Org, Org]) -> None:
    partner, platform = orgs
    assert partner.bao.addr != platform.bao.addr
    pub_partner, pub_platform = _identities(partner, platform)
    client_id, client_secret = _qbo_secret(partner.work, "qbo-secret.txt")
    bundle_id = _seal(partner, pub_platform["recipient"], client_id, "qbo-secret.txt", "h.kcb")

    ingested = platform.kc(
        "ingest", "h.kcb", "--identity", "platform.kcid",
        "--trust", pub_partner["signing_fingerprint"], "--vault-path", "handed-over/acme/qbo",
        "--receipt", "h.kcr",
    )  # fmt: skip
    assert "warning" not in ingested.stderr, ingested.stderr

    # the credentials are in the platform's Vault only
    stored = json.loads(
        platform.bao.bao("kv", "get", "-format=json", "secret/handed-over/acme/qbo")
    )
    assert stored["data"]["data"]["client_secret"] == client_secret
    partner_paths, platform_paths = partner.vault_paths(), platform.vault_paths()
    assert "handed-over/acme/qbo" in platform_paths
    assert partner_paths  # the partner's provenance records, in its own Vault
    assert not any(p.startswith("handed-over/") for p in partner_paths)
    assert not partner_paths & platform_paths
    # each side's ledger holds its own story, and each verifies against its own Vault
    partner_types = [e["type"] for e in partner.ledger_events() if e["bundle_id"] == bundle_id]
    platform_types = [e["type"] for e in platform.ledger_events() if e["bundle_id"] == bundle_id]
    assert partner_types == ["sealed"]
    assert platform_types == ["opened", "ingested"]

    # the receipt closes the loop: the partner verifies it with nothing but files
    receipt_text = (partner.work / "h.kcr").read_text()
    assert "handed-over" not in receipt_text  # the path is a keyed digest by default
    assert client_secret not in receipt_text
    metadata = json.loads(
        platform.bao.bao("kv", "metadata", "get", "-format=json", "secret/handed-over/acme/qbo")
    )["data"]["custom_metadata"]
    assert receipt_from_metadata(metadata) == receipt_text.encode()
    verified = json.loads(
        partner.kc(
            "receipt", "verify", "h.kcr", "--bundle", "h.kcb",
            "--trust", pub_platform["signing_fingerprint"], "--json",
        ).stdout
    )  # fmt: skip
    assert verified["action"] == "ingested"
    assert verified["kv_version"] == 1
    partner_types = [e["type"] for e in partner.ledger_events() if e["bundle_id"] == bundle_id]
    assert partner_types == ["sealed", "receipt_verified"]
    story = partner.kc("audit", "show", bundle_id).stdout.strip().splitlines()
    assert story[-1].startswith(f"Received and stored by {pub_platform['signing_fingerprint']}")
    partner.kc("audit", "verify", "--vault")
    platform.kc("audit", "verify", "--vault")
    # the secret never appears in either side's ledger, Vault records, or output
    for org in (partner, platform):
        shown = org.kc("audit", "show", bundle_id)
        assert client_secret not in shown.stdout + shown.stderr
        assert client_secret not in json.dumps(org.ledger_events())
