"""The auditor's evidence through the real CLI: checkpoints, proofs Go accepts, packs that
verify offline (and hold no secret), the report, consistency after a rollback."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from keycourier.ledger.sqlite import key_path_for
from keycourier.tlog import checkpoint, merkle, note
from tests.support import cli
from tests.support.gotools import TlogCheck
from tests.support.ledger_attacks import stored_node
from tests.support.random_text import ALNUM

PASS = "evidence passphrase 7"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HOME": str(cwd),
        "KEYCOURIER_LEDGER": str(cwd / "ledger.db"),
        "KEYCOURIER_PASSPHRASE": PASS,
    }
    for var in ("VAULT_ADDR", "VAULT_TOKEN"):
        env.pop(var, None)
    return cli.kc(*args, env=env, cwd=cwd, timeout=120)


def ok(*args: str, cwd: Path) -> str:
    out = run(*args, cwd=cwd)
    assert out.returncode == 0, (args, out.stderr)
    return out.stdout


@dataclass
class Ledger:
    dir: Path
    secret: str
    bundle_id: str

    @property
    def path(self) -> Path:
        return self.dir / "ledger.db"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """A sender's ledger: a seal (with a sentinel secret), two revocations."""
    for name in ("partner", "platform"):
        ok("identity", "new", "-o", f"{name}.kcid", "--work-factor", "10", cwd=tmp_path)
    recipient = json.loads(ok("identity", "show", "platform.kcid", "--json", cwd=tmp_path))[
        "recipient"
    ]
    secret = "".join(secrets.choice(ALNUM) for _ in range(40))
    (tmp_path / "secret.txt").write_text(secret + "\n")
    client_id = "AB" + "".join(secrets.choice(ALNUM) for _ in range(48))
    ok(
        "seal", "--platform", "quickbooks", "--client-id", client_id,
        "--client-secret-file", "secret.txt", "--environment", "production",
        "--attested-by", "Test Lead", "--identity", "partner.kcid", "-r", recipient,
        "--partner", "Acme <Ltd>", "-o", "handover.kcb",
        cwd=tmp_path,
    )  # fmt: skip
    bundle_id = json.loads(ok("inspect", "handover.kcb", "--json", cwd=tmp_path))["manifest"][
        "bundle_id"
    ]
    for bid in ("kcb-1", "kcb-2"):
        ok("revoke", bid, "--reason", "sent to the wrong person", cwd=tmp_path)
    return Ledger(tmp_path, secret, bundle_id)


def test_checkpoint_key_and_proofs_verify_in_go(ledger: Ledger, go_tlogcheck: TlogCheck) -> None:
    cp = ok("audit", "checkpoint", cwd=ledger.dir)
    vkey = ok("audit", "key", cwd=ledger.dir).strip()
    verifier = note.parse_vkey(vkey)
    body = checkpoint.parse(note.open_note(cp, [verifier]).text)
    assert body.origin == verifier.name
    assert body.size == 3
    proofs = json.loads(ok("audit", "prove", ledger.bundle_id, "--json", cwd=ledger.dir))
    assert [p["logIndex"] for p in proofs] == [0]
    assert proofs[0]["checkpoint"] == cp
    assert json.loads(proofs[0]["body"])["bundle_id"] == ledger.bundle_id
    request = {"vkey": vkey, "checkpoint": cp, "inclusion": proofs}
    result = go_tlogcheck.run(request)
    assert result.code == 0, result.err
    every = json.loads(ok("audit", "prove", "--seq", "3", "--json", cwd=ledger.dir))
    assert go_tlogcheck.run({"vkey": vkey, "checkpoint": cp, "inclusion": every}).code == 0
    bad = [{**every[0], "body": every[0]["body"].replace("kcb-2", "kcb-9")}]
    assert go_tlogcheck.run({"vkey": vkey, "checkpoint": cp, "inclusion": bad}).code == 1
    text = ok("audit", "prove", "--seq", "2", cwd=ledger.dir)
    assert "verified" in text


def test_prove_against_an_older_exported_checkpoint(ledger: Ledger) -> None:
    (ledger.dir / "cp3").write_text(ok("audit", "checkpoint", cwd=ledger.dir))
    ok("revoke", "kcb-3", "--reason", "later", cwd=ledger.dir)
    proofs = json.loads(
        ok("audit", "prove", "--seq", "2", "--checkpoint", "cp3", "--json", cwd=ledger.dir)
    )
    assert proofs[0]["treeSize"] == 3
    out = run("audit", "prove", "--seq", "4", "--checkpoint", "cp3", cwd=ledger.dir)
    assert out.returncode == 2
    assert "not in the tree of size 3" in out.stderr


def test_consistency_since_an_exported_checkpoint(ledger: Ledger, go_tlogcheck: TlogCheck) -> None:
    (ledger.dir / "cp3").write_text(ok("audit", "checkpoint", cwd=ledger.dir))
    shutil.copy(ledger.path, ledger.dir / "old.db")
    for i in range(5):
        ok("revoke", f"kcb-{10 + i}", "--reason", "later", cwd=ledger.dir)
    ok("audit", "verify", "--since", "cp3", cwd=ledger.dir)
    # Go checks the same consistency proof between the two signed tree heads.
    cp8 = ok("audit", "checkpoint", cwd=ledger.dir)
    vkey = ok("audit", "key", cwd=ledger.dir).strip()
    old = checkpoint.parse(
        note.open_note((ledger.dir / "cp3").read_text(), [note.parse_vkey(vkey)]).text
    )
    new = checkpoint.parse(note.open_note(cp8, [note.parse_vkey(vkey)]).text)
    conn = sqlite3.connect(ledger.path)

    def node(level: int, idx: int) -> bytes:
        return stored_node(conn, level, idx)

    proof = merkle.consistency_proof(old.size, new.size, node)
    conn.close()
    request = {
        "vkey": vkey,
        "checkpoint": cp8,
        "inclusion": [],
        "consistency": {
            "old": old.size,
            "new": new.size,
            "oldRoot": old.root_hash.hex(),
            "newRoot": new.root_hash.hex(),
            "hashes": [h.hex() for h in proof],
        },
    }
    assert go_tlogcheck.run(request).code == 0
    # Rolled back to the older copy: caught with no Vault.
    shutil.copy(ledger.dir / "old.db", ledger.path)
    (ledger.dir / "cp8").write_text(cp8)
    out = run("audit", "verify", "--since", "cp8", cwd=ledger.dir)
    assert out.returncode == 4
    assert "signed 8 events but the ledger has 3" in out.stderr


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def test_pack_verifies_offline_and_holds_no_secret(ledger: Ledger) -> None:
    vkey = ok("audit", "key", cwd=ledger.dir).strip()
    ok("audit", "pack", "-o", "all.zip", cwd=ledger.dir)
    ok("audit", "pack", "-o", "one.zip", "--bundle", ledger.bundle_id, cwd=ledger.dir)
    ok("audit", "pack", "-o", "acme.zip", "--partner", "Acme <Ltd>", cwd=ledger.dir)
    elsewhere = ledger.dir / "auditor"
    elsewhere.mkdir()
    for name in ("all.zip", "one.zip", "acme.zip"):
        shutil.copy(ledger.dir / name, elsewhere / name)
    shutil.rmtree(ledger.dir / ".local", ignore_errors=True)
    ledger.path.rename(ledger.dir / "moved.db")  # no ledger where the auditor runs
    result = json.loads(
        ok("audit", "verify-pack", "all.zip", "--key", vkey, "--json", cwd=elsewhere)
    )
    assert result["events"] == 3
    assert result["policies"] == 1
    assert result["key_pinned"] is True
    assert (
        json.loads(ok("audit", "verify-pack", "one.zip", "--key", vkey, "--json", cwd=elsewhere))[
            "events"
        ]
        == 1
    )
    assert (
        json.loads(ok("audit", "verify-pack", "acme.zip", "--json", cwd=elsewhere))["events"] == 1
    )
    for name in ("all.zip", "one.zip"):
        blob = b"".join(_members(elsewhere / name).values())
        assert ledger.secret.encode() not in blob
        assert ledger.secret.encode() not in (elsewhere / name).read_bytes()
    key_file = key_path_for(ledger.dir / "moved.db").with_name("ledger.db.key").read_text()
    assert key_file.split()[1].encode() not in b"".join(_members(elsewhere / "all.zip").values())


def test_an_altered_pack_or_another_key_is_exit_4(ledger: Ledger) -> None:
    vkey = ok("audit", "key", cwd=ledger.dir).strip()
    ok("audit", "pack", "-o", "all.zip", cwd=ledger.dir)
    members = _members(ledger.dir / "all.zip")
    members["events.txt"] = members["events.txt"].replace(b"kcb-2", b"kcb-7")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    (ledger.dir / "bad.zip").write_bytes(out.getvalue())
    bad = run("audit", "verify-pack", "bad.zip", "--key", vkey, cwd=ledger.dir)
    assert bad.returncode == 4
    assert "the evidence pack does not verify" in bad.stderr
    other = note.Signer(note.parse_vkey(vkey).name, bytes(32)).verifier.vkey()
    wrong = run("audit", "verify-pack", "all.zip", "--key", other, cwd=ledger.dir)
    assert wrong.returncode == 4
    assert "pinned key" in wrong.stderr
    junk = run("audit", "verify-pack", "all.zip", "--key", "kc1:abc", cwd=ledger.dir)
    assert junk.returncode == 2


def test_report_is_written_and_escapes_ledger_text(ledger: Ledger) -> None:
    ok("audit", "report", "-o", "report.html", cwd=ledger.dir)
    page = (ledger.dir / "report.html").read_text()
    assert "Verified" in page
    assert "Acme &lt;Ltd&gt;" in page
    assert "<Ltd>" not in page
    only = run("audit", "report", "-o", "none.html", "--partner", "Nobody", cwd=ledger.dir)
    assert only.returncode == 0
    assert "No handover events." in (ledger.dir / "none.html").read_text()


def test_a_schema_1_ledger_gains_its_tree(ledger: Ledger) -> None:
    """A ledger from before the Merkle tree: its tables and column dropped, version 1 again."""
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    for table in ("notes", "policies"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("ALTER TABLE events DROP COLUMN nodes")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    report = json.loads(ok("audit", "verify", "--json", cwd=ledger.dir))
    assert report["ok"] is True
    cp = ok("audit", "checkpoint", cwd=ledger.dir)
    assert "\n3\n" in cp
    proofs = json.loads(ok("audit", "prove", "--seq", "1", "--json", cwd=ledger.dir))
    assert proofs[0]["treeSize"] == 3
    conn = sqlite3.connect(ledger.path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    conn.close()


def back_to_schema_2(path: Path) -> None:
    """Turn a schema-3 ledger into the schema-2 layout: its Merkle nodes in a `tree` table."""
    conn = sqlite3.connect(path, isolation_level=None)
    size = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    nodes = [
        (lv, ix, stored_node(conn, lv, ix))
        for lv in range(size.bit_length())
        for ix in range(size >> lv)
    ]
    conn.execute(
        "CREATE TABLE tree (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,"
        " PRIMARY KEY (level, idx)) WITHOUT ROWID"
    )
    conn.executemany("INSERT INTO tree VALUES (?, ?, ?)", nodes)
    conn.execute("ALTER TABLE events DROP COLUMN nodes")
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()


def test_processes_that_open_a_schema_2_ledger_together_both_succeed(ledger: Ledger) -> None:
    """Both wait for a writer; the second finds the ledger migrated and goes on."""
    back_to_schema_2(ledger.path)
    env = {**os.environ, "HOME": str(ledger.dir), "KEYCOURIER_LEDGER": str(ledger.path)}
    for var in ("VAULT_ADDR", "VAULT_TOKEN"):
        env.pop(var, None)
    hold = sqlite3.connect(ledger.path, isolation_level=None)
    hold.execute("BEGIN IMMEDIATE")  # another writer is busy
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "keycourier", "audit", "verify"],
                env=env,
                cwd=ledger.dir,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        time.sleep(1.5)
    finally:
        hold.execute("ROLLBACK")
        hold.close()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE tree SET hash = 'x' WHERE level = 0 AND idx = 0",
        "UPDATE tree SET level = 'a' WHERE level = 0 AND idx = 1",
        "UPDATE tree SET hash = 64 WHERE level = 0 AND idx = 2",
        "DELETE FROM tree WHERE level = 1",
    ],
)
def test_a_damaged_schema_2_tree_is_exit_4_and_not_migrated(ledger: Ledger, damage: str) -> None:
    back_to_schema_2(ledger.path)
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    conn.execute(damage)
    conn.close()
    out = run("audit", "verify", cwd=ledger.dir)
    assert out.returncode == 4, out.stderr
    assert "damaged" in out.stderr
    conn = sqlite3.connect(ledger.path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"
    conn.close()


def test_a_ledger_without_its_nodes_column_is_exit_4(ledger: Ledger) -> None:
    conn = sqlite3.connect(ledger.path, isolation_level=None)
    conn.execute("ALTER TABLE events DROP COLUMN nodes")
    conn.close()
    out = run("audit", "verify", cwd=ledger.dir)
    assert out.returncode == 4, out.stderr
    assert "lacks a column" in out.stderr


def test_a_schema_2_ledger_moves_its_tree_into_the_event_rows(ledger: Ledger) -> None:
    """Schema 2 kept the tree in its own table; opening moves every node into the row of
    the event whose append completed it, and the proofs stay the same."""
    before = json.loads(ok("audit", "prove", "--seq", "2", "--json", cwd=ledger.dir))
    back_to_schema_2(ledger.path)
    assert json.loads(ok("audit", "verify", "--json", cwd=ledger.dir))["ok"] is True
    after = json.loads(ok("audit", "prove", "--seq", "2", "--json", cwd=ledger.dir))
    assert [p["hashes"] for p in after] == [p["hashes"] for p in before]
    conn = sqlite3.connect(ledger.path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    assert "tree" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    # the append-only trigger lifted for the move is back
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET nodes = NULL WHERE seq = 1")
    conn.close()
