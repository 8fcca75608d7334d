"""What a tamperer with write access to a ledger file does to it, with plain sqlite3.

Used by the tests that show what keycourier detects (or, stated as a limit, does
not) after such an attack. Each function leaves the file self-consistent where an
attacker would make it so: a cut tail takes its chain checkpoints, its signed tree
heads and its Merkle nodes with it; a new key re-signs what is left.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from nacl.signing import SigningKey

from keycourier.ledger import chain
from keycourier.tlog import checkpoint as tlog_checkpoint
from keycourier.tlog import merkle, note

APPEND_ONLY = (
    "events_no_update",
    "events_no_delete",
    "checkpoints_no_update",
    "checkpoints_no_delete",
    "notes_no_update",
    "notes_no_delete",
)


def open_for_tamper(db: Path) -> sqlite3.Connection:
    """A connection with the append-only triggers dropped."""
    conn = sqlite3.connect(db, isolation_level=None)
    for name in APPEND_ONLY:
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    return conn


def cut_tail(db: Path, from_seq: int) -> None:
    """Remove events ``from_seq`` on, with their delivery rows, chain checkpoints, signed
    tree heads and Merkle nodes: what is left verifies locally (a clean cut)."""
    conn = open_for_tamper(db)
    for table in ("events", "delivery", "checkpoints"):
        conn.execute(f"DELETE FROM {table} WHERE seq >= ?", (from_seq,))  # noqa: S608
    conn.execute("DELETE FROM notes WHERE size >= ?", (from_seq,))
    # the Merkle nodes an event's append completed go with its row
    conn.close()


def resign_with(db: Path, seed: bytes) -> str:
    """Put another key in ``meta`` and re-sign the chain head and the tree head with it,
    dropping every earlier signature (a rewritten ledger). Returns the new public key."""
    key = SigningKey(seed)
    public = key.verify_key.encode().hex()
    conn = open_for_tamper(db)
    ledger_id = conn.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()[0]
    seq, head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    signed_at = chain.format_time(datetime.now(UTC))
    signature = key.sign(chain.checkpoint_message(ledger_id, seq, head, signed_at)).signature.hex()
    conn.execute("DELETE FROM checkpoints")
    conn.execute("DELETE FROM notes")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'public_key'", (public,))
    conn.execute(
        "INSERT INTO checkpoints (seq, head_hash, signed_at, signature) VALUES (?, ?, ?, ?)",
        (seq, head, signed_at, signature),
    )

    def node(level: int, idx: int) -> bytes:
        return stored_node(conn, level, idx)

    origin = f"keycourier/ledger/{ledger_id}"
    body = tlog_checkpoint.Checkpoint(origin, seq, merkle.root_hash(seq, node)).text()
    conn.execute(
        "INSERT INTO notes (size, note) VALUES (?, ?)",
        (seq, note.sign(body, [note.Signer(origin, seed)])),
    )
    conn.close()
    return public


def stored_node(conn: sqlite3.Connection, level: int, idx: int) -> bytes:
    """Merkle node ``(level, idx)`` as the ledger stores it: in the ``nodes`` of the event
    whose append completed it (event ``(idx + 1) << level``), at ``level * 32``."""
    row = conn.execute("SELECT nodes FROM events WHERE seq = ?", ((idx + 1) << level,))
    blob = bytes(row.fetchone()[0])
    return blob[level * 32 : level * 32 + 32]
