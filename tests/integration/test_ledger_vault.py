"""The recorder against a real OpenBao dev server: write-once records, sync, cross-check."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import hvac
import pytest

from keycourier import config
from keycourier.config import Settings
from keycourier.errors import IntegrityError, UnavailableError
from keycourier.ledger.interface import Event, EventType, VaultStatus
from keycourier.ledger.mirror import bundle_events_dir, record_for
from keycourier.ledger.recorder import open_recorder
from keycourier.ledger.sqlite import SqliteLedger
from keycourier.ledger.state import bundle_state
from keycourier.vault.errors import CasMismatchError
from keycourier.vault.kv import kv_list, kv_read, kv_read_metadata, kv_read_version, kv_write
from tests.support.openbao import BaoServer, free_port

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def settings_for(tmp: Path, addr: str, token: str, name: str = "ledger.db") -> Settings:
    return config.load(
        ledger_path=tmp / name, env={"HOME": str(tmp), "VAULT_ADDR": addr, "VAULT_TOKEN": token}
    )


def dead_addr() -> str:
    return f"http://127.0.0.1:{free_port()}"


def ev(
    kind: EventType, bundle: str | None, n: int = 0, actor: str = "kc1:alice", **data: object
) -> Event:
    return Event(
        type=kind,
        at=T0 + timedelta(seconds=n),
        actor=actor,
        bundle_id=bundle,
        fingerprint="kcfp1:abc",
        data=data,
    )


def root(server: BaoServer) -> hvac.Client:
    return hvac.Client(url=server.addr, token=server.token)


def path_of(rec: object, seq: int) -> str:
    from keycourier.ledger.recorder import LedgerRecorder

    assert isinstance(rec, LedgerRecorder)
    rec.flush()
    path = rec.ledger.delivery_of(seq)[1]
    assert path is not None
    return path


def test_records_are_write_once_per_event(bao_dev: BaoServer, tmp_path: Path) -> None:
    bid = "kcb-" + uuid.uuid4().hex
    with open_recorder(settings_for(tmp_path, bao_dev.addr, bao_dev.token)) as rec:
        first = rec.record(ev(EventType.SEALED, bid, platform="xero", partner="Acme"))
        second = rec.record(ev(EventType.OPENED, bid, 1, actor="kc1:bob"))
        other = rec.record(ev(EventType.TOKEN_ISSUED, None, 2, profile="ci"))
        assert first.vault_status == VaultStatus.RECORDED
        assert second.vault_status == VaultStatus.RECORDED
        assert other.vault_status == VaultStatus.RECORDED
        ledger_id = rec.ledger.ledger_id
        rows = {seq: rec.ledger.event_row(seq) for seq in (1, 2, 3)}
        paths = {seq: path_of(rec, seq) for seq in (1, 2)}
        report = rec.verify(vault=True)
    assert report.ok
    assert report.vault_records_checked == 3
    client = root(bao_dev)
    folder = bundle_events_dir(bid)
    assert sorted(kv_list(client, "secret", folder)) == sorted(
        p.rsplit("/", 1)[1] for p in paths.values()
    )
    for seq in (1, 2):
        assert paths[seq].startswith(f"{folder}/{ledger_id}-{seq:010d}-")
        meta = kv_read_metadata(client, "secret", paths[seq])
        assert meta is not None
        assert meta.current_version == 1  # one record per event, one version
        got = kv_read_version(client, "secret", paths[seq], 1)
        row = rows[seq]
        assert row is not None
        assert got is not None
        assert got.data == record_for(ledger_id, seq, *row)
    event_path = f"keycourier/events/token_issued/{ledger_id}-{3:010d}"
    assert kv_read(client, "secret", event_path) is not None
    # write-once: a second create of the same record is refused by cas
    with pytest.raises(CasMismatchError):
        kv_write(client, "secret", paths[1], {"x": "y"}, cas=0)


def test_other_ledger_sees_opened_by_another_identity(bao_dev: BaoServer, tmp_path: Path) -> None:
    from keycourier.bundle.identity import KeycourierIdentity
    from keycourier.ledger.signed import sign_event

    alice, mallory, bob = (KeycourierIdentity.generate() for _ in range(3))
    key = {n: i.public().signing_key for n, i in (("a", alice), ("m", mallory), ("b", bob))}
    bid = "kcb-" + uuid.uuid4().hex
    sender = settings_for(tmp_path, bao_dev.addr, bao_dev.token, "sender.db")
    receiver = settings_for(tmp_path, bao_dev.addr, bao_dev.token, "receiver.db")
    with open_recorder(sender) as rec:
        rec.record(sign_event(ev(EventType.SEALED, bid), alice))
    with open_recorder(receiver) as rec:
        rec.record(sign_event(ev(EventType.OPENED, bid, 1, actor="kc1:mallory"), mallory))
    with open_recorder(receiver) as rec:
        state = bundle_state(rec, bid, trusted=[key["a"]], own_key=key["m"])
        assert state.vault_checked
        assert state.sealed_by == "kc1:alice"  # known only through Vault
        assert state.opened_by == ("kc1:mallory",)
        out = rec.record(sign_event(ev(EventType.OPENED, bid, 2, actor="kc1:bob"), bob))
        assert out.vault_status == VaultStatus.RECORDED
    with open_recorder(sender) as rec:
        # opens by keys the reader trusts count; others are reported, not acted on
        state = bundle_state(rec, bid, trusted=[key["a"], key["m"], key["b"]])
        assert state.opened_by == ("kc1:mallory", "kc1:bob")
        state = bundle_state(rec, bid, trusted=[key["a"], key["b"]])
        assert state.opened_by == ("kc1:bob",)
        assert len(state.ignored) == 1
        assert "does not trust" in state.ignored[0]
        report = rec.verify(vault=True)
    assert report.ok
    assert len(kv_list(root(bao_dev), "secret", bundle_events_dir(bid))) == 3


def test_unreachable_vault_keeps_event_pending(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, dead_addr(), "t")
    with open_recorder(settings) as rec:
        out = rec.record(ev(EventType.SEALED, "kcb-pend"))
        assert out.vault_status == VaultStatus.PENDING
        assert "unreachable" in out.detail
        assert rec.ledger.pending_count() == 1
    with (
        open_recorder(settings, require_vault=True) as rec,
        pytest.raises(UnavailableError, match="pending"),
    ):
        rec.record(ev(EventType.OPENED, "kcb-pend", 1))
    led = SqliteLedger(settings.ledger_path)
    # kept locally before the error, and voided: the open released nothing
    assert led.pending_count() == 3
    aborted = led.history(bundle_id="kcb-pend")[-1]
    assert aborted.event.type == EventType.RELEASE_ABORTED
    assert aborted.event.data["aborts_seq"] == 2
    assert led.verify().ok
    led.close()


def test_sync_counts_identical_record_as_delivered(bao_dev: BaoServer, tmp_path: Path) -> None:
    bid = "kcb-" + uuid.uuid4().hex
    down = settings_for(tmp_path, dead_addr(), "t")
    with open_recorder(down) as rec:
        rec.record(ev(EventType.SEALED, bid))
        rec.record(ev(EventType.OPENED, bid, 1))
        rec.record(ev(EventType.DENIED_FINGERPRINT, None, 2, reason="sandbox"))
        ledger_id = rec.ledger.ledger_id
        row = rec.ledger.event_row(1)
        first_path = path_of(rec, 1)
    assert row is not None
    # Someone (a crashed earlier sync) already wrote event #1.
    kv_write(root(bao_dev), "secret", first_path, record_for(ledger_id, 1, *row), cas=0)
    up = settings_for(tmp_path, bao_dev.addr, bao_dev.token)
    with open_recorder(up) as rec:
        report = rec.sync()
        assert report.attempted == 3
        assert report.delivered == 3
        assert report.already_present == 1
        assert report.remaining == 0
        again = rec.sync()
        assert again.attempted == 0
        assert rec.verify(vault=True).ok


def test_sync_conflict_is_an_integrity_alarm(bao_dev: BaoServer, tmp_path: Path) -> None:
    bid = "kcb-" + uuid.uuid4().hex
    down = settings_for(tmp_path, dead_addr(), "t")
    with open_recorder(down) as rec:
        rec.record(ev(EventType.SEALED, bid))
        ledger_id = rec.ledger.ledger_id
        body, prev, digest = rec.ledger.event_row(1) or ("", "", "")
        first_path = path_of(rec, 1)
    forged = record_for(ledger_id, 1, body.replace("kc1:alice", "kc1:mallory"), prev, digest)
    kv_write(root(bao_dev), "secret", first_path, forged, cas=0)
    with open_recorder(settings_for(tmp_path, bao_dev.addr, bao_dev.token)) as rec:
        report = rec.sync()
        assert report.delivered == 0
        assert len(report.conflicts) == 1
        assert report.conflicts[0].bundle_id == bid
        assert bid in report.conflicts[0].message
        assert rec.ledger.pending_count() == 1
        # a new event for the same bundle must not jump the queue
        with pytest.raises(IntegrityError, match=bid):
            rec.record(ev(EventType.REVOKED, bid, 5, reason="x"))


def test_altered_vault_versions_are_detected(bao_dev: BaoServer, tmp_path: Path) -> None:
    bid = "kcb-" + uuid.uuid4().hex
    with open_recorder(settings_for(tmp_path, bao_dev.addr, bao_dev.token)) as rec:
        for i, kind in enumerate((EventType.SEALED, EventType.OPENED, EventType.INGESTED)):
            rec.record(ev(kind, bid, i))
        assert rec.verify(vault=True).ok
        ledger_id = rec.ledger.ledger_id
        body, prev, digest = rec.ledger.event_row(2) or ("", "", "")
        paths = [path_of(rec, seq) for seq in (1, 2)]
    client = root(bao_dev)
    # An administrator (no keycourier role may) adds a version that rewrites event #2.
    altered = record_for(ledger_id, 2, body.replace("kc1:alice", "kc1:eve"), prev, digest)
    kv_write(client, "secret", paths[1], altered, cas=1)
    with open_recorder(settings_for(tmp_path, bao_dev.addr, bao_dev.token)) as rec:
        report = rec.verify(vault=True)
    assert report.first_break is not None
    assert report.first_break[0] == 2
    # ... and soft-deletes version 1 (event #1).
    client.secrets.kv.v2.delete_secret_versions(path=paths[0], versions=[1], mount_point="secret")
    with open_recorder(settings_for(tmp_path, bao_dev.addr, bao_dev.token)) as rec:
        report = rec.verify(vault=True)
    assert report.first_break is not None
    assert report.first_break[0] == 1
    assert "deleted" in report.first_break[1]


def test_pending_then_sync_after_vault_restart(tmp_path: Path) -> None:
    """Our own short-lived dev server: stop it mid-test, record, start another, sync."""
    from tests.support.openbao import start_dev_server

    first = start_dev_server(tmp_path / "bao1")
    try:
        s1 = settings_for(tmp_path, first.addr, first.token)
        with open_recorder(s1) as rec:
            assert rec.record(ev(EventType.SEALED, "kcb-r")).vault_status == VaultStatus.RECORDED
            first.stop()
            out = rec.record(ev(EventType.OPENED, "kcb-r", 1))
            assert out.vault_status == VaultStatus.PENDING
            out = rec.record(ev(EventType.REVOKED, "kcb-r", 2, reason="lost"))
            assert out.vault_status == VaultStatus.PENDING
    finally:
        first.stop()
    second = start_dev_server(tmp_path / "bao2")
    try:
        s2 = settings_for(tmp_path, second.addr, second.token)
        with open_recorder(s2) as rec:
            report = rec.sync()
            assert report.delivered == 2
            assert report.remaining == 0
            # the in-memory server lost event #1; the two pending events have their records
            names = kv_list(root(second), "secret", bundle_events_dir("kcb-r"))
            assert len(names) == 2
            state = bundle_state(rec, "kcb-r")
            assert state.revoked == "lost"
    finally:
        second.stop()


def test_optional_transit_signatures(bao_dev: BaoServer, tmp_path: Path) -> None:
    admin = root(bao_dev)
    if "transit/" not in admin.sys.list_mounted_secrets_engines()["data"]:
        admin.sys.enable_secrets_engine("transit", path="transit")
    admin.secrets.transit.create_key("keycourier-provenance", key_type="ed25519")
    bid = "kcb-" + uuid.uuid4().hex
    settings = config.load(
        ledger_path=tmp_path / "t.db",
        env={
            "HOME": str(tmp_path),
            "VAULT_ADDR": bao_dev.addr,
            "VAULT_TOKEN": bao_dev.token,
            "KEYCOURIER_VAULT_TRANSIT_KEY": "keycourier-provenance",
        },
    )
    with open_recorder(settings) as rec:
        assert rec.record(ev(EventType.SEALED, bid)).vault_status == VaultStatus.RECORDED
        assert rec.record(ev(EventType.OPENED, bid, 1)).vault_status == VaultStatus.RECORDED
        report = rec.verify(vault=True)
        assert report.ok, report.first_break
        assert rec.mirror is not None
        got = kv_read_version(admin, "secret", path_of(rec, 1), 1)
        assert got is not None
        assert got.data is not None
        signature = str(got.data["transit_signature"])
        assert signature.startswith("vault:v1:")
        assert rec.mirror.verify_signature(str(got.data["hash"]), signature)
        assert not rec.mirror.verify_signature("0" * 64, signature)


def test_transit_signature_removed_or_forged_breaks_at_its_seq(
    bao_dev: BaoServer, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from keycourier.cli.main import cli

    admin = root(bao_dev)
    if "transit/" not in admin.sys.list_mounted_secrets_engines()["data"]:
        admin.sys.enable_secrets_engine("transit", path="transit")
    admin.secrets.transit.create_key("keycourier-provenance", key_type="ed25519")
    bid = "kcb-" + uuid.uuid4().hex
    env = {
        "HOME": str(tmp_path),
        "VAULT_ADDR": bao_dev.addr,
        "VAULT_TOKEN": bao_dev.token,
        "KEYCOURIER_VAULT_TRANSIT_KEY": "keycourier-provenance",
    }
    settings = config.load(ledger_path=tmp_path / "t.db", env=env)
    with open_recorder(settings) as rec:
        for n, kind in enumerate((EventType.SEALED, EventType.OPENED, EventType.REVOKED)):
            assert rec.record(ev(kind, bid, n)).vault_status == VaultStatus.RECORDED
        assert rec.verify(vault=True).ok
        paths = [path_of(rec, seq) for seq in (1, 2, 3)]
    versions = [kv_read_version(admin, "secret", path, 1) for path in paths]
    data = [dict(v.data) for v in versions if v is not None and v.data is not None]
    assert [d["seq"] for d in data] == [1, 2, 3]
    # an administrator rewrites the records: the records are kept identical, but
    # event #2 loses its signature and event #3 borrows event #1's
    del data[1]["transit_signature"]
    data[2]["transit_signature"] = data[0]["transit_signature"]
    for path, record in zip(paths, data, strict=True):
        admin.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point="secret")
        kv_write(admin, "secret", path, record, cas=0)
    with open_recorder(settings) as rec:
        report = rec.verify(vault=True)
    assert report.chain.ok  # the local chain is intact: only Vault's signatures are wrong
    assert [(b.seq, "Transit signature" in b.reason) for b in report.vault_breaks] == [
        (2, True),
        (3, True),
    ]
    assert report.first_break is not None
    assert report.first_break[0] == 2
    out = CliRunner().invoke(
        cli, ["audit", "verify", "--vault", "--ledger", str(tmp_path / "t.db")], env=env
    )
    assert isinstance(out.exception, IntegrityError), out.output  # exit 4 at the entry point
    assert out.exception.exit_code == 4
    assert "broken at event #2" in out.exception.message
    assert "BROKEN at event #2" in out.output


def test_missing_mount_keeps_event_pending_and_says_why(bao_dev: BaoServer, tmp_path: Path) -> None:
    settings = config.load(
        ledger_path=tmp_path / "m.db",
        env={
            "HOME": str(tmp_path),
            "VAULT_ADDR": bao_dev.addr,
            "VAULT_TOKEN": bao_dev.token,
            "KEYCOURIER_VAULT_MOUNT": "no-such-mount",
        },
    )
    with open_recorder(settings) as rec:
        out = rec.record(ev(EventType.SEALED, "kcb-m"))
        assert out.vault_status == VaultStatus.PENDING
        assert "no-such-mount" in out.detail
        assert rec.ledger.pending_count() == 1


def test_pending_event_of_the_older_layout_goes_to_its_own_record(
    bao_dev: BaoServer, tmp_path: Path
) -> None:
    """An event left pending by a version that appended to one record per bundle is
    delivered, by sync, to its own write-once record (never to the shared one)."""
    import sqlite3

    bid = "kcb-" + uuid.uuid4().hex
    with open_recorder(settings_for(tmp_path, dead_addr(), "t")) as rec:
        rec.record(ev(EventType.REVOKED, bid, reason="lost"))
        ledger_id = rec.ledger.ledger_id
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    conn.execute("UPDATE delivery SET path = ? WHERE seq = 1", (f"keycourier/handovers/{bid}",))
    conn.close()
    with open_recorder(settings_for(tmp_path, bao_dev.addr, bao_dev.token)) as rec:
        report = rec.sync()
        assert report.delivered == 1
        path = path_of(rec, 1)
        assert rec.verify(vault=True).ok
    assert path.startswith(f"{bundle_events_dir(bid)}/{ledger_id}-0000000001-")
    client = root(bao_dev)
    assert kv_read(client, "secret", path) is not None
    assert kv_read(client, "secret", f"keycourier/handovers/{bid}") is None
