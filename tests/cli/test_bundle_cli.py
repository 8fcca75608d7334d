"""seal / inspect / open / identity / bundle extract-age through real subprocesses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keycourier import bundle
from keycourier.bundle import Credentials, PolicyStamp
from keycourier.redact import Secret
from tests.support.world import PASS, REPO, World, make_world, run


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def test_identity_file_is_0600_and_encrypted(world: World) -> None:
    path = world.dir / "partner.kcid"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"AGE-SECRET-KEY" not in path.read_bytes()
    again = run("identity", "new", "-o", "partner.kcid", cwd=world.dir)
    assert again.returncode == 2  # refuses to overwrite


def test_seal_inspect_open_round_trip(world: World) -> None:
    sealed = world.seal()
    assert sealed.returncode == 0, sealed.stderr
    text = (world.dir / "handover.kcb").read_bytes()
    assert world.secret.encode() not in text
    assert world.secret.encode() not in sealed.stderr + sealed.stdout

    inspected = run("inspect", "handover.kcb", "--json", cwd=world.dir)
    assert inspected.returncode == 0
    info = json.loads(inspected.stdout)
    assert info["signature_valid"] is True
    assert info["manifest"]["attestation"]["by"] == "Test Lead"
    assert info["manifest"]["client_id_masked"] == f"{world.client_id[:4]}…{world.client_id[-4:]}"

    opened = world.open()
    assert opened.returncode == 0, opened.stderr
    creds = json.loads((world.dir / "creds.json").read_text())
    assert creds["client_secret"] == world.secret  # the trailing newline was removed
    assert creds["client_id"] == world.client_id
    assert stat.S_IMODE((world.dir / "creds.json").stat().st_mode) == 0o600
    assert world.secret.encode() not in opened.stderr


def test_open_to_a_pipe_and_reopen_refused(world: World) -> None:
    assert world.seal().returncode == 0
    first = run(
        "open",
        "handover.kcb",
        "--identity",
        "platform.kcid",
        "--trust",
        world.partner_fpr,
        cwd=world.dir,
    )
    assert first.returncode == 0, first.stderr
    assert f"client_secret={world.secret}".encode() in first.stdout
    second = run(
        "open",
        "handover.kcb",
        "--identity",
        "platform.kcid",
        "--trust",
        world.partner_fpr,
        cwd=world.dir,
    )
    assert second.returncode == 7
    assert b"already opened" in second.stderr
    third = run(
        "open",
        "handover.kcb",
        "--identity",
        "platform.kcid",
        "--trust",
        world.partner_fpr,
        "--allow-reopen",
        cwd=world.dir,
    )
    assert third.returncode == 0


@pytest.mark.parametrize("case", ["tampered", "untrusted", "wrong-identity", "truncated"])
def test_every_integrity_failure_is_exit_4_with_nothing_written(world: World, case: str) -> None:
    assert world.seal().returncode == 0
    text = (world.dir / "handover.kcb").read_bytes()
    trust = world.partner_fpr
    identity = "platform.kcid"
    if case == "tampered":  # one base64 character of the age payload: a digest mismatch
        end = text.index(b"\n-----END AGE")
        text = (
            text[: end - 10]
            + (b"A" if text[end - 10 : end - 9] != b"A" else b"B")
            + text[end - 9 :]
        )
    elif case == "untrusted":
        trust = world.platform_fpr
    elif case == "wrong-identity":
        identity = "partner.kcid"
    else:
        text = text[: len(text) // 2]
    (world.dir / "b.kcb").write_bytes(text)
    out = run(
        "open", "b.kcb", "--identity", identity, "--trust", trust, "-o", "creds.json", cwd=world.dir
    )
    assert out.returncode == 4
    if case == "truncated":  # structural: named precisely, with the line
        assert out.stderr.startswith(b"keycourier: error: the bundle is damaged at line ")
    else:  # cryptographic: the one opaque message
        assert out.stderr.startswith(b"keycourier: error: bundle verification failed")
    assert not (world.dir / "creds.json").exists()
    assert b"Traceback" not in out.stderr


def test_expired_bundle_is_exit_7_and_says_when(world: World) -> None:
    sender = bundle.read_identity(world.dir / "partner.kcid", Secret(PASS))
    past = datetime.now(UTC) - timedelta(days=3)
    sealed = bundle.seal(
        Credentials("quickbooks", world.client_id, Secret(world.secret)),
        sender=sender,
        recipients=[world.platform_recipient],
        policy=PolicyStamp("sha256:" + "0" * 64, "pass"),
        lifetime=timedelta(days=1),
        environment="production",
        now=past,
    )
    (world.dir / "old.kcb").write_bytes(sealed.text)
    out = world.open("old.kcb")
    assert out.returncode == 7
    expected = (past.replace(microsecond=0) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"expired at {expected}".encode() in out.stderr
    assert not (world.dir / "creds.json").exists()


def test_policy_rejection_is_exit_7_recorded_and_releases_nothing(world: World) -> None:
    out = world.seal(
        "--redirect-uri", "https://developer.intuit.com/v2/OAuth2Playground/RedirectUrl"
    )
    assert out.returncode == 7
    assert b"playground-redirect" in out.stderr
    assert world.secret.encode() not in out.stderr + out.stdout
    assert not (world.dir / "handover.kcb").exists()
    shown = run("audit", "export", "--format", "jsonl", cwd=world.dir)
    assert shown.returncode == 0, shown.stderr
    events = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [e["type"] for e in events] == ["rejected"]
    assert world.secret not in shown.stdout.decode()


def test_open_judges_the_senders_context_findings_by_the_receivers_policy(
    world: World,
) -> None:
    """A sandbox API host that the sender's policy only warned about is a rejection
    under the receiver's (default) policy; under the same loose policy it stays a warning."""
    loose = world.dir / "loose.toml"
    loose.write_text('[rules.sandbox-api-host]\nseverity = "warn"\n')
    sealed = world.seal(
        "--api-base", "https://sandbox-quickbooks.api.intuit.com", "--policy", str(loose)
    )
    assert sealed.returncode == 0, sealed.stderr
    info = json.loads(run("inspect", "handover.kcb", "--json", cwd=world.dir).stdout)
    assert info["manifest"]["policy"]["warnings"] == ["sandbox-api-host"]

    refused = world.open()
    assert refused.returncode == 7, refused.stderr
    assert b"receiving policy rejects" in refused.stderr
    assert b"sandbox-api-host" in refused.stderr
    assert not (world.dir / "creds.json").exists()
    assert world.secret.encode() not in refused.stdout + refused.stderr

    allowed = world.open("handover.kcb", "--policy", str(loose))
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads((world.dir / "creds.json").read_text())["client_secret"] == world.secret


def test_open_rejects_what_the_receivers_stricter_policy_rejects(world: World) -> None:
    """Credential rules are re-evaluated on open: a bundle that lives longer than the
    receiver allows is refused with exit 7 and nothing is written."""
    sealed = world.seal("--expires-in", "10d")
    assert sealed.returncode == 0, sealed.stderr
    strict = world.dir / "strict.toml"
    strict.write_text('[rules.lifetime]\nmax = "2d"\n')
    refused = world.open("handover.kcb", "--policy", str(strict))
    assert refused.returncode == 7, refused.stderr
    assert b"receiving policy rejects" in refused.stderr
    assert b"lifetime" in refused.stderr
    assert not (world.dir / "creds.json").exists()


def test_open_refuses_to_print_credentials_to_a_terminal_without_reveal(world: World) -> None:
    from tests.support.pty_run import run_on_terminal

    assert world.seal().returncode == 0
    args = ["open", "handover.kcb", "--identity", "platform.kcid", "--trust", world.partner_fpr]
    env = {"KEYCOURIER_PASSPHRASE": PASS}
    refused = run_on_terminal(args, cwd=world.dir, env=env, timeout=30)
    assert refused.code == 2, refused.screen
    assert "--reveal" in refused.screen
    assert world.secret not in refused.screen
    shown = run_on_terminal([*args, "--reveal"], cwd=world.dir, env=env, timeout=30)
    assert shown.code == 0, shown.screen
    assert world.secret in shown.screen


def test_every_manifest_and_ledger_event_carries_the_digest_policy_show_prints(
    world: World,
) -> None:
    custom = world.dir / "custom.toml"
    custom.write_text('[rules.lifetime]\nmax = "20d"\n')
    env = {"KEYCOURIER_POLICY": str(custom)}
    shown = run("policy", "show", "--json", cwd=world.dir, env=env)
    assert shown.returncode == 0, shown.stderr
    digest = json.loads(shown.stdout)["digest"]
    default = json.loads(run("policy", "show", "--json", cwd=world.dir).stdout)["digest"]
    assert digest != default

    sealed = run(*world.seal_args(), cwd=world.dir, env=env)
    assert sealed.returncode == 0, sealed.stderr
    info = json.loads(run("inspect", "handover.kcb", "--json", cwd=world.dir).stdout)
    assert info["manifest"]["policy"]["digest"] == digest
    bundle_id = info["manifest"]["bundle_id"]
    revoked = run("revoke", bundle_id, "--reason", "test", cwd=world.dir, env=env)
    assert revoked.returncode == 0, revoked.stderr
    refused = run(*world.open_args(), cwd=world.dir, env=env)
    assert refused.returncode == 7  # revoked
    exported = run("audit", "export", "--format", "jsonl", cwd=world.dir, env=env)
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [e["type"] for e in events] == ["sealed", "revoked"]
    assert {e["policy_digest"] for e in events} == {digest}


def test_an_unreadable_policy_does_not_cost_events_of_commands_that_do_not_apply_it(
    world: World,
) -> None:
    """revoke (like token and connection commands) records its event without a digest
    when the policy file cannot be loaded, instead of losing the event."""
    env = {"KEYCOURIER_POLICY": str(world.dir / "missing.toml")}
    bid = "11111111-2222-4333-8444-555555555555"
    revoked = run("revoke", bid, "--reason", "test", cwd=world.dir, env=env)
    assert revoked.returncode == 0, revoked.stderr
    exported = run("audit", "export", "--format", "jsonl", cwd=world.dir)
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(e["type"], e["bundle_id"], e["policy_digest"]) for e in events] == [
        ("revoked", bid, None)
    ]


def test_a_receiver_can_accept_only_listed_sender_policies(world: World) -> None:
    """rules.sender-policy.digests: the sender's policy digest (signed in the manifest)
    must be listed; a sender that loosened its policy in any way is refused (exit 7)."""
    loose = world.dir / "loose.toml"
    loose.write_text("[rules.sandbox-api-host]\nhosts = []\n")  # would hide a sandbox host
    default = json.loads(run("policy", "show", "--json", cwd=world.dir).stdout)["digest"]
    strict = world.dir / "strict.toml"
    strict.write_text(f'[rules.sender-policy]\ndigests = ["{default}"]\n')

    assert world.seal("--policy", str(loose), out="loose.kcb").returncode == 0
    refused = world.open("loose.kcb", "--policy", str(strict))
    assert refused.returncode == 7, refused.stderr
    assert b"sender-policy" in refused.stderr
    assert not (world.dir / "creds.json").exists()

    assert world.seal(out="ok.kcb").returncode == 0  # sealed under the default policy
    accepted = world.open("ok.kcb", "--policy", str(strict))
    assert accepted.returncode == 0, accepted.stderr


def test_secret_from_stdin_and_passphrase_conflict(world: World) -> None:
    out = run(
        "seal",
        "--platform",
        "quickbooks",
        "--client-id",
        world.client_id,
        "--client-secret-file",
        "-",
        "--environment",
        "production",
        "--attested-by",
        "T",
        "--identity",
        "partner.kcid",
        "-r",
        world.platform_recipient,
        "-o",
        "x.kcb",
        "--passphrase-file",
        "-",
        cwd=world.dir,
        stdin=world.secret.encode(),
    )
    assert out.returncode == 2
    assert b"stdin" in out.stderr
    ok = run(
        "seal",
        "--platform",
        "quickbooks",
        "--client-id",
        world.client_id,
        "--client-secret-file",
        "-",
        "--environment",
        "production",
        "--attested-by",
        "T",
        "--identity",
        "partner.kcid",
        "-r",
        world.platform_recipient,
        "-o",
        "x.kcb",
        cwd=world.dir,
        stdin=world.secret.encode(),
    )
    assert ok.returncode == 0, ok.stderr


def test_stock_age_opens_the_payload_with_the_exported_identity(world: World) -> None:
    assert world.seal().returncode == 0
    exp = run("identity", "export-age", "platform.kcid", "-o", "platform.agekey", cwd=world.dir)
    assert exp.returncode == 0, exp.stderr
    assert stat.S_IMODE((world.dir / "platform.agekey").stat().st_mode) == 0o600
    ext = run("bundle", "extract-age", "handover.kcb", "-o", "payload.age", cwd=world.dir)
    assert ext.returncode == 0
    dec = subprocess.run(
        ["age", "-d", "-i", "platform.agekey", "payload.age"],
        cwd=world.dir,
        capture_output=True,
        check=True,
    )
    assert json.loads(dec.stdout)["client_secret"] == world.secret


def test_wrong_passphrase_is_refused(world: World) -> None:
    out = run(
        "identity",
        "show",
        "partner.kcid",
        "--verify",
        cwd=world.dir,
        env={"KEYCOURIER_PASSPHRASE": "not it"},
    )
    assert out.returncode == 4
    assert b"wrong passphrase" in out.stderr


def test_oversized_bundle_is_the_integrity_error(world: World) -> None:
    assert world.seal().returncode == 0
    big = (world.dir / "handover.kcb").read_bytes() + b" " * (1024 * 1024)
    (world.dir / "big.kcb").write_bytes(big)
    for args in (
        ("inspect", "big.kcb"),
        (
            "open",
            "big.kcb",
            "--identity",
            "platform.kcid",
            "--trust",
            world.partner_fpr,
            "-o",
            "c.json",
        ),
    ):
        out = run(*args, cwd=world.dir)
        assert out.returncode == 4, (args, out.stderr)
        assert not (world.dir / "c.json").exists()


def test_a_seal_is_released_when_bookkeeping_after_its_event_fails(world: World) -> None:
    """The event is committed before the bundle is written; what follows it (the
    checkpoint, here refused by a busy ledger) is bookkeeping: a warning, exit 0, the
    bundle out."""
    assert world.seal(out="first.kcb").returncode == 0  # creates the ledger and its key
    sealed = subprocess.run(
        [sys.executable, "-m", "tests.support.busy_checkpoint", *world.seal_args(out="second.kcb")],
        cwd=world.dir,
        capture_output=True,
        env={**os.environ, "KEYCOURIER_PASSPHRASE": PASS, "PYTHONPATH": REPO},
        timeout=120,
        check=False,
    )
    assert sealed.returncode == 0, sealed.stderr
    err = sealed.stderr.decode()
    assert "keycourier: warning: the event is on record, but the ledger bookkeeping" in err
    assert "busy" in err
    assert "Traceback" not in err
    inspected = run("inspect", "second.kcb", "--json", cwd=world.dir)
    assert inspected.returncode == 0
    bundle_id = json.loads(inspected.stdout)["manifest"]["bundle_id"]
    exported = run("audit", "export", "--format", "jsonl", cwd=world.dir)
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(e["type"], e["bundle_id"]) for e in events][-1] == ("sealed", bundle_id)

    verified = run("audit", "verify", "--json", cwd=world.dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["unsigned_tail"] == 1


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("kc1:0123456789abcdef", "has 16 hex characters after kc1:"),
        ("0123456789abcdef0123456789abcdef", "lacks the kc1: prefix"),
        ("age1" + "q" * 58, "is an age recipient"),
        ("kc2:0123456789abcdef0123456789abcdef", "is not a signing fingerprint"),
        ("ed25519:AAAA", "is not a 44-character base64 Ed25519 key"),
    ],
)
def test_a_malformed_trust_is_a_usage_error_naming_the_form(
    world: World, value: str, why: str
) -> None:
    assert world.seal().returncode == 0
    args = world.open_args()
    args[args.index("--trust") + 1] = value
    out = run(*args, cwd=world.dir)
    assert out.returncode == 2, out.stderr
    err = out.stderr.decode()
    assert f"--trust {value!r} {why}" in err
    assert "expected kc1: followed by 32 hex characters" in err
    assert "keycourier identity show" in err
    assert not (world.dir / "creds.json").exists()


def test_a_malformed_line_in_the_trust_file_is_a_usage_error(world: World) -> None:
    assert world.seal().returncode == 0
    (world.dir / "trusted.txt").write_text(f"# partners\n{world.partner_fpr}\nkc1:0123\n")
    args = world.open_args()
    i = args.index("--trust")
    args[i : i + 2] = ["--trust-file", "trusted.txt"]
    out = run(*args, cwd=world.dir)
    assert out.returncode == 2, out.stderr
    assert b"trusted.txt line 3: 'kc1:0123' has 4 hex characters" in out.stderr
    assert not (world.dir / "creds.json").exists()


def test_an_upper_case_fingerprint_is_the_same_pin(world: World) -> None:
    assert world.seal().returncode == 0
    args = world.open_args()
    i = args.index("--trust") + 1
    args[i] = "kc1:" + args[i][4:].upper()
    out = run(*args, cwd=world.dir)
    assert out.returncode == 0, out.stderr


def test_a_well_formed_pin_of_another_signer_is_exit_4_naming_the_signer(world: World) -> None:
    assert world.seal().returncode == 0
    args = world.open_args()
    args[args.index("--trust") + 1] = world.platform_fpr
    out = run(*args, cwd=world.dir)
    assert out.returncode == 4, out.stderr
    err = out.stderr.decode()
    assert err.startswith("keycourier: error: bundle verification failed")
    assert f"the bundle names its signer as {world.partner_fpr}, which is not" in err
    assert f"pinned senders ({world.platform_fpr})" in err
    assert not (world.dir / "creds.json").exists()


def test_identity_show_verify_says_what_it_verified(world: World) -> None:
    out = run("identity", "show", "partner.kcid", "--verify", cwd=world.dir)
    assert out.returncode == 0, out.stderr
    assert (
        b"verified: the passphrase opens the identity; its age key and signing key match the "
        b"recipient, signing key and fingerprint in its header\n"
    ) in out.stdout
    plain = run("identity", "new", "-o", "open.kcid", "--unprotected", cwd=world.dir)
    assert plain.returncode == 0, plain.stderr
    out = run("identity", "show", "open.kcid", "--verify", cwd=world.dir)
    assert out.returncode == 0, out.stderr
    assert b"verified: no passphrase (unprotected); its age key and signing key match" in out.stdout
    header_only = run("identity", "show", "partner.kcid", cwd=world.dir)
    assert b"verified" not in header_only.stdout
    assert b"header only" in header_only.stderr


def test_a_bundle_that_does_not_verify_creates_no_ledger(world: World) -> None:
    """open verifies before it reads or records anything: a refused bundle leaves no
    ledger, no key file, and nothing in Vault."""
    assert world.seal().returncode == 0
    ledger = world.dir / "fresh" / "ledger.db"
    stranger = "kc1:" + "0" * 32
    args = ["open", "handover.kcb", "--identity", "platform.kcid", "--trust", stranger]
    out = run(*args, "-o", "creds.json", cwd=world.dir, env={"KEYCOURIER_LEDGER": str(ledger)})
    assert out.returncode == 4, out.stderr
    assert not ledger.parent.exists() or list(ledger.parent.iterdir()) == []
    assert not (world.dir / "creds.json").exists()
