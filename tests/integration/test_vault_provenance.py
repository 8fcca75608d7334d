"""Provenance records against tokens made from the shipped policies, on a mount with
cas_required = true: what a sender-role token can and cannot do to a revocation, where
ingest may put credentials and who can read them, and checkpoints witnessed in Vault."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from keycourier import config
from keycourier.bundle.identity import KeycourierIdentity
from keycourier.config import Settings
from keycourier.ledger import chain
from keycourier.ledger.interface import Event, EventType
from keycourier.ledger.mirror import record_for
from keycourier.ledger.recorder import open_recorder
from keycourier.ledger.sqlite import key_path_for
from keycourier.tlog import checkpoint as tlog_checkpoint
from keycourier.tlog import note as tlog_note
from keycourier.vault.kv import kv_list, kv_read, kv_read_metadata, kv_write
from tests.support import cli
from tests.support.openbao import BaoServer, start_dev_server
from tests.support.random_text import ALNUM

POLICIES = Path(__file__).resolve().parents[2] / "policies" / "vault"
ROLES = ("sender", "receiver", "auditor", "token-helper")
PASS = "test passphrase 123"

CHECKPOINTS = "keycourier/checkpoints"


def bundle_events_dir(bundle_id: str) -> str:
    """Where a bundle's events are written, one write-once record each."""
    return f"keycourier/handovers/{bundle_id}/events"


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    """A dev server whose KV v2 mount "secret" has cas_required = true (the documented
    setting): every write must name the version it expects."""
    server = start_dev_server(tmp_path_factory.mktemp("bao-cas"))
    try:
        admin = hvac.Client(url=server.addr, token=server.token)
        admin.secrets.kv.v2.configure(cas_required=True, mount_point="secret")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tokens(bao: BaoServer) -> dict[str, str]:
    """A token per role, made from the shipped policies."""
    admin = hvac.Client(url=bao.addr, token=bao.token)
    out: dict[str, str] = {"root": bao.token}
    for role in ROLES:
        admin.sys.create_or_update_policy(name=role, policy=(POLICIES / f"{role}.hcl").read_text())
        out[role] = admin.auth.token.create(policies=[role], ttl="30m")["auth"]["client_token"]
    return out


def client(bao: BaoServer, token: str) -> hvac.Client:
    return hvac.Client(url=bao.addr, token=token)


def run(
    *args: str, cwd: Path, bao: BaoServer, token: str, ledger: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KEYCOURIER_PASSPHRASE": PASS,
        "KEYCOURIER_LEDGER": str(cwd / ledger),
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": token,
    }
    return cli.kc(*args, env=env, cwd=cwd, timeout=120)


def local(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYCOURIER_PASSPHRASE": PASS}
    for var in ("VAULT_ADDR", "VAULT_TOKEN"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "keycourier", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def identities(tmp: Path, *names: str) -> dict[str, dict[str, str]]:
    out = {}
    for name in names:
        made = local("identity", "new", "-o", f"{name}.kcid", "--work-factor", "10", cwd=tmp)
        assert made.returncode == 0, made.stderr
        shown = local("identity", "show", f"{name}.kcid", "--json", cwd=tmp)
        out[name] = json.loads(shown.stdout)
    return out


def seal(
    tmp: Path, bao: BaoServer, tokens: dict[str, str], out: str, *recipients: str
) -> dict[str, str]:
    """A production QuickBooks bundle by partner.kcid, sealed with a sender-role token."""
    secret = "".join(secrets.choice(ALNUM) for _ in range(40))
    (tmp / "secret.txt").write_text(secret + "\n")
    client_id = "AB" + "".join(secrets.choice(ALNUM) for _ in range(48))
    args = ["seal", "--platform", "quickbooks", "--client-id", client_id]
    args += ["--client-secret-file", "secret.txt", "--environment", "production"]
    args += ["--attested-by", "Test Lead", "--identity", "partner.kcid", "--partner", "Acme"]
    for r in recipients:
        args += ["-r", r]
    sealed = run(
        *args, "-o", out, "--json", cwd=tmp, bao=bao, token=tokens["sender"], ledger="sender.db"
    )
    assert sealed.returncode == 0, sealed.stderr
    return {**json.loads(sealed.stdout), "secret": secret}


@pytest.fixture
def handover(
    tmp_path: Path, bao: BaoServer, tokens: dict[str, str]
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """partner, platform and branch identities; a bundle for platform and branch."""
    ids = identities(tmp_path, "partner", "platform", "branch", "mallory")
    sealed = seal(
        tmp_path,
        bao,
        tokens,
        "handover.kcb",
        ids["platform"]["recipient"],
        ids["branch"]["recipient"],
    )
    return ids, sealed


def open_as(
    name: str, tmp: Path, bao: BaoServer, tokens: dict[str, str], partner_fpr: str
) -> subprocess.CompletedProcess[str]:
    return run(
        "open",
        "handover.kcb",
        "--identity",
        f"{name}.kcid",
        "--trust",
        partner_fpr,
        "-o",
        f"{name}.env",
        cwd=tmp,
        bao=bao,
        token=tokens["receiver"],
        ledger=f"{name}.db",
    )


def refused(fn: object) -> bool:
    """Whether Vault refuses a write (403 by policy, or 400 for a check-and-set)."""
    assert callable(fn)
    try:
        fn()
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        return True
    return False


def forged_record(
    kind: EventType, bundle_id: str, ledger: str = "f0rged", **data: object
) -> dict[str, object]:
    """A well-formed record of one event, as anyone with a token can write it."""
    event = Event(
        type=kind, at=datetime.now(UTC), actor="kc1:partner", bundle_id=bundle_id, data=data
    )
    body = chain.event_body(event, seq=1, ledger_id=ledger)
    return record_for(ledger, 1, body, chain.GENESIS, chain.link_hash(chain.GENESIS, body))


# -- a revocation cannot be erased, nor forged -----------------------------------------------


def test_a_sender_role_token_cannot_erase_a_signed_revocation(
    handover: tuple[dict[str, dict[str, str]], dict[str, str]],
    bao: BaoServer,
    tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    ids, sealed = handover
    bid = sealed["bundle_id"]
    partner_fpr = ids["partner"]["signing_fingerprint"]
    revoked = run(
        "revoke",
        bid,
        "--reason",
        "sent to the wrong team",
        "--identity",
        "partner.kcid",
        cwd=tmp_path,
        bao=bao,
        token=tokens["sender"],
        ledger="sender.db",
    )
    assert revoked.returncode == 0, revoked.stderr
    assert "in the local ledger and in Vault" in revoked.stderr
    # another sender-role token tries everything it can to push the revocation out
    attacker = client(bao, tokens["sender"])
    kv = attacker.secrets.kv.v2
    folder = bundle_events_dir(bid)
    names = kv_list(attacker, "secret", folder)
    assert len(names) == 2  # sealed, revoked
    bodies = [
        json.loads(str((kv_read(attacker, "secret", f"{folder}/{n}") or {})["body"])) for n in names
    ]
    assert sorted(b["type"] for b in bodies) == ["revoked", "sealed"]
    for body in bodies:  # both signed by the partner's identity
        assert body["data"]["signer_key"] == ids["partner"]["signing_key"]
        assert body["data"]["signature"]
    junk = {"ledger": "x", "seq": 1, "body": "junk"}
    legacy = f"keycourier/handovers/{bid}"
    for i in range(10):
        # plain writes where the older layout kept the bundle's history
        assert refused(
            lambda n=i: kv.create_or_update_secret(
                path=legacy, secret=junk, cas=n, mount_point="secret"
            )
        )
        for name in names:  # new versions of the existing records
            path = f"{folder}/{name}"
            assert refused(
                lambda p=path, n=i: kv.create_or_update_secret(
                    path=p, secret=junk, cas=n + 1, mount_point="secret"
                )
            )
        # new records are allowed, and change nothing
        kv.create_or_update_secret(
            path=f"{folder}/x-{i:010d}-{secrets.token_hex(8)}",
            secret=junk,
            cas=0,
            mount_point="secret",
        )
    for name in names:
        path = f"{folder}/{name}"
        assert refused(
            lambda p=path: attacker.adapter.post(
                f"/v1/secret/metadata/{p}", json={"max_versions": 1}
            )
        )
        assert refused(
            lambda p=path: kv.delete_metadata_and_all_versions(path=p, mount_point="secret")
        )
        meta = kv_read_metadata(client(bao, tokens["root"]), "secret", path)
        assert meta is not None
        assert meta.current_version == 1
    # a receiver on another machine still refuses the bundle
    opened = open_as("branch", tmp_path, bao, tokens, partner_fpr)
    assert opened.returncode == 7, opened.stderr
    assert "was revoked: sent to the wrong team" in opened.stderr
    assert not (tmp_path / "branch.env").exists()


def test_unsigned_or_foreign_revocations_are_ignored(
    handover: tuple[dict[str, dict[str, str]], dict[str, str]],
    bao: BaoServer,
    tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    ids, sealed = handover
    bid = sealed["bundle_id"]
    attacker = client(bao, tokens["sender"])
    folder = bundle_events_dir(bid)
    # an unsigned revocation, created by a sender-role token in the current layout
    unsigned = forged_record(EventType.REVOKED, bid, reason="forged")
    kv_write(
        attacker, "secret", f"{folder}/f0rged-0000000001-{secrets.token_hex(8)}", unsigned, cas=0
    )
    # one signed by a key nobody trusts (mallory's own identity)
    from keycourier.ledger.signed import sign_event

    mallory = KeycourierIdentity.generate()
    event = sign_event(
        Event(
            type=EventType.REVOKED,
            at=datetime.now(UTC),
            actor="kc1:m",
            bundle_id=bid,
            data={"reason": "forged too"},
        ),
        mallory,
    )
    body = chain.event_body(event, seq=1, ledger_id="m4llory")
    signed = record_for("m4llory", 1, body, chain.GENESIS, chain.link_hash(chain.GENESIS, body))
    kv_write(
        attacker, "secret", f"{folder}/m4llory-0000000001-{secrets.token_hex(8)}", signed, cas=0
    )
    # and one in the older one-record-per-bundle layout (only an administrator can still
    # write there: it stands for a record left from an older version)
    kv_write(
        client(bao, tokens["root"]),
        "secret",
        f"keycourier/handovers/{bid}",
        forged_record(EventType.REVOKED, bid, "0ld", reason="old"),
        cas=0,
    )
    opened = open_as("platform", tmp_path, bao, tokens, ids["partner"]["signing_fingerprint"])
    assert opened.returncode == 0, opened.stderr
    assert (tmp_path / "platform.env").exists()
    warnings = [line for line in opened.stderr.splitlines() if "not acted on" in line]
    assert len(warnings) == 3, opened.stderr
    assert sum("it is not signed" in w for w in warnings) == 2
    assert sum("a key this reader does not trust" in w for w in warnings) == 1


# -- ingest: check-and-set, and where credentials may go ------------------------------------


def ingest(
    tmp: Path,
    bao: BaoServer,
    tokens: dict[str, str],
    partner_fpr: str,
    path: str,
    bundle: str = "handover.kcb",
    *extra: str,
) -> subprocess.CompletedProcess[str]:
    return run(
        "ingest",
        bundle,
        "--identity",
        "platform.kcid",
        "--trust",
        partner_fpr,
        "--vault-path",
        path,
        "--json",
        *extra,
        cwd=tmp,
        bao=bao,
        token=tokens["receiver"],
        ledger="platform.db",
    )


def test_ingest_works_with_cas_required_and_the_token_helper_cannot_read_it(
    handover: tuple[dict[str, dict[str, str]], dict[str, str]],
    bao: BaoServer,
    tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    ids, _ = handover
    partner_fpr = ids["partner"]["signing_fingerprint"]
    path = f"handed-over/acme-{secrets.token_hex(4)}/quickbooks"
    first = ingest(tmp_path, bao, tokens, partner_fpr, path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["kv_version"] == 1
    assert json.loads(first.stdout)["vault_status"] == "recorded"
    # a second bundle (a rotation) to the same path: version 2, again with check-and-set
    second = seal(tmp_path, bao, tokens, "rotated.kcb", ids["platform"]["recipient"])
    again = ingest(tmp_path, bao, tokens, partner_fpr, path, "rotated.kcb")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["kv_version"] == 2
    admin = client(bao, tokens["root"])
    stored = kv_read(admin, "secret", path)
    assert stored is not None
    assert stored["client_secret"] == second["secret"]
    # a token made from token-helper.hcl cannot read what ingest wrote, nor list or see it
    helper = client(bao, tokens["token-helper"]).secrets.kv.v2
    assert refused(
        lambda: helper.read_secret_version(
            path=path, mount_point="secret", raise_on_deleted_version=True
        )
    )
    assert refused(lambda: helper.read_secret_metadata(path=path, mount_point="secret"))
    assert refused(lambda: helper.list_secrets(path="handed-over", mount_point="secret"))
    # ... and neither can the sender or the auditor (who sees the metadata only)
    for role in ("sender", "auditor", "receiver"):
        kv = client(bao, tokens[role]).secrets.kv.v2
        assert refused(
            lambda kv=kv: kv.read_secret_version(
                path=path, mount_point="secret", raise_on_deleted_version=True
            )
        )
    meta = kv_read_metadata(client(bao, tokens["auditor"]), "secret", path)
    assert meta is not None
    assert meta.custom_metadata["bundle_id"] == second["bundle_id"]
    assert second["secret"] not in json.dumps(dict(meta.custom_metadata))


@pytest.mark.parametrize(
    "path",
    [
        "keycourier/handovers/{uuid}",  # provenance: every sender and the auditor read it
        "keycourier/events/x/{uuid}",
        "platform/acme/monite",  # the token helper reads it
        "platform/acme/{uuid}",
        "partners/acme/quickbooks",  # outside the receiver's prefix
        "secret/acme",
        "handed-over",
    ],
)
def test_ingest_refuses_paths_other_roles_can_read(
    handover: tuple[dict[str, dict[str, str]], dict[str, str]],
    bao: BaoServer,
    tokens: dict[str, str],
    tmp_path: Path,
    path: str,
) -> None:
    ids, sealed = handover
    where = path.format(uuid=uuid.uuid4())
    out = run(
        "ingest",
        "handover.kcb",
        "--identity",
        "platform.kcid",
        "--trust",
        ids["partner"]["signing_fingerprint"],
        "--vault-path",
        where,
        cwd=tmp_path,
        bao=bao,
        token=tokens["root"],
        ledger="platform.db",
    )
    assert out.returncode == 2, out.stderr
    assert "handed-over/" in out.stderr
    assert sealed["secret"] not in out.stdout + out.stderr
    # refused before anything was opened or written
    assert not (tmp_path / "platform.db").exists()
    assert kv_read(client(bao, tokens["root"]), "secret", where) is None


# -- checkpoints witnessed in Vault ---------------------------------------------------------


def settings_for(tmp: Path, bao: BaoServer, token: str, name: str = "ledger.db") -> Settings:
    return config.load(
        ledger_path=tmp / name,
        env={"HOME": str(tmp), "VAULT_ADDR": bao.addr, "VAULT_TOKEN": token},
    )


def revoke_event(n: int) -> Event:
    return Event(
        type=EventType.REVOKED,
        at=datetime.now(UTC),
        actor="kc1:alice",
        bundle_id=f"kcb-{uuid.uuid4().hex}",
        data={"reason": f"r{n}"},
    )


def record(settings: Settings, count: int) -> str:
    with open_recorder(settings) as rec:
        for n in range(count):
            rec.record(revoke_event(n))
        return rec.ledger.ledger_id


def witnessed(bao: BaoServer, tokens: dict[str, str], ledger_id: str) -> list[str]:
    return kv_list(client(bao, tokens["auditor"]), "secret", f"{CHECKPOINTS}/{ledger_id}")


def test_checkpoints_are_witnessed_and_kept_pending_while_vault_is_down(
    bao: BaoServer, tokens: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, bao, tokens["sender"])
    ledger_id = record(settings, 2)
    assert witnessed(bao, tokens, ledger_id) == [f"{2:010d}"]
    got = kv_read(client(bao, tokens["auditor"]), "secret", f"{CHECKPOINTS}/{ledger_id}/{2:010d}")
    assert got is not None
    assert got["ledger"] == ledger_id
    assert got["seq"] == 2
    # an auditor fetches the signed tree head from Vault and opens it with the ledger's key
    with open_recorder(settings) as rec:
        verifier = rec.ledger.verifier()
    tree_head = tlog_checkpoint.parse(tlog_note.open_note(got["note"], [verifier]).text)
    assert tree_head.size == 2
    # Vault unreachable: the events and the checkpoint stay pending ...
    down = config.load(
        ledger_path=settings.ledger_path,
        env={"HOME": str(tmp_path), "VAULT_ADDR": "http://127.0.0.1:1", "VAULT_TOKEN": "t"},
    )
    record(down, 1)
    assert witnessed(bao, tokens, ledger_id) == [f"{2:010d}"]
    with open_recorder(settings) as rec:
        assert [c[0] for c in rec.unwitnessed_checkpoints()] == [3]
        report = rec.verify(vault=True)
        assert any("not yet witnessed" in note for note in report.notes)
    # ... and sync delivers both
    synced = run("sync", cwd=tmp_path, bao=bao, token=tokens["sender"], ledger="ledger.db")
    assert synced.returncode == 0, synced.stderr
    assert witnessed(bao, tokens, ledger_id) == [f"{2:010d}", f"{3:010d}"]
    verify = run(
        "audit",
        "verify",
        "--vault",
        cwd=tmp_path,
        bao=bao,
        token=tokens["sender"],
        ledger="ledger.db",
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_rolled_back_ledger_is_exit_4(
    bao: BaoServer, tokens: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, bao, tokens["sender"])
    record(settings, 2)
    saved = tmp_path / "saved"
    saved.mkdir()
    shutil.copy2(settings.ledger_path, saved / "ledger.db")
    ledger_id = record(settings, 2)
    assert witnessed(bao, tokens, ledger_id) == [f"{2:010d}", f"{4:010d}"]
    # the file is put back as it was: a clean, validly signed chain that ends at #2
    shutil.copy2(saved / "ledger.db", settings.ledger_path)
    for suffix in ("-wal", "-shm"):
        Path(str(settings.ledger_path) + suffix).unlink(missing_ok=True)
    assert (
        local("audit", "verify", "--ledger", str(settings.ledger_path), cwd=tmp_path).returncode
        == 0
    )
    out = run(
        "audit",
        "verify",
        "--vault",
        cwd=tmp_path,
        bao=bao,
        token=tokens["auditor"],
        ledger="ledger.db",
    )
    assert out.returncode == 4, out.stdout + out.stderr
    assert "witnessed checkpoint #4" in out.stdout + out.stderr
    assert "rolled back or truncated" in out.stdout + out.stderr


def test_a_replaced_ledger_is_exit_4(
    bao: BaoServer, tokens: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, bao, tokens["sender"])
    first = record(settings, 1)
    # the file and its key are removed; a fresh ledger (new ID, new key) takes their place
    settings.ledger_path.unlink()
    key_path_for(settings.ledger_path).unlink()
    second = record(settings, 1)
    assert second != first
    out = run(
        "audit",
        "verify",
        "--vault",
        cwd=tmp_path,
        bao=bao,
        token=tokens["auditor"],
        ledger="ledger.db",
    )
    assert out.returncode == 4, out.stdout + out.stderr
    assert f"Vault has seen ledger {first}" in out.stdout + out.stderr


def test_a_checkpoint_that_differs_from_the_chain_is_exit_4(
    bao: BaoServer, tokens: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, bao, tokens["sender"])
    ledger_id = record(settings, 2)
    # a witnessed checkpoint (validly signed with the ledger's key) for a head the local
    # chain does not have
    from nacl.signing import SigningKey

    seed = bytes.fromhex(key_path_for(settings.ledger_path).read_text().split()[-1])
    signed_at = chain.format_time(datetime.now(UTC))
    other = "ab" * 32
    signature = (
        SigningKey(seed)
        .sign(chain.checkpoint_message(ledger_id, 1, other, signed_at))
        .signature.hex()
    )
    with open_recorder(settings) as rec:
        public = rec.ledger.public_key
    kv_write(
        client(bao, tokens["sender"]),
        "secret",
        f"{CHECKPOINTS}/{ledger_id}/{1:010d}",
        {
            "ledger": ledger_id,
            "seq": 1,
            "head_hash": other,
            "signed_at": signed_at,
            "signature": signature,
            "public_key": public,
        },
        cas=0,
    )
    out = run(
        "audit",
        "verify",
        "--vault",
        cwd=tmp_path,
        bao=bao,
        token=tokens["auditor"],
        ledger="ledger.db",
    )
    assert out.returncode == 4, out.stdout + out.stderr
    assert "differs from checkpoint #1 witnessed in Vault" in out.stdout + out.stderr


def test_a_periodic_checkpoint_is_witnessed_while_the_recorder_stays_open(
    bao: BaoServer, tokens: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-lived recorder (the token helper's) witnesses each periodic checkpoint when
    it is signed, not only when it closes."""
    from keycourier.ledger import sqlite

    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY", 3)
    settings = settings_for(tmp_path, bao, tokens["sender"])
    with open_recorder(settings) as rec:
        for n in range(4):
            rec.record(revoke_event(n))
        ledger_id = rec.ledger.ledger_id
        assert witnessed(bao, tokens, ledger_id) == [f"{3:010d}"]
    assert witnessed(bao, tokens, ledger_id) == [f"{3:010d}", f"{4:010d}"]
