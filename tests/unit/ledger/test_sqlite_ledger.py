"""The SQLite ledger: append-only triggers, hash chain, checkpoints, tamper detection."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import stat
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from keycourier import config
from keycourier.errors import ConfigError, IntegrityError, UnavailableError, UsageError
from keycourier.ledger import chain
from keycourier.ledger.export import export
from keycourier.ledger.interface import Event, EventType, VaultStatus
from keycourier.ledger.memory import MemoryRecorder
from keycourier.ledger.recorder import open_recorder
from keycourier.ledger.sqlite import KEY_HEADER, SqliteLedger, key_path_for
from keycourier.ledger.state import bundle_state
from tests.support.ledger_files import T0, ev, fill, raw


def verify(path: Path) -> tuple[int, str] | None:
    led = SqliteLedger(path)
    try:
        report = led.verify()
    finally:
        led.close()
    return (
        None if report.first_break is None else (report.first_break.seq, report.first_break.reason)
    )


def test_new_ledger_is_wal_with_private_key(tmp_path: Path) -> None:
    path = tmp_path / "d" / "ledger.db"
    fill(path, 2)
    key = key_path_for(path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta["schema_version"] == "3"
    assert len(meta["public_key"]) == 64
    assert meta["public_key"] not in key.read_text()  # the file holds the seed, not the public key


def test_triggers_refuse_update_and_delete(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 3)
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET body = 'x' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events WHERE seq = 3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM checkpoints")


def test_chain_links_and_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 5)
    led = SqliteLedger(path)
    rows = led.conn.execute("SELECT seq, body, prev_hash, hash FROM events ORDER BY seq").fetchall()
    prev = chain.GENESIS
    for seq, body, prev_hash, digest in rows:
        assert prev_hash == prev
        assert digest == chain.link_hash(prev, body)
        assert json.loads(body)["seq"] == seq
        prev = digest
    report = led.verify()
    assert report.ok
    assert report.events == 5
    assert report.checkpoints == 1
    assert report.unsigned_tail == 0
    assert report.head_hash == prev
    led.close()


def test_verify_detects_edited_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 6)
    conn = raw(path)
    body = conn.execute("SELECT body FROM events WHERE seq = 4").fetchone()[0]
    conn.execute(
        "UPDATE events SET body = ? WHERE seq = 4", (body.replace("kc1:alice", "kc1:mallory"),)
    )
    found = verify(path)
    assert found is not None
    assert found[0] == 4


def test_verify_detects_edit_with_recomputed_chain(tmp_path: Path) -> None:
    """Rewriting every later hash still fails: the signed checkpoint no longer matches."""
    path = tmp_path / "ledger.db"
    fill(path, 6)
    conn = raw(path)
    rows = conn.execute("SELECT seq, body FROM events ORDER BY seq").fetchall()
    prev = chain.GENESIS
    for seq, body in rows:
        if seq == 3:
            body = body.replace("kc1:alice", "kc1:mallory")
        digest = chain.link_hash(prev, body)
        conn.execute(
            "UPDATE events SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (body, prev, digest, seq),
        )
        prev = digest
    found = verify(path)
    assert found is not None
    assert found[0] == 6
    assert "checkpoint" in found[1]


def test_verify_detects_deleted_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 6)
    raw(path).execute("DELETE FROM events WHERE seq = 3")
    found = verify(path)
    assert found is not None
    assert found[0] == 3
    assert "missing" in found[1]


def test_verify_detects_deleted_last_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 4)
    raw(path).execute("DELETE FROM events WHERE seq = 4")
    found = verify(path)
    assert found is not None
    assert found[0] == 4


def test_verify_detects_reordered_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 6)
    conn = raw(path)
    conn.execute("UPDATE events SET seq = -1 WHERE seq = 2")
    conn.execute("UPDATE events SET seq = 2 WHERE seq = 5")
    conn.execute("UPDATE events SET seq = 5 WHERE seq = -1")
    found = verify(path)
    assert found is not None
    assert found[0] == 2


def test_verify_detects_forged_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 3)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER checkpoints_no_update")
    conn.execute("UPDATE checkpoints SET signature = ? WHERE seq = 3", ("00" * 64,))
    found = verify(path)
    assert found is not None
    assert found[0] == 3
    assert "signature" in found[1]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 1)
    sqlite3.connect(path, isolation_level=None).execute(
        "UPDATE meta SET value = '99' WHERE key = 'schema_version'"
    )
    with pytest.raises(ConfigError, match="schema version 99, newer"):
        SqliteLedger(path)


def test_not_a_ledger_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError):
        SqliteLedger(path)


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        ("UPDATE meta SET value = 'x' WHERE key = 'ledger_id'", "meta.ledger_id is malformed"),
        ("UPDATE meta SET value = '1x' WHERE key = 'schema_version'", "schema_version is not a"),
        ("UPDATE meta SET value = '0' WHERE key = 'schema_version'", "is 0, which never existed"),
        ("DELETE FROM meta WHERE key = 'created_at'", "meta has no created_at"),
        ("DROP TABLE checkpoints", "its checkpoints table is missing"),
        ("DROP TABLE meta", "its meta table is missing"),
    ],
)
def test_damaged_meta_or_tables_are_integrity_errors(tmp_path: Path, tamper: str, why: str) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 1)
    key = key_path_for(path).read_bytes()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(tamper)
    conn.close()
    with pytest.raises(IntegrityError, match=f"ledger {path} is damaged: .*{why}"):
        SqliteLedger(path)
    assert key_path_for(path).read_bytes() == key


def test_a_sqlite_file_of_another_program_is_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="not a keycourier ledger"):
        SqliteLedger(path)
    assert not key_path_for(path).exists()
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["notes"]
    conn.close()


def test_missing_key_refuses_new_events_and_creates_no_key(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 1)
    key_path_for(path).unlink()
    led = SqliteLedger(path)
    try:
        with pytest.raises(IntegrityError, match=r"checkpoint key .* is missing") as caught:
            led.append(ev(EventType.REVOKED, data={"reason": "x"}), VaultStatus.DISABLED, None)
        assert "from a backup" in caught.value.hints[0]
        assert led.head()[0] == 1  # nothing appended that could never be signed
    finally:
        led.close()
    assert not key_path_for(path).exists()


def test_creation_killed_before_its_commit_leaves_no_stale_key(tmp_path: Path) -> None:
    """A <key>.new beside an empty database belongs to no ledger: creation starts over."""
    path = tmp_path / "ledger.db"
    sqlite3.connect(path).close()  # the empty file a killed creation leaves
    pending = tmp_path / "ledger.db.key.new"
    pending.write_text(f"{KEY_HEADER}\n{'22' * 32}\n")
    led = SqliteLedger(path)
    try:
        assert led.key_file_public() == led.public_key
        led.append(ev(EventType.REVOKED, data={"reason": "x"}), VaultStatus.DISABLED, None)
    finally:
        led.close()
    assert not pending.exists()
    assert stat.S_IMODE(key_path_for(path).stat().st_mode) == 0o600


def test_a_process_killed_while_creating_the_ledger_leaves_it_usable(tmp_path: Path) -> None:
    """Killed after the key is written and before the ledger is committed: the next
    command creates the ledger instead of refusing a stale key of "another ledger"."""
    path = tmp_path / "ledger.db"
    code = (
        "import os, sys, sqlite_utils.db as d\n"
        "real = d.Table.insert_all\n"
        "def die(self, *a, **k):\n"
        "    if self.name == 'meta':\n"
        "        os._exit(9)\n"
        "    return real(self, *a, **k)\n"
        "d.Table.insert_all = die\n"
        "from pathlib import Path\n"
        "from keycourier.ledger.sqlite import SqliteLedger\n"
        "SqliteLedger(Path(sys.argv[1]))\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(path)], check=False, timeout=60)
    assert killed.returncode == 9
    led = SqliteLedger(path)
    try:
        led.append(ev(EventType.REVOKED, data={"reason": "x"}), VaultStatus.DISABLED, None)
        led.checkpoint()
        assert led.verify().ok
    finally:
        led.close()


def test_creation_killed_after_its_commit_is_finished_by_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 1)
    pending = tmp_path / "ledger.db.key.new"
    key_path_for(path).rename(pending)  # committed, not yet renamed
    assert verify(path) is None
    assert key_path_for(path).exists()
    assert not pending.exists()
    # a pending key that is not the one in meta is never taken
    key_path_for(path).rename(pending)
    pending.write_text(f"{KEY_HEADER}\n{'33' * 32}\n")
    found = verify(path)
    assert found is not None
    assert "is missing" in found[1]
    assert not key_path_for(path).exists()


def test_checkpoint_interval_counts_events_of_earlier_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head is signed once it is CHECKPOINT_EVERY past the last checkpoint, even when
    the events before it were left unsigned by a session that never closed."""
    from keycourier.ledger import sqlite

    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY", 4)
    path = tmp_path / "ledger.db"
    crashed = SqliteLedger(path)  # appends 3 events, then dies without close()'s checkpoint
    for i in range(3):
        crashed.append(ev(EventType.SEALED, i), VaultStatus.DISABLED, None)
    crashed.conn.close()
    led = SqliteLedger(path)
    try:
        led.append(ev(EventType.SEALED, 9), VaultStatus.DISABLED, None)
        signed = [r[0] for r in led.conn.execute("SELECT seq FROM checkpoints ORDER BY seq")]
        assert signed == [4]  # the counter of this session alone would say 1
    finally:
        led.close()


def test_history_by_bundle_and_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 7)
    led = SqliteLedger(path)
    assert [s.seq for s in led.history(bundle_id="b1")] == [2, 5]
    assert [s.seq for s in led.history(fingerprint="fp0")] == [1, 3, 5, 7]
    assert [s.seq for s in led.history(bundle_id="b1", fingerprint="fp1")] == [2]
    assert led.history(bundle_id="nope") == []
    led.close()


def test_event_validation(tmp_path: Path) -> None:
    led = SqliteLedger(tmp_path / "ledger.db")
    with pytest.raises(UsageError, match="timezone"):
        led.append(Event(EventType.SEALED, datetime(2026, 1, 1), "a"), VaultStatus.DISABLED, None)
    with pytest.raises(UsageError, match="not JSON"):
        led.append(ev(EventType.SEALED, data={"x": object()}), VaultStatus.DISABLED, None)
    with pytest.raises(UsageError, match="larger"):
        led.append(ev(EventType.SEALED, data={"x": "a" * 20000}), VaultStatus.DISABLED, None)
    assert led.head()[0] == 0  # nothing partial was written
    led.close()


def test_bundle_state_local(tmp_path: Path) -> None:
    settings = config.load(ledger_path=tmp_path / "l.db", env={"HOME": str(tmp_path)})
    with open_recorder(settings) as rec:
        rec.record(ev(EventType.SEALED, 0, bundle_id="B"))
        rec.record(ev(EventType.OPENED, 1, bundle_id="B"))
        rec.record(Event(EventType.OPENED, T0 + timedelta(seconds=2), "kc1:bob", bundle_id="B"))
        rec.record(ev(EventType.REVOKED, 3, bundle_id="B", data={"reason": "leaked"}))
        state = bundle_state(rec, "B")
    assert state.opened_by == ("kc1:alice", "kc1:bob")
    assert state.revoked == "leaked"
    assert state.sealed_by == "kc1:alice"
    assert not state.vault_checked
    assert state.vault_detail == "no Vault configured"


def test_export_jsonl_and_csv(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    fill(path, 3)
    led = SqliteLedger(path)
    lines = list(export(led.iter_all(), "jsonl", since=T0 + timedelta(seconds=1)))
    assert [json.loads(x)["seq"] for x in lines] == [2, 3]
    rows = "".join(export(led.iter_all(), "csv")).splitlines()
    assert rows[0].startswith("time,seq,type,actor,partner,platform")
    assert len(rows) == 4
    led.close()


def test_csv_columns_are_flat(tmp_path: Path) -> None:
    rec = MemoryRecorder()
    rec.record(
        Event(
            type=EventType.INGESTED,
            at=T0,
            actor="kc1:bob",
            bundle_id="B",
            fingerprint="fp",
            policy_digest="sha256:00",
            data={
                "partner": "Acme, Ltd",
                "platform": "xero",
                "environment": "production",
                "vault_path": "handed-over/acme/xero",
                "kv_version": 3,
                "sealed_by": "kc1:alice",
                "rules": ["a", "b"],
            },
        )
    )
    lines = "".join(export(iter(rec.events), "csv"))
    rows = list(csv.DictReader(io.StringIO(lines)))
    assert rows == [
        {
            "time": "2026-01-01T12:00:00.000000Z",
            "seq": "1",
            "type": "ingested",
            "actor": "kc1:bob",
            "partner": "Acme, Ltd",
            "platform": "xero",
            "environment": "production",
            "bundle_id": "B",
            "fingerprint": "fp",
            "vault_path": "handed-over/acme/xero",
            "vault_version": "3",
            "policy_digest": "sha256:00",
            "detail": 'rules=["a", "b"]; sealed_by=kc1:alice',
            "vault_status": "disabled",
        }
    ]


def test_memory_recorder_behaves_like_the_port() -> None:
    rec = MemoryRecorder()
    assert rec.record(ev(EventType.SEALED, bundle_id="B")).vault_status == VaultStatus.DISABLED
    assert rec.record(ev(EventType.OPENED, 1, bundle_id="B")).seq == 2
    assert bundle_state(rec, "B").opened_by == ("kc1:alice",)
    assert rec.events[1].prev_hash == rec.events[0].hash
    down = MemoryRecorder(vault_status=VaultStatus.PENDING, require_vault=True)
    with pytest.raises(UnavailableError):
        down.record(ev(EventType.SEALED))
    assert len(down.events) == 1  # kept locally before raising


def test_parse_body_rejects_garbage() -> None:
    with pytest.raises(IntegrityError):
        chain.parse_body("{}")


def test_checkpoint_every_n_events_within_one_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keycourier.ledger import sqlite

    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY", 3)
    path = tmp_path / "ledger.db"
    fill(path, 7)  # one recorder session: every 3 events, then the final one at close
    led = SqliteLedger(path)
    try:
        signed = [r[0] for r in led.conn.execute("SELECT seq FROM checkpoints ORDER BY seq")]
        assert signed == [3, 6, 7]
        report = led.verify()
        assert report.ok
        assert report.checkpoints == 3
        assert report.unsigned_tail == 0
    finally:
        led.close()
