"""Tampering that Vault catches, against a real OpenBao dev server: a removed ledger tail, deny and
revoke records of other ledgers, the pinned checkpoint key, and records from forged ledgers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import hvac
import pytest

from keycourier import config
from keycourier.config import Settings
from keycourier.errors import IntegrityError
from keycourier.ledger.export import timeline
from keycourier.ledger.interface import Event, EventType, VaultStatus
from keycourier.ledger.mirror import DENIED, LEDGERS, denied_events_dir
from keycourier.ledger.recorder import open_recorder
from keycourier.ledger.sqlite import KEY_HEADER, SqliteLedger, key_path_for
from keycourier.ledger.state import bundle_state, denied_lookup
from keycourier.vault.kv import kv_list, kv_read, kv_read_metadata, kv_write
from tests.support.ledger_attacks import cut_tail, resign_with
from tests.support.openbao import BaoServer

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


def settings_for(tmp: Path, server: BaoServer, name: str = "ledger.db") -> Settings:
    return config.load(
        ledger_path=tmp / name,
        env={"HOME": str(tmp), "VAULT_ADDR": server.addr, "VAULT_TOKEN": server.token},
    )


def ev(
    kind: EventType,
    bundle: str | None,
    n: int = 0,
    actor: str = "kc1:alice",
    fingerprint: str = "kcfp1:review",
    **data: object,
) -> Event:
    return Event(
        type=kind,
        at=T0 + timedelta(seconds=n),
        actor=actor,
        bundle_id=bundle,
        fingerprint=fingerprint,
        data=data,
    )


def root(server: BaoServer) -> hvac.Client:
    return hvac.Client(url=server.addr, token=server.token)


def truncate(db: Path, from_seq: int) -> None:
    """Remove every event from ``from_seq`` on, as an attacker with sqlite3 would."""
    cut_tail(db, from_seq)


def resign(db: Path, seed: bytes) -> str:
    """Replace the ledger's public key with another and re-sign its head (a rewritten ledger)."""
    return resign_with(db, seed)


# -- H1: a removed tail ------------------------------------------------------------------


@pytest.mark.parametrize("from_seq", [3, 1])
def test_removed_tail_is_an_integrity_break(
    bao_dev: BaoServer, tmp_path: Path, from_seq: int
) -> None:
    bid = "kcb-" + uuid.uuid4().hex
    settings = settings_for(tmp_path, bao_dev)
    with open_recorder(settings) as rec:
        rec.record(ev(EventType.SEALED, bid))
        rec.record(ev(EventType.OPENED, bid, 1))
        rec.record(ev(EventType.TOKEN_ISSUED, None, 2, profile="ci"))
        out = rec.record(ev(EventType.REVOKED, bid, 3, reason="leak"))
        assert out.vault_status == VaultStatus.RECORDED
        assert rec.verify(vault=True).ok
    truncate(settings.ledger_path, from_seq)
    led = SqliteLedger(settings.ledger_path)
    assert led.verify().ok  # the chain alone cannot see a clean cut
    led.close()
    with open_recorder(settings) as rec:
        report = rec.verify(vault=True)
    assert report.first_break is not None
    seq, reason = report.first_break
    assert seq == from_seq
    assert "tail is missing" in reason
    flagged = {b.seq for b in report.vault_breaks}
    assert flagged == set(range(from_seq, 5))  # the handover versions and the event record
    assert any("truncated" in note for note in report.notes)


def test_bundle_state_sees_own_revoke_removed_locally(bao_dev: BaoServer, tmp_path: Path) -> None:
    from keycourier.bundle.identity import KeycourierIdentity
    from keycourier.ledger.signed import sign_event

    alice, bob = KeycourierIdentity.generate(), KeycourierIdentity.generate()
    bid = "kcb-" + uuid.uuid4().hex
    settings = settings_for(tmp_path, bao_dev)
    with open_recorder(settings) as rec:
        rec.record(ev(EventType.SEALED, bid))
        rec.record(sign_event(ev(EventType.OPENED, bid, 1, actor="kc1:bob"), bob))
        rec.record(
            sign_event(ev(EventType.REVOKED, bid, 2, reason="sent to the wrong team"), alice)
        )
    truncate(settings.ledger_path, 2)
    with open_recorder(settings) as rec:
        state = bundle_state(
            rec, bid, trusted=[alice.public().signing_key], own_key=bob.public().signing_key
        )
        rows = timeline(rec, bid)
        # what Vault alone holds counts only when signed by a key the reader trusts
        untrusted = bundle_state(rec, bid, trusted=[bob.public().signing_fingerprint])
    assert state.vault_checked
    assert state.revoked == "sent to the wrong team"
    assert state.opened_by == ("kc1:bob",)
    assert untrusted.revoked is None
    assert untrusted.opened_by == ("kc1:bob",)
    assert len(untrusted.ignored) == 1
    assert [(src, str(e.type), origin) for src, e, origin in rows] == [
        ("ledger", "sealed", "recorded"),
        ("vault", "opened", "unmatched"),
        ("vault", "revoked", "unmatched"),
    ]


def test_deny_recorded_by_another_ledger_is_honoured(bao_dev: BaoServer, tmp_path: Path) -> None:
    fp = "kc1:" + uuid.uuid4().hex
    with open_recorder(settings_for(tmp_path, bao_dev, "security-team.db")) as rec:
        out = rec.record(ev(EventType.DENIED_FINGERPRINT, None, fingerprint=fp, reason="leaked"))
        assert out.vault_status == VaultStatus.RECORDED
        ledger_id = rec.ledger.ledger_id
    names = kv_list(root(bao_dev), "secret", denied_events_dir(fp))
    assert [n.split("-")[0] for n in names] == [ledger_id]
    # a sender with no ledger file yet: Vault alone, and no file is created
    fresh = settings_for(tmp_path, bao_dev, "fresh.db")
    reason = denied_lookup(fresh)(fp)
    assert reason is not None
    assert "leaked" in reason
    assert ledger_id in reason
    assert not fresh.ledger_path.exists()
    # a sender with its own (unrelated) ledger
    other = settings_for(tmp_path, bao_dev, "sender.db")
    with open_recorder(other) as rec:
        rec.record(ev(EventType.SEALED, "kcb-" + uuid.uuid4().hex))
    assert denied_lookup(other)(fp) is not None
    assert denied_lookup(other)("kc1:" + uuid.uuid4().hex) is None


def test_own_deny_removed_locally_is_still_honoured(bao_dev: BaoServer, tmp_path: Path) -> None:
    fp = "kc1:" + uuid.uuid4().hex
    settings = settings_for(tmp_path, bao_dev)
    with open_recorder(settings) as rec:
        rec.record(ev(EventType.SEALED, "kcb-" + uuid.uuid4().hex))
        rec.record(ev(EventType.DENIED_FINGERPRINT, None, 1, fingerprint=fp, reason="dev key"))
    truncate(settings.ledger_path, 2)
    reason = denied_lookup(settings)(fp)
    assert reason is not None
    assert "dev key" in reason
    with open_recorder(settings) as rec:
        report = rec.verify(vault=True)
    assert report.first_break is not None
    assert report.first_break[0] == 2
    assert any(f"{DENIED}/{fp}/events/" in b.reason for b in report.vault_breaks)


# -- M1: the checkpoint key --------------------------------------------------------------


def test_key_is_pinned_once_and_a_swapped_key_is_detected(
    bao_dev: BaoServer, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, bao_dev)
    bid = "kcb-" + uuid.uuid4().hex
    with open_recorder(settings) as rec:
        rec.record(ev(EventType.SEALED, bid))
        rec.record(ev(EventType.OPENED, bid, 1))
        ledger_id = rec.ledger.ledger_id
        public = rec.ledger.public_key
    pin = kv_read_metadata(root(bao_dev), "secret", f"{LEDGERS}/{ledger_id}")
    assert pin is not None
    assert pin.current_version == 1  # written once, not once per event
    assert kv_read(root(bao_dev), "secret", f"{LEDGERS}/{ledger_id}") == {
        "ledger": ledger_id,
        "public_key": public,
    }
    # the attacker rewrites the DB with a key of their own and re-signs the head
    seed = bytes(range(32))
    resign(settings.ledger_path, seed)
    led = SqliteLedger(settings.ledger_path)
    report = led.verify()
    led.close()
    assert report.first_break is not None
    assert report.first_break.seq == 0
    assert "key file" in report.first_break.reason
    # ... and replaces the key file too: only the key pinned in Vault still tells
    key_path_for(settings.ledger_path).write_text(f"{KEY_HEADER}\n{seed.hex()}\n")
    led = SqliteLedger(settings.ledger_path)
    assert led.verify().ok
    led.close()
    with open_recorder(settings) as rec:
        vreport = rec.verify(vault=True)
    assert vreport.first_break is not None
    assert vreport.first_break[0] == 0
    assert any("pinned in Vault" in b.reason for b in vreport.vault_breaks)


def test_a_clashing_pin_is_an_integrity_alarm(bao_dev: BaoServer, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, bao_dev)
    led = SqliteLedger(settings.ledger_path)
    ledger_id = led.ledger_id
    led.close()
    kv_write(
        root(bao_dev),
        "secret",
        f"{LEDGERS}/{ledger_id}",
        {"ledger": ledger_id, "public_key": "00" * 32},
        cas=0,
    )
    with open_recorder(settings) as rec, pytest.raises(IntegrityError, match="pins a different"):
        rec.record(ev(EventType.SEALED, "kcb-" + uuid.uuid4().hex))
    with open_recorder(settings) as rec:
        # kept locally, not released to Vault, and voided: the failed seal released nothing
        assert rec.ledger.pending_count() == 2
        assert rec.history()[-1].event.type == EventType.RELEASE_ABORTED


# -- L4: records of other (or forged) ledgers ----------------------------------------------


def test_foreign_records_are_marked_and_sanitised(bao_dev: BaoServer, tmp_path: Path) -> None:
    bid = "kcb-" + uuid.uuid4().hex
    ours = settings_for(tmp_path, bao_dev, "ours.db")
    with open_recorder(ours) as rec:
        rec.record(ev(EventType.SEALED, bid))
    nasty = "kc1:evil\x1b[2J\u202egnp.exe\x9b31m"
    with open_recorder(settings_for(tmp_path, bao_dev, "forger.db")) as rec:
        rec.record(ev(EventType.OPENED, bid, 1, actor=nasty, note="hi\x07\x1b]0;owned\x07"))
    with open_recorder(ours) as rec:
        rows = timeline(rec, bid)
        state = bundle_state(rec, bid)
    assert [(src, origin) for src, _, origin in rows] == [
        ("ledger", "recorded"),
        ("vault", "foreign"),
    ]
    shown = rows[1][1]
    assert shown.actor == "kc1:evil\\x1b[2J\\u202egnp.exe\\x9b31m"
    assert shown.data["note"] == "hi\\x07\\x1b]0;owned\\x07"
    # unsigned: reported (sanitised), never acted on
    assert state.opened_by == ()
    assert "kc1:evil\\x1b[2J\\u202egnp.exe\\x9b31m" in state.ignored[0]
