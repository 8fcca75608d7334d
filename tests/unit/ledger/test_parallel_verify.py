"""`audit verify` of a large ledger checks the chain in a second process: it must reach the
verdict the one-process walk reaches, on an intact ledger and on every kind of damage."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from keycourier.ledger import sqlite as ledger_sqlite
from keycourier.ledger.sqlite import ChainReport, SqliteLedger
from tests.support.ledger_files import fill, raw


def report(path: Path, *, parallel: bool, monkeypatch: pytest.MonkeyPatch) -> ChainReport:
    monkeypatch.setattr(ledger_sqlite, "PARALLEL_VERIFY_MIN", 0 if parallel else 10**12)
    led = SqliteLedger(path)
    try:
        return led.verify()
    finally:
        led.close()


def test_the_two_processes_agree_with_one_on_an_intact_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.db"
    fill(path, 40)
    led = SqliteLedger(path)
    try:
        split: list[bytes] = []
        one: list[bytes] = []
        # the two-process walk answers by itself (no fallback) and with the same leaves
        assert led._parallel_walk({}, split) == led._serial_walk({}, one)
        assert split == one
        assert len(split) == 40
    finally:
        led.close()
    both = report(path, parallel=True, monkeypatch=monkeypatch)
    assert both.ok
    assert both == report(path, parallel=False, monkeypatch=monkeypatch)


def damaged(tmp_path: Path, change: Callable[[sqlite3.Connection], object]) -> Path:
    """A ledger of 40 events, then ``change`` made behind the triggers' back."""
    path = tmp_path / "ledger.db"
    fill(path, 40)
    conn = raw(path)
    change(conn)
    conn.close()
    return path


def _edit(seq: int) -> Callable[[sqlite3.Connection], None]:
    def change(conn: sqlite3.Connection) -> None:
        body = conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()[0]
        conn.execute("UPDATE events SET body = ? WHERE seq = ?", (body.replace("b", "c"), seq))

    return change


def _drop_heads(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TRIGGER notes_no_delete")
    conn.execute("DELETE FROM notes")
    conn.execute("UPDATE events SET nodes = zeroblob(length(nodes))")


DAMAGE: dict[str, Callable[[sqlite3.Connection], object]] = {
    "a body changed": _edit(7),
    "the last body changed": _edit(40),
    "a link replaced": lambda c: c.execute(
        "UPDATE events SET hash = ? WHERE seq = 12", ("0" * 64,)
    ),
    "an event removed": lambda c: c.execute("DELETE FROM events WHERE seq = 20"),
    "the first event removed": lambda c: c.execute("DELETE FROM events WHERE seq = 1"),
    "a hash that is not text": lambda c: c.execute("UPDATE events SET hash = x'00' WHERE seq = 3"),
}

# the chain is intact: the tree is checked while the chain is walked in the other process
TREE_DAMAGE: dict[str, Callable[[sqlite3.Connection], object]] = {
    "a stored tree node changed": lambda c: c.execute(
        "UPDATE events SET nodes = zeroblob(length(nodes)) WHERE seq = 32"
    ),
    "the signed tree heads removed and the tree rewritten": _drop_heads,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_the_two_processes_reach_the_one_process_verdict_on_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    path = damaged(tmp_path, DAMAGE[damage])
    led = SqliteLedger(path)
    try:
        # the two-process walk never vouches for a damaged ledger itself: it hands over
        assert led._parallel_walk({}, []) is None
    finally:
        led.close()
    both = report(path, parallel=True, monkeypatch=monkeypatch)
    assert not both.ok
    assert both == report(path, parallel=False, monkeypatch=monkeypatch)


@pytest.mark.parametrize("damage", sorted(TREE_DAMAGE))
def test_the_tree_checked_beside_the_other_process_gives_the_one_process_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    path = damaged(tmp_path, TREE_DAMAGE[damage])
    both = report(path, parallel=True, monkeypatch=monkeypatch)
    assert not both.ok
    assert both == report(path, parallel=False, monkeypatch=monkeypatch)


def _null_seq_row(conn: sqlite3.Connection) -> None:
    """The events table rebuilt without its INTEGER PRIMARY KEY, plus a row whose seq is
    NULL: ``seq <= n`` and ``seq > n`` both miss it, ``max(seq)`` ignores it."""
    cols = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
    conn.execute(f"CREATE TABLE forged ({', '.join(cols)})")
    conn.execute("INSERT INTO forged SELECT * FROM events")
    body, digest = conn.execute("SELECT body, hash FROM events WHERE seq = 5").fetchone()
    conn.execute(
        "INSERT INTO forged (seq, body, prev_hash, hash) VALUES (NULL, ?, ?, ?)",
        (body.replace("b", "c"), digest, digest),
    )
    conn.execute("DROP TABLE events")
    conn.execute("ALTER TABLE forged RENAME TO events")


def test_a_row_without_a_sequence_number_is_a_break_in_both_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = damaged(tmp_path, _null_seq_row)
    led = SqliteLedger(path)
    try:
        assert led._parallel_walk({}, []) is None
    finally:
        led.close()
    both = report(path, parallel=True, monkeypatch=monkeypatch)
    assert not both.ok
    assert both.first_break is not None
    assert "no sequence number" in both.first_break.reason
    assert both == report(path, parallel=False, monkeypatch=monkeypatch)
