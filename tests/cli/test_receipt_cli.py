"""Receipts through real subprocesses: two organisations, two ledgers, files in between.

The partner seals; the platform opens with --receipt; the partner verifies the receipt
against the bundle it sent and the platform's pinned fingerprint (docs/receipts.md).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import string
import subprocess
from pathlib import Path
from typing import Any

import pytest

from keycourier.receipt import parse
from keycourier.receipt.model import write
from tests.support import cli
from tests.support.world import PASS, World, make_world

PARTNER_LEDGER = "partner-ledger.db"
PLATFORM_LEDGER = "platform-ledger.db"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def kc(
    *args: str, cwd: Path, ledger: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "KEYCOURIER_PASSPHRASE": PASS, "KEYCOURIER_LEDGER": str(cwd / ledger)}
    env.pop("VAULT_ADDR", None)
    return cli.kc_bytes(*args, env=env, cwd=cwd, stdin=stdin, timeout=120)


def partner(w: World, *args: str) -> subprocess.CompletedProcess[bytes]:
    return kc(*args, cwd=w.dir, ledger=PARTNER_LEDGER)


def platform(w: World, *args: str) -> subprocess.CompletedProcess[bytes]:
    return kc(*args, cwd=w.dir, ledger=PLATFORM_LEDGER)


def handover(w: World, out: str = "handover.kcb", receipt: str = "receipt.kcr") -> str:
    """Seal as the partner, open as the platform with --receipt; the bundle id."""
    sealed = partner(w, *w.seal_args(out=out))
    assert sealed.returncode == 0, sealed.stderr
    opened = platform(w, *w.open_args(out, "--receipt", receipt))
    assert opened.returncode == 0, opened.stderr
    assert b"receipt written to" in opened.stderr
    return str(json.loads((w.dir / "creds.json").read_text())["bundle_id"])


def verify(
    w: World, *extra: str, receipt: str = "receipt.kcr", bundle: str = "handover.kcb"
) -> subprocess.CompletedProcess[bytes]:
    return partner(
        w, "receipt", "verify", receipt, "--bundle", bundle, "--trust", w.platform_fpr, *extra
    )


def events(w: World, ledger: str) -> list[dict[str, Any]]:
    out = kc("audit", "export", "--format", "jsonl", cwd=w.dir, ledger=ledger)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.decode().splitlines() if line]


def test_receipt_round_trip_is_recorded_once_and_shown(world: World) -> None:
    bundle_id = handover(world)
    text = (world.dir / "receipt.kcr").read_bytes()
    assert text.startswith(b"keycourier-receipt/v1\n")
    assert max(len(line) for line in text.splitlines()) <= 64
    parsed = parse(text).receipt
    assert parsed.bundle.bundle_id == bundle_id
    assert parsed.action == "opened"
    assert parsed.receiver == world.platform_fpr
    assert parsed.bundle.sender == world.partner_fpr
    assert world.secret.encode() not in text
    assert world.client_id.encode() not in text

    ok = verify(world, "--json")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["newly_recorded"] is True
    assert summary["receiver"] == world.platform_fpr
    again = verify(world)
    assert again.returncode == 0, again.stderr
    assert b"already recorded" in again.stderr
    types = [e["type"] for e in events(world, PARTNER_LEDGER)]
    assert types == ["sealed", "receipt_verified"]
    assert [e["type"] for e in events(world, PLATFORM_LEDGER)] == ["opened"]

    shown = partner(world, "audit", "show", bundle_id)
    assert shown.returncode == 0, shown.stderr
    last = shown.stdout.decode().strip().splitlines()[-1]
    assert last.startswith(f"Received and opened by {world.platform_fpr} at ")
    assert partner(world, "audit", "verify").returncode == 0


def test_unconfirmed_lists_bundles_until_their_receipt_verifies(world: World) -> None:
    handover(world)
    listed = partner(world, "audit", "unconfirmed", "--older-than", "0m", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["state"] for r in rows] == ["awaiting receipt"]
    assert partner(world, "audit", "unconfirmed", "--json").stdout.strip() == b"[]"  # 2d default
    assert verify(world).returncode == 0
    assert (
        json.loads(partner(world, "audit", "unconfirmed", "--older-than", "0m", "--json").stdout)
        == []
    )
    text = partner(world, "audit", "unconfirmed", "--older-than", "0m")
    assert b"has a verified receipt" in text.stdout


def test_unconfirmed_names_revoked_bundles(world: World) -> None:
    sealed = partner(world, *world.seal_args(), "--json")
    bundle_id = json.loads(sealed.stdout)["bundle_id"]
    assert partner(world, "revoke", bundle_id, "--reason", "sent to the wrong team").returncode == 0
    rows = json.loads(partner(world, "audit", "unconfirmed", "--older-than", "0m", "--json").stdout)
    assert [(r["bundle_id"], r["state"]) for r in rows] == [(bundle_id, "revoked")]
    bad = partner(world, "audit", "unconfirmed", "--older-than", "soon")
    assert bad.returncode == 2


def _flip_body_char(text: bytes) -> bytes:
    lines = text.split(b"\n")
    i = 3  # inside the receipt body block
    line = bytearray(lines[i])
    line[10] = ord("A") if line[10] != ord("A") else ord("B")
    lines[i] = bytes(line)
    return b"\n".join(lines)


def _changed_unsigned(text: bytes, change: dict[str, object]) -> bytes:
    """The receipt with its body changed and its old signature kept (not re-signed)."""
    parsed = parse(text)
    body = json.loads(parsed.body)
    body.update(change)
    from keycourier.bundle.canonical import canonical_json

    return write(canonical_json(body), parsed.signature)


def test_altered_receipts_are_exit_4_naming_what(world: World) -> None:
    handover(world)
    good = (world.dir / "receipt.kcr").read_bytes()
    cases = {
        "flipped.kcr": (_flip_body_char(good), b""),
        "truncated.kcr": (good[: len(good) // 2], b"damaged"),
        "unsigned-change.kcr": (
            _changed_unsigned(good, {"at": "2099-01-01T00:00:00Z"}),
            b"signature does not verify",
        ),
        "empty.kcr": (b"", b"not a keycourier receipt"),
        "bundle.kcr": ((world.dir / "handover.kcb").read_bytes(), b"not a keycourier receipt"),
    }
    for name, (data, words) in cases.items():
        (world.dir / name).write_bytes(data)
        out = verify(world, receipt=name)
        assert out.returncode == 4, (name, out.returncode, out.stderr)
        assert words in out.stderr, (name, out.stderr)
    assert [e["type"] for e in events(world, PARTNER_LEDGER)] == ["sealed"]


def test_receipt_for_another_bundle_or_signer_is_exit_7(world: World) -> None:
    handover(world)
    handover(world, out="second.kcb", receipt="second.kcr")
    other = verify(world, receipt="second.kcr")  # the receipt of second.kcb, for handover.kcb
    assert other.returncode == 7, other.stderr
    assert b"not for bundle" in other.stderr
    unpinned = partner(
        world,
        "receipt",
        "verify",
        "receipt.kcr",
        "--bundle",
        "handover.kcb",
        "--trust",
        world.partner_fpr,
    )
    assert unpinned.returncode == 7, unpinned.stderr
    assert world.platform_fpr.encode() in unpinned.stderr
    assert b"not a pinned receiver" in unpinned.stderr
    malformed = partner(
        world, "receipt", "verify", "receipt.kcr", "--bundle", "handover.kcb", "--trust", "kc1:12"
    )
    assert malformed.returncode == 2


def test_a_forged_ledger_proof_is_exit_4_even_when_signed(world: World) -> None:
    """A receiver that signs a receipt whose proof does not hold is caught."""
    from keycourier.bundle.canonical import canonical_json
    from keycourier.bundle.identity import load_identity
    from keycourier.redact import Secret

    handover(world)
    parsed = parse((world.dir / "receipt.kcr").read_bytes())
    ident = load_identity((world.dir / "platform.kcid").read_bytes(), Secret(PASS.encode()))
    body = json.loads(parsed.body)
    body["ledger"]["hashes"].append("00" * 32)  # a path that leads nowhere
    raw = canonical_json(body)
    forged = write(raw, ident.sign(b"keycourier-receipt/v1\n" + raw))
    (world.dir / "forged.kcr").write_bytes(forged)
    out = verify(world, receipt="forged.kcr")
    assert out.returncode == 4, out.stderr
    assert b"inclusion proof" in out.stderr
    seen = partner(world, "receipt", "inspect", "forged.kcr")
    assert seen.returncode == 4
    assert b"INVALID" in seen.stdout


def test_a_receipt_proved_in_another_ledger_is_exit_4_until_its_key_is_pinned(
    world: World,
) -> None:
    """A receiver can prove any event in a throwaway ledger of its own; the sender holds it
    to the ledger key of its first verified receipt."""
    handover(world)
    assert verify(world).returncode == 0
    sealed = partner(world, *world.seal_args(out="second.kcb"))
    assert sealed.returncode == 0, sealed.stderr
    opened = kc(
        *world.open_args("second.kcb", "--receipt", "second.kcr"),
        cwd=world.dir,
        ledger="throwaway.db",
    )
    assert opened.returncode == 0, opened.stderr
    moved = verify(world, receipt="second.kcr", bundle="second.kcb")
    assert moved.returncode == 4, moved.stderr
    assert b"earlier receipts" in moved.stderr
    assert b"--ledger-key" in moved.stderr
    key = kc("audit", "key", cwd=world.dir, ledger="throwaway.db").stdout.decode().strip()
    wrong = verify(world, "--ledger-key", key + "x", receipt="second.kcr", bundle="second.kcb")
    assert wrong.returncode == 4
    pinned = verify(world, "--ledger-key", key, receipt="second.kcr", bundle="second.kcb")
    assert pinned.returncode == 0, pinned.stderr
    assert [e["type"] for e in events(world, PARTNER_LEDGER)].count("receipt_verified") == 2


def test_inspect_and_open_name_a_receipt(world: World) -> None:
    handover(world)
    shown = partner(world, "receipt", "inspect", "receipt.kcr", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["signature_valid"] is True
    assert data["ledger_proof_valid"] is True
    assert data["receipt"]["receiver"]["fingerprint"] == world.platform_fpr
    text = partner(world, "receipt", "inspect", "receipt.kcr")
    assert re.search(rb"receiver:\s+" + world.platform_fpr.encode(), text.stdout)
    for args in (["inspect", "receipt.kcr"], world.open_args("receipt.kcr")):
        out = platform(world, *args)
        assert out.returncode == 4, (args, out.stderr)
        assert b"this is a keycourier receipt" in out.stderr


def test_receipt_survives_transport(world: World) -> None:
    """The bundle's transport rules: quoting, CRLF and re-wrapping still verify."""
    handover(world)
    good = (world.dir / "receipt.kcr").read_bytes()
    quoted = b"Hi, here it is:\r\n\r\n" + b"".join(
        b"> " + line + b"  \r\n" for line in good.splitlines()
    )
    (world.dir / "quoted.kcr").write_bytes(quoted)
    assert verify(world, receipt="quoted.kcr").returncode == 0
    folded = subprocess.run(
        ["fold", "-w", "40"], input=good, capture_output=True, check=True
    ).stdout
    (world.dir / "folded.kcr").write_bytes(folded)
    assert verify(world, receipt="folded.kcr").returncode == 0


def test_receipt_target_is_checked_before_anything_is_opened(world: World) -> None:
    assert partner(world, *world.seal_args()).returncode == 0
    out = platform(world, *world.open_args("handover.kcb", "--receipt", "missing/dir/r.kcr"))
    assert out.returncode == 2, out.stderr
    assert not (world.dir / PLATFORM_LEDGER).exists() or events(world, PLATFORM_LEDGER) == []


def test_path_digest_is_keyed_by_the_receiver() -> None:
    from keycourier.bundle.identity import KeycourierIdentity
    from keycourier.receipt import path_matches
    from keycourier.receipt.model import PATH_KEY_LABEL, path_hmac

    a, b = KeycourierIdentity.generate(), KeycourierIdentity.generate()
    ka, kb = a.derive_key(PATH_KEY_LABEL), b.derive_key(PATH_KEY_LABEL)
    digest = path_hmac(ka, "secret/handed-over/acme/qbo")
    assert path_matches(ka, "secret/handed-over/acme/qbo", digest)
    assert not path_matches(kb, "secret/handed-over/acme/qbo", digest)
    assert not path_matches(ka, "secret/handed-over/acme/xero", digest)
    assert ka != a.derive_key(b"another use")
    assert base64.b64encode(ka) not in repr(a).encode()


def test_supersedes_is_signed_and_shown(world: World) -> None:
    old = json.loads(partner(world, *world.seal_args(), "--json").stdout)["bundle_id"]
    sealed = partner(world, *world.seal_args(out="new.kcb"), "--supersedes", old, "--json")
    assert sealed.returncode == 0, sealed.stderr
    shown = json.loads(partner(world, "inspect", "new.kcb", "--json").stdout)
    assert shown["manifest"]["supersedes"] == old
    assert shown["signature_valid"] is True
    plain = json.loads(partner(world, "inspect", "handover.kcb", "--json").stdout)
    assert "supersedes" not in plain["manifest"]  # absent, not null: old bundles keep their bytes
    # the manifest (and so supersedes) is under the signature: another value breaks it
    from keycourier import bundle
    from keycourier.bundle import text as bundle_text

    parsed = bundle.parse((world.dir / "new.kcb").read_bytes())
    other = parsed.manifest_bytes.replace(old.encode(), b"0" * 8 + old[8:].encode())
    (world.dir / "swapped.kcb").write_bytes(
        bundle_text.write(other, parsed.signature, parsed.payload)
    )
    swapped = json.loads(partner(world, "inspect", "swapped.kcb", "--json").stdout)
    assert swapped["signature_valid"] is False
    assert platform(world, *world.open_args("swapped.kcb")).returncode == 4
    bad = partner(world, *world.seal_args(out="x.kcb"), "--supersedes", "not-a-bundle-id")
    assert bad.returncode == 2


def test_rotate_reads_the_old_manifest_and_refuses_another_sender(world: World) -> None:
    old = json.loads(partner(world, *world.seal_args(), "--json").stdout)["bundle_id"]
    alnum = string.ascii_letters + string.digits
    new_secret = "".join(secrets.choice(alnum) for _ in range(40))
    (world.dir / "new-secret.txt").write_text(new_secret + "\n")
    common = [
        *("--client-id", world.client_id, "--client-secret-file", "new-secret.txt"),
        *("--attested-by", "Test Lead", "-o", "rotated.kcb", "--json"),
    ]
    rotated = partner(world, "rotate", "handover.kcb", "--identity", "partner.kcid", *common)
    assert rotated.returncode == 0, rotated.stderr
    summary = json.loads(rotated.stdout)
    assert summary["supersedes"] == old
    assert summary["platform"] == "quickbooks"
    assert summary["partner"] == "Acme"
    assert summary["recipients"] == [world.platform_recipient]
    sealed = [e for e in events(world, PARTNER_LEDGER) if e["type"] == "sealed"]
    assert sealed[-1]["data"]["supersedes"] == old
    other = partner(world, "rotate", "handover.kcb", "--identity", "platform.kcid", *common)
    assert other.returncode == 7, other.stderr
    assert b"only its sender rotates it" in other.stderr
