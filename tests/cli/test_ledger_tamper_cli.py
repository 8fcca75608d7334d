"""What a tamperer with write access to the ledger directory can and cannot hide.

Each attack is done with the real sqlite3 module on a ledger file the real CLI wrote, and
judged by `keycourier audit verify` in a subprocess (exit code and message). The limits
that SECURITY.md states (what passes without an exported checkpoint) are shown too.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from nacl.signing import SigningKey

from keycourier import config
from keycourier.ledger import chain
from keycourier.ledger.interface import Event, EventType, VaultStatus
from keycourier.ledger.recorder import open_recorder
from keycourier.ledger.sqlite import CHECKPOINT_EVERY, KEY_HEADER, SqliteLedger, key_path_for
from keycourier.tlog import checkpoint as tlog_checkpoint
from keycourier.tlog import merkle, note
from tests.support import cli

TRIGGERS = (
    "events_no_update",
    "events_no_delete",
    "checkpoints_no_update",
    "checkpoints_no_delete",
    "notes_no_update",
    "notes_no_delete",
)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KEYCOURIER_LEDGER": str(cwd / "ledger.db"), "HOME": str(cwd)}
    for var in ("VAULT_ADDR", "VAULT_TOKEN"):
        env.pop(var, None)
    return cli.kc(*args, env=env, cwd=cwd, timeout=120)


def revoke(tmp: Path, *bundles: str) -> None:
    for bid in bundles:
        out = run("revoke", bid, "--reason", "sent to the wrong person", cwd=tmp)
        assert out.returncode == 0, out.stderr


def bulk(tmp: Path, count: int) -> None:
    """``count`` more events through the ledger API (one recorder session, like the helper)."""
    path = tmp / "ledger.db"
    settings = config.load(ledger_path=path, env={"HOME": str(tmp)})
    with open_recorder(settings) as rec:
        for i in range(count):
            rec.record(
                Event(
                    type=EventType.TOKEN_ISSUED,
                    at=datetime.now(UTC),
                    actor="ci@runner",
                    data={"n": i},
                )
            )


def tamper(tmp: Path) -> sqlite3.Connection:
    """A connection that has dropped the append-only triggers."""
    conn = sqlite3.connect(tmp / "ledger.db", isolation_level=None)
    for name in TRIGGERS:
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def _file_seed(conn: sqlite3.Connection) -> bytes:
    ledger = Path(conn.execute("PRAGMA database_list").fetchone()[2])
    return bytes.fromhex(key_path_for(ledger).read_text().split()[1])


def retree(conn: sqlite3.Connection, seed: bytes | None = None) -> None:
    """Rebuild the Merkle tree over the events as they are now and sign its head (with the
    key file's key, or ``seed``), dropping every earlier signed tree head: what an attacker
    holding the key file does after changing events."""
    seed = _file_seed(conn) if seed is None else seed
    conn.execute("DELETE FROM notes")
    bodies = [b for (b,) in conn.execute("SELECT CAST(body AS BLOB) FROM events ORDER BY seq")]
    nodes: dict[tuple[int, int], bytes] = {}
    rows: list[tuple[bytes, int]] = []
    for i, body in enumerate(bodies):
        done = merkle.stored_after_append(i, merkle.leaf_hash(body), lambda a, b: nodes[(a, b)])
        for lv, ix, h in done:
            nodes[(lv, ix)] = h
        rows.append((b"".join(h for _, _, h in done), i + 1))
    conn.executemany("UPDATE events SET nodes = ? WHERE seq = ?", rows)
    if bodies:
        ledger_id = conn.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()[0]
        origin = f"keycourier/ledger/{ledger_id}"
        root = merkle.root_hash(len(bodies), lambda a, b: nodes[(a, b)])
        text = note.sign(
            tlog_checkpoint.Checkpoint(origin, len(bodies), root).text(),
            [note.Signer(origin, seed)],
        )
        conn.execute("INSERT INTO notes VALUES (?, ?)", (len(bodies), text))


def rechain(conn: sqlite3.Connection, start: int) -> None:
    """Recompute prev_hash/hash from event ``start`` on, as a careful attacker would."""
    prev = chain.GENESIS
    if start > 1:
        prev = conn.execute("SELECT hash FROM events WHERE seq = ?", (start - 1,)).fetchone()[0]
    rows = conn.execute(
        "SELECT seq, body FROM events WHERE seq >= ? ORDER BY seq", (start,)
    ).fetchall()
    for seq, body in rows:
        digest = chain.link_hash(prev, body)
        conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, seq))
        prev = digest
    retree(conn)


def edit_body(conn: sqlite3.Connection, seq: int, old: str, new: str) -> None:
    body = conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()[0]
    assert old in body
    conn.execute("UPDATE events SET body = ? WHERE seq = ?", (body.replace(old, new), seq))


def cut(conn: sqlite3.Connection, after: int) -> None:
    """Remove every event after ``after`` with its delivery row and checkpoints."""
    for table in ("events", "delivery", "checkpoints"):
        conn.execute(f"DELETE FROM {table} WHERE seq > ?", (after,))  # noqa: S608 - fixed names
    retree(conn)


def new_key(tmp: Path, conn: sqlite3.Connection, *, write_key_file: bool) -> None:
    """Put a key of the attacker's in meta and re-sign the head with it."""
    seed = bytes(range(32))
    key = SigningKey(seed)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'public_key'", (key.verify_key.encode().hex(),)
    )
    conn.execute("DELETE FROM checkpoints")
    ledger_id = conn.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()[0]
    seq, head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    signed_at = chain.format_time(datetime.now(UTC))
    sig = key.sign(chain.checkpoint_message(ledger_id, seq, head, signed_at)).signature.hex()
    conn.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?)", (seq, head, signed_at, sig))
    retree(conn, seed)
    key_file = key_path_for(tmp / "ledger.db")
    key_file.unlink()
    if write_key_file:
        key_file.write_text(f"{KEY_HEADER}\n{seed.hex()}\n")
        key_file.chmod(0o600)


def export(tmp: Path, name: str) -> Path:
    out = run("audit", "checkpoint", "-o", name, cwd=tmp)
    assert out.returncode == 0, out.stderr
    return tmp / name


def events(tmp: Path) -> int:
    conn = sqlite3.connect(tmp / "ledger.db")
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


# -- detected without any exported checkpoint ---------------------------------------------


def test_rewrite_with_recomputed_chain_and_removed_checkpoints_is_exit_4(tmp_path: Path) -> None:
    revoke(tmp_path, "kcb-early")
    bulk(tmp_path, 2 * CHECKPOINT_EVERY + 50)  # checkpoints at 1000, 2000 and the head
    revoke(tmp_path, "kcb-late")
    assert run("audit", "verify", cwd=tmp_path).returncode == 0
    k = CHECKPOINT_EVERY + 50
    conn = tamper(tmp_path)
    edit_body(conn, k, '"n":', '"n_edited":')
    rechain(conn, k)
    conn.execute("DELETE FROM checkpoints WHERE seq >= ?", (k,))
    kept = conn.execute("SELECT max(seq) FROM checkpoints").fetchone()[0]
    conn.close()
    assert 0 < kept < k
    out = run("audit", "verify", cwd=tmp_path)
    assert out.returncode == 4, out.stdout + out.stderr
    first = kept + 1
    assert f"BROKEN at event #{first}" in out.stdout
    assert f"from #{first} on are not signed by any checkpoint" in out.stderr
    assert f"checkpoint interval of {CHECKPOINT_EVERY}" in out.stderr
    assert f"MORE than the checkpoint interval of {CHECKPOINT_EVERY}" in out.stdout


def test_a_tail_within_the_interval_is_ok_and_said_so(tmp_path: Path) -> None:
    """A command killed before its closing checkpoint leaves a short unsigned tail: OK."""
    revoke(tmp_path, "kcb-1")
    led = SqliteLedger(tmp_path / "ledger.db")
    for i in range(3):
        led.append(
            Event(type=EventType.TOKEN_ISSUED, at=datetime.now(UTC), actor="ci", data={"n": i}),
            VaultStatus.DISABLED,
            None,
        )
    led.conn.close()  # no checkpoint: as if the process died
    out = run("audit", "verify", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (
        f"(3 event(s) after the last one, within the checkpoint interval of {CHECKPOINT_EVERY})"
        in out.stdout
    )
    revoke(tmp_path, "kcb-2")  # the next command signs the head again
    assert "(0 event(s) after the last one" in run("audit", "verify", cwd=tmp_path).stdout


def test_deleted_key_file_is_exit_4_and_no_new_key_is_made(tmp_path: Path) -> None:
    revoke(tmp_path, "kcb-1", "kcb-2")
    key_file = key_path_for(tmp_path / "ledger.db")
    key_file.unlink()
    out = run("audit", "verify", cwd=tmp_path)
    assert out.returncode == 4
    assert "BROKEN at event #0" in out.stdout
    assert f"checkpoint key {key_file} is missing" in out.stderr
    again = run("revoke", "kcb-3", "--reason", "r", cwd=tmp_path)
    assert again.returncode == 4
    assert "is missing" in again.stderr
    assert "keycourier: hint: restore ledger.db.key from a backup" in again.stderr
    assert not key_file.exists()
    assert events(tmp_path) == 2
    assert run("audit", "checkpoint", cwd=tmp_path).returncode == 4
    assert run("audit", "key", cwd=tmp_path).returncode == 4


def test_key_file_deleted_with_a_new_key_in_meta_is_exit_4(tmp_path: Path) -> None:
    revoke(tmp_path, "kcb-1", "kcb-2")
    conn = tamper(tmp_path)
    new_key(tmp_path, conn, write_key_file=False)
    conn.close()
    out = run("audit", "verify", cwd=tmp_path)
    assert out.returncode == 4
    assert "is missing" in out.stderr


def test_renamed_meta_key_is_a_damaged_ledger(tmp_path: Path) -> None:
    revoke(tmp_path, "kcb-1")
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    conn.execute("UPDATE meta SET key = 'public_key_old' WHERE key = 'public_key'")
    conn.close()
    path = tmp_path / "ledger.db"
    for args in (["audit", "verify"], ["revoke", "kcb-2", "--reason", "r"]):
        out = run(*args, cwd=tmp_path)
        assert out.returncode == 4, out.stderr
        assert f"keycourier: error: ledger {path} is damaged: meta has no public_key" in out.stderr
    assert events(tmp_path) == 1


def test_removed_schema_version_is_a_damaged_ledger_never_recreated(tmp_path: Path) -> None:
    revoke(tmp_path, "kcb-1")
    key_file = key_path_for(tmp_path / "ledger.db")
    key_before = key_file.read_bytes()
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    conn.execute("DELETE FROM meta WHERE key = 'schema_version'")
    conn.close()
    path = tmp_path / "ledger.db"
    for args in (["audit", "verify"], ["revoke", "kcb-2", "--reason", "r"], ["audit", "key"]):
        out = run(*args, cwd=tmp_path)
        assert out.returncode == 4, out.stderr
        assert f"ledger {path} is damaged: meta has no schema_version" in out.stderr
        assert "already exists" not in out.stderr
    assert key_file.read_bytes() == key_before
    assert events(tmp_path) == 1


# -- detected with a checkpoint exported earlier (audit checkpoint + verify --since) -------


def test_tail_cut_with_its_checkpoints_is_caught_by_an_exported_checkpoint(
    tmp_path: Path,
) -> None:
    revoke(tmp_path, "kcb-1", "kcb-2")
    revoke(tmp_path, "kcb-leaked")  # the revoke a tamperer wants gone
    saved = export(tmp_path, "after-revoke.checkpoint")
    conn = tamper(tmp_path)
    cut(conn, 2)
    conn.close()
    plain = run("audit", "verify", cwd=tmp_path)
    assert plain.returncode == 0  # a cut at a checkpoint leaves nothing locally to see
    out = run("audit", "verify", "--since", str(saved), cwd=tmp_path)
    assert out.returncode == 4
    assert "BROKEN at event #3" in out.stdout
    assert "signed 3 events but the ledger has 2: it was rolled back" in out.stderr
    assert "or truncated" in out.stderr


def test_restored_older_copy_is_caught_by_an_exported_checkpoint(tmp_path: Path) -> None:
    revoke(tmp_path, "kcb-1", "kcb-2")
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy2(tmp_path / "ledger.db", old / "ledger.db")
    revoke(tmp_path, "kcb-3", "kcb-4")
    saved = export(tmp_path, "later.checkpoint")
    assert run("audit", "verify", "--since", str(saved), cwd=tmp_path).returncode == 0
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"ledger.db{suffix}").unlink(missing_ok=True)
    shutil.copy2(old / "ledger.db", tmp_path / "ledger.db")
    assert run("audit", "verify", cwd=tmp_path).returncode == 0  # consistent on its own
    out = run("audit", "verify", "--since", str(saved), cwd=tmp_path)
    assert out.returncode == 4
    assert "signed 4 events but the ledger has 2: it was rolled back to an older copy" in (
        out.stderr
    )


def test_short_rewrite_is_caught_by_an_exported_checkpoint(tmp_path: Path) -> None:
    revoke(tmp_path, "kcb-1", "kcb-2", "kcb-3")
    saved = export(tmp_path, "cp")
    conn = tamper(tmp_path)
    edit_body(conn, 2, "kcb-2", "kcb-X")
    rechain(conn, 2)
    conn.execute("DELETE FROM checkpoints WHERE seq >= 2")
    conn.close()
    assert run("audit", "verify", cwd=tmp_path).returncode == 0  # a tail within the interval
    out = run("audit", "verify", "--since", str(saved), cwd=tmp_path)
    assert out.returncode == 4
    assert "BROKEN at event #3" in out.stdout
    assert "the first 3 events are not the ones checkpoint" in out.stderr
    assert "the ledger was rewritten" in out.stderr


def test_replaced_key_file_and_meta_are_caught_by_an_exported_checkpoint(tmp_path: Path) -> None:
    revoke(tmp_path, "kcb-1", "kcb-2")
    saved = export(tmp_path, "cp")
    key_before = run("audit", "key", cwd=tmp_path).stdout
    conn = tamper(tmp_path)
    edit_body(conn, 2, "kcb-2", "kcb-X")
    rechain(conn, 2)
    new_key(tmp_path, conn, write_key_file=True)
    conn.close()
    plain = run("audit", "verify", cwd=tmp_path)
    assert plain.returncode == 0  # key file, meta and checkpoints agree with each other
    assert run("audit", "key", cwd=tmp_path).stdout != key_before
    out = run("audit", "verify", "--since", str(saved), cwd=tmp_path)
    assert out.returncode == 4
    assert "BROKEN at event #0" in out.stdout
    assert "checkpoint key differs" in out.stderr
    assert "the ledger's key was replaced" in out.stderr
    assert "the first 2 events are not the ones checkpoint" in out.stderr


def test_key_file_alone_replaced_is_exit_4(tmp_path: Path) -> None:
    revoke(tmp_path, "kcb-1")
    key_path_for(tmp_path / "ledger.db").write_text(f"{KEY_HEADER}\n{'11' * 32}\n")
    out = run("audit", "verify", cwd=tmp_path)
    assert out.returncode == 4
    assert "does not match its key file" in out.stderr
    again = run("revoke", "kcb-2", "--reason", "r", cwd=tmp_path)
    assert again.returncode == 4
    assert "does not match the ledger's public key" in again.stderr
    assert events(tmp_path) == 1


def test_new_key_in_meta_and_key_file_with_the_old_checkpoints_is_exit_4(tmp_path: Path) -> None:
    """A key in meta that did not sign the stored checkpoints breaks their signatures."""
    revoke(tmp_path, "kcb-1", "kcb-2")
    seed = bytes(range(32))
    conn = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'public_key'",
        (SigningKey(seed).verify_key.encode().hex(),),
    )
    conn.close()
    key_path_for(tmp_path / "ledger.db").write_text(f"{KEY_HEADER}\n{seed.hex()}\n")
    out = run("audit", "verify", cwd=tmp_path)
    assert out.returncode == 4
    assert "BROKEN at event #1" in out.stdout
    assert "checkpoint signature is invalid" in out.stderr


def test_a_replaced_ledger_is_caught_by_an_exported_checkpoint(tmp_path: Path) -> None:
    """The ledger and its key file deleted together: the next command starts a new ledger."""
    revoke(tmp_path, "kcb-1", "kcb-2")
    saved = export(tmp_path, "cp")
    (tmp_path / "ledger.db").unlink()
    key_path_for(tmp_path / "ledger.db").unlink()
    revoke(tmp_path, "kcb-3")
    assert run("audit", "verify", cwd=tmp_path).returncode == 0  # a healthy new ledger
    out = run("audit", "verify", "--since", str(saved), cwd=tmp_path)
    assert out.returncode == 4
    assert "not of this ledger" in out.stderr
    assert "rolled back" not in out.stderr


def test_an_unreadable_or_malformed_checkpoint_file(tmp_path: Path) -> None:
    revoke(tmp_path, "kcb-1")
    missing = run("audit", "verify", "--since", "nope", cwd=tmp_path)
    assert missing.returncode == 2
    assert "cannot read the checkpoint nope" in missing.stderr
    (tmp_path / "junk").write_text("hello\n")
    junk = run("audit", "verify", "--since", "junk", cwd=tmp_path)
    assert junk.returncode == 4
    assert "junk is not a keycourier checkpoint" in junk.stderr
