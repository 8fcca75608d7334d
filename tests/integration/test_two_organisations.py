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
from typing import Any

import pytest

from keycourier.cli.receipt_files import receipt_from_metadata
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

    def ledger_events(self) -> list[dict[str, Any]]:
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
    platform.kc("receipt", "get", "--vault-path", "handed-over/acme/qbo", "-o", "again.kcr")
    assert (platform.work / "again.kcr").read_text() == receipt_text
    empty = platform.kc("receipt", "get", "--vault-path", "handed-over/acme/none", expect=2)
    assert "holds no receipt" in empty.stderr
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


def _kv_get(org: Org, path: str, version: int) -> dict[str, str]:
    out = org.bao.bao("kv", "get", "-format=json", f"-version={version}", f"secret/{path}")
    data: dict[str, str] = json.loads(out)["data"]["data"]
    return data


def test_rotation_between_two_organisations(orgs: tuple[Org, Org]) -> None:
    """The partner rotates the secret; the platform ingests the rotation as version 2 at the
    same path, retires the old bundle, and says so in its receipt."""
    partner, platform = orgs
    pub_partner, pub_platform = _identities(partner, platform)
    pin_partner = ["--trust", pub_partner["signing_fingerprint"]]
    pin_platform = ["--trust", pub_platform["signing_fingerprint"]]
    client_id, _ = _qbo_secret(partner.work, "old-secret.txt")
    old_id = _seal(partner, pub_platform["recipient"], client_id, "old-secret.txt", "old.kcb")
    path = "handed-over/rotation/qbo"  # the Vault servers serve the whole module
    platform.kc(
        "ingest", "old.kcb", "--identity", "platform.kcid", *pin_partner,
        "--vault-path", path, "--receipt", "old.kcr",
    )  # fmt: skip

    _, new_secret = _qbo_secret(partner.work, "new-secret.txt")
    rotated = partner.kc(
        "rotate", "old.kcb", "--client-id", client_id, "--client-secret-file", "new-secret.txt",
        "--attested-by", "Jane Doe, CTO of Acme", "--identity", "partner.kcid",
        "--receipt", "old.kcr", *pin_platform, "-o", "new.kcb", "--json",
    )  # fmt: skip
    new_id = json.loads(rotated.stdout)["bundle_id"]
    manifest = json.loads(partner.kc("inspect", "new.kcb", "--json").stdout)["manifest"]
    assert manifest["supersedes"] == old_id
    assert manifest["partner"] == "Acme Ltd"
    assert manifest["platform"] == "quickbooks"

    platform.kc(
        "ingest", "new.kcb", "--identity", "platform.kcid", *pin_partner,
        "--vault-path", path, "--receipt", "new.kcr",
    )  # fmt: skip
    assert _kv_get(platform, path, 2)["client_secret"] == new_secret
    platform_events = platform.ledger_events()
    retired = [e for e in platform_events if e["type"] == "superseded"]
    assert [(e["bundle_id"], e["data"]["superseded_by"]) for e in retired] == [(old_id, new_id)]
    assert retired[0]["data"]["replaced_kv_version"] == 1
    assert retired[0]["data"]["kv_version"] == 2

    # the receipt says which version replaced which; the old receipt is no receipt of this one
    verified = json.loads(
        partner.kc(
            "receipt", "verify", "new.kcr", "--bundle", "new.kcb", *pin_platform, "--json"
        ).stdout
    )
    assert verified["supersedes"] == {"bundle_id": old_id, "kv_version": 1}
    assert verified["kv_version"] == 2
    replay = partner.kc(
        "receipt", "verify", "old.kcr", "--bundle", "new.kcb", *pin_platform, expect=7
    )
    assert "earlier handover" in replay.stderr

    # the superseded bundle is refused, unless asked for
    refused = platform.kc(
        "open", "old.kcb", "--identity", "platform.kcid", *pin_partner, "-o", "c.json", expect=7
    )
    assert f"superseded by bundle {new_id}" in refused.stderr
    platform.kc(
        "open", "old.kcb", "--identity", "platform.kcid", *pin_partner, "-o", "c.json",
        "--allow-superseded", "--allow-reopen",
    )  # fmt: skip

    # both sides tell the same story from their side
    story = partner.kc("audit", "show", new_id).stdout
    assert (
        story.strip()
        .splitlines()[-1]
        .startswith(f"Received and stored by {pub_platform['signing_fingerprint']}")
    )
    assert "superseded" in platform.kc("audit", "show", old_id).stdout
    due = json.loads(platform.kc("audit", "stale", "--older-than", "0m", "--json").stdout)
    assert [(d["vault_path"], d["kv_version"], d["bundle_id"]) for d in due] == [
        (f"secret/{path}", 2, new_id)
    ]
    assert json.loads(platform.kc("audit", "stale", "--json").stdout) == []
    partner.kc("audit", "verify", "--vault")
    platform.kc("audit", "verify", "--vault")


def test_rotations_that_do_not_fit_are_refused(orgs: tuple[Org, Org]) -> None:
    """Exit 7 for a rotation from another sender, to another path, for another partner, or
    of a bundle never ingested; nothing is opened or written."""
    partner, platform = orgs
    pub_partner, pub_platform = _identities(partner, platform)
    partner.kc("identity", "new", "-o", "mallory.kcid", "--work-factor", "12")
    mallory = json.loads(partner.kc("identity", "show", "mallory.kcid", "--json").stdout)
    # the platform also trusts another partner: a leaked bundle id is all an attacker needs
    trust = [
        "--trust",
        pub_partner["signing_fingerprint"],
        "--trust",
        mallory["signing_fingerprint"],
    ]
    client_id, _ = _qbo_secret(partner.work, "s1.txt")
    old_id = _seal(partner, pub_platform["recipient"], client_id, "s1.txt", "old.kcb")
    path = "handed-over/refusals/qbo"
    platform.kc("ingest", "old.kcb", "--identity", "platform.kcid", *trust, "--vault-path", path)

    def seal_rotation(identity: str, out: str, *extra: str) -> None:
        cid, _ = _qbo_secret(partner.work, f"{out}.secret")
        partner.kc(
            "seal", "--platform", "quickbooks", "--client-id", cid,
            "--client-secret-file", f"{out}.secret", "--environment", "production",
            "--attested-by", "Someone", "--identity", identity,
            "-r", pub_platform["recipient"], "--supersedes", old_id, "-o", out, *extra,
        )  # fmt: skip

    seal_rotation("mallory.kcid", "forged.kcb", "--partner", "Acme Ltd")
    seal_rotation("partner.kcid", "other-partner.kcb", "--partner", "Other Co")
    seal_rotation("partner.kcid", "good.kcb", "--partner", "Acme Ltd")
    cases = [
        ("forged.kcb", path, "a rotation must come from the same sender"),
        ("other-partner.kcb", path, "supersedes was for quickbooks / Acme Ltd"),
        ("good.kcb", "handed-over/refusals/elsewhere", "must go to the same path"),
    ]
    for bundle, where, words in cases:
        out = platform.kc(
            "ingest", bundle, "--identity", "platform.kcid", *trust, "--vault-path", where,
            expect=7,
        )  # fmt: skip
        assert words in out.stderr, (bundle, out.stderr)
    never = _seal(partner, pub_platform["recipient"], client_id, "s1.txt", "never.kcb")
    cid, _ = _qbo_secret(partner.work, "s2.txt")
    partner.kc(
        "seal", "--platform", "quickbooks", "--client-id", cid, "--client-secret-file", "s2.txt",
        "--environment", "production", "--attested-by", "Someone", "--identity", "partner.kcid",
        "--partner", "Acme Ltd", "-r", pub_platform["recipient"], "--supersedes", never,
        "-o", "orphan.kcb",
    )  # fmt: skip
    out = platform.kc(
        "ingest", "orphan.kcb", "--identity", "platform.kcid", *trust, "--vault-path", path,
        expect=7,
    )  # fmt: skip
    assert "never ingested here" in out.stderr
    types = [e["type"] for e in platform.ledger_events()]
    assert types == ["opened", "ingested"]  # the refusals opened nothing
    meta = json.loads(platform.bao.bao("kv", "metadata", "get", "-format=json", f"secret/{path}"))
    assert meta["data"]["current_version"] == 1


def test_an_occupied_path_is_not_written_over(orgs: tuple[Org, Org]) -> None:
    """A path belongs to the sender, platform and partner whose credentials it holds: another
    trusted sender's bundle (naming no bundle it supersedes), or a write keycourier cannot
    account for, is refused with exit 7 before anything is opened, unless --allow-overwrite."""
    partner, platform = orgs
    pub_partner, pub_platform = _identities(partner, platform)
    partner.kc("identity", "new", "-o", "mallory.kcid", "--work-factor", "12")
    mallory = json.loads(partner.kc("identity", "show", "mallory.kcid", "--json").stdout)
    trust = ["--trust", pub_partner["signing_fingerprint"]]
    trust += ["--trust", mallory["signing_fingerprint"]]
    client_id, _ = _qbo_secret(partner.work, "o1.txt")
    old_id = _seal(partner, pub_platform["recipient"], client_id, "o1.txt", "o1.kcb")
    path = "handed-over/occupied/qbo"

    def ingest(bundle: str, where: str = path, *extra: str, expect: int = 0) -> str:
        out = platform.kc(
            "ingest", bundle, "--identity", "platform.kcid", *trust, "--vault-path", where,
            *extra, expect=expect,
        )  # fmt: skip
        return out.stderr

    def version(where: str = path) -> int:
        meta = platform.bao.bao("kv", "metadata", "get", "-format=json", f"secret/{where}")
        return int(json.loads(meta)["data"]["current_version"])

    ingest("o1.kcb")
    # the same sender may hand the same partner's credentials over again (v2)
    _seal(partner, pub_platform["recipient"], client_id, "o1.txt", "o2.kcb")
    ingest("o2.kcb")
    replaced = [e for e in platform.ledger_events() if e["type"] == "ingested"][-1]["data"]
    assert replaced["replaced"]["kv_version"] == 1
    assert replaced["replaced"]["bundle_id"] == old_id
    assert replaced["replaced"]["overwrite"] is False

    # another trusted sender, same partner name, no --supersedes: refused, nothing opened
    mallory_id, _ = _qbo_secret(partner.work, "m.txt")
    partner.kc(
        "seal", "--platform", "quickbooks", "--client-id", mallory_id,
        "--client-secret-file", "m.txt", "--environment", "production",
        "--attested-by", "Someone", "--partner", "Acme Ltd", "--identity", "mallory.kcid",
        "-r", pub_platform["recipient"], "-o", "m.kcb",
    )  # fmt: skip
    before = len(platform.ledger_events())
    words = ingest("m.kcb", expect=7)
    assert f"sealed by {pub_partner['signing_fingerprint']}" in words, words
    assert "--allow-overwrite" in words
    assert len(platform.ledger_events()) == before
    assert version() == 2

    # a write keycourier did not make is not written over either, whatever its metadata says
    manual = "secret/handed-over/occupied/manual"
    platform.bao.bao("kv", "put", "-cas=0", manual, "x=1")
    assert "did not record storing" in ingest("o1.kcb", "handed-over/occupied/manual", expect=7)
    platform.bao.bao(
        "kv", "metadata", "put", f"-custom-metadata=sealed_by={pub_partner['signing_fingerprint']}",
        "-custom-metadata=platform=quickbooks", "-custom-metadata=partner=Acme Ltd", manual,
    )  # fmt: skip
    assert "did not record storing" in ingest("o1.kcb", "handed-over/occupied/manual", expect=7)

    # asked for explicitly: written, with a warning and what it replaced on record
    words = ingest("m.kcb", path, "--allow-overwrite")
    assert "--allow-overwrite: replacing version 2" in words
    assert version() == 3
    last = [e for e in platform.ledger_events() if e["type"] == "ingested"][-1]["data"]
    assert last["replaced"]["overwrite"] is True
    assert last["replaced"]["sealed_by"] == pub_partner["signing_fingerprint"]

    # the partner's rotation of its first bundle no longer replaces what it stored: refused
    partner.kc(
        "seal", "--platform", "quickbooks", "--client-id", client_id,
        "--client-secret-file", "o1.txt", "--environment", "production",
        "--attested-by", "Jane Doe", "--partner", "Acme Ltd", "--identity", "partner.kcid",
        "-r", pub_platform["recipient"], "--supersedes", old_id, "-o", "rot.kcb",
    )  # fmt: skip
    assert "is at version 3, not the version 1" in ingest("rot.kcb", expect=7)
    assert version() == 3
    # forced, it says which version it really replaced, everywhere
    ingest("rot.kcb", path, "--allow-overwrite", "--receipt", "rot.kcr", "--receipt-shows-path")
    events = platform.ledger_events()
    ingested = [e for e in events if e["type"] == "ingested"][-1]["data"]
    assert ingested["supersedes"] == {"bundle_id": old_id, "replaced_kv_version": 3}
    assert ingested["replaced"]["overwrite"] is True
    assert ingested["replaced"]["sealed_by"] == mallory["signing_fingerprint"]
    retired = [e for e in events if e["type"] == "superseded"][-1]["data"]
    assert (retired["replaced_kv_version"], retired["kv_version"]) == (3, 4)
    shown = json.loads(platform.kc("receipt", "inspect", "rot.kcr", "--json").stdout)
    assert shown["receipt"]["vault"]["supersedes"]["kv_version"] == 3


def test_stored_credentials_are_recorded_when_their_metadata_cannot_be_written(
    orgs: tuple[Org, Org],
) -> None:
    """Once the credentials are written, the `ingested` event is recorded whatever happens
    to the path's metadata, so a later ingest knows who stored them."""
    partner, platform = orgs
    pub_partner, pub_platform = _identities(partner, platform)
    policy = platform.work / "no-metadata.hcl"
    policy.write_text(
        'path "*" { capabilities = ["create", "read", "update", "delete", "list"] }\n'
        'path "secret/metadata/handed-over/*" { capabilities = ["read", "list"] }\n'
    )
    platform.bao.bao("policy", "write", "no-metadata", str(policy))
    created = platform.bao.bao("token", "create", "-policy=no-metadata", "-format=json")
    token = json.loads(created)["auth"]["client_token"]
    client_id, _ = _qbo_secret(partner.work, "nm.txt")
    _seal(partner, pub_platform["recipient"], client_id, "nm.txt", "nm1.kcb")
    _seal(partner, pub_platform["recipient"], client_id, "nm.txt", "nm2.kcb")
    path = "handed-over/no-metadata/qbo"
    args = ["--identity", "platform.kcid", "--trust", pub_partner["signing_fingerprint"]]
    root = platform.env["VAULT_TOKEN"]
    platform.env["VAULT_TOKEN"] = token
    try:
        out = platform.kc("ingest", "nm1.kcb", *args, "--vault-path", path)
    finally:
        platform.env["VAULT_TOKEN"] = root
    assert "provenance metadata could not be written" in out.stderr
    ingests = [e for e in platform.ledger_events() if e["type"] == "ingested"]
    assert [e["data"]["kv_version"] for e in ingests] == [1]
    # the same sender's next bundle goes to the path it holds
    platform.kc("ingest", "nm2.kcb", *args, "--vault-path", path)


def test_a_write_between_the_check_and_the_write_is_refused(orgs: tuple[Org, Org]) -> None:
    """Ingest writes with check-and-set against the version its rules were checked on: the
    store refuses a stale one (the workflow turns that into exit 7, tests/unit/handover)."""
    import hvac

    from keycourier.vault.errors import CasMismatchError
    from keycourier.vault.kv import VaultKv

    _, platform = orgs
    store = VaultKv(hvac.Client(url=platform.bao.addr, token=platform.bao.token), "secret")
    path = "handed-over/cas/qbo"
    assert store.write(path, {"a": "1"}, cas=0) == 1
    platform.bao.bao("kv", "put", "-cas=1", f"secret/{path}", "a=2")  # someone else, meanwhile
    with pytest.raises(CasMismatchError):
        store.write(path, {"a": "3"}, cas=1)
    assert _kv_get(platform, path, 2) == {"a": "2"}
    meta = store.read_metadata(path)
    assert meta is not None
    assert meta.current_version == 2


def test_a_damaged_receipt_in_vault_metadata_is_exit_4(orgs: tuple[Org, Org]) -> None:
    """Whoever may write a path's metadata can put any text where the receipt is kept."""
    _, platform = orgs
    where = "secret/handed-over/damaged/qbo"
    platform.bao.bao("kv", "put", "-cas=0", where, "x=1")
    for text in ("keycourier-receipt/v1|\u00fc\u00e9", "\u2603" * 40):
        platform.bao.bao("kv", "metadata", "put", f"-custom-metadata=receipt_0={text}", where)
        out = platform.kc("receipt", "get", "--vault-path", "handed-over/damaged/qbo", expect=4)
        assert "Traceback" not in out.stderr
        assert "receipt" in out.stderr
