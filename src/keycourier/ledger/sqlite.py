"""The SQLite ledger: append-only, hash-chained, checkpoints signed with Ed25519.

Layout (schema version 3; docs/audit.md describes the Merkle tree and its signed heads):

- ``meta(key, value)``: ``schema_version``, ``ledger_id`` (random, names this
  ledger in Vault records), ``public_key`` (hex Ed25519 checkpoint key),
  ``created_at``.
- ``events(seq, body, prev_hash, hash, nodes)``: the chain. ``body`` is the
  canonical JSON of the event (see ``chain.py``); bundle and fingerprint
  look-ups use expression indexes over it, so there is no second copy of a
  field that could disagree with the hashed body. ``nodes``: the Merkle
  hashes this event's append completed. Triggers refuse UPDATE and DELETE.
- ``notes(size, note)``: signed tree heads (C2SP checkpoints);
  ``policies(digest, canonical)``: the policies in force. Append-only.
- ``checkpoints(seq, head_hash, signed_at, signature)``: signed chain heads,
  append-only as well.
- ``delivery(seq, status, path, version, detail)``: where each event stands
  with Vault (pending / recorded / disabled). Deliberately outside the chain:
  it changes when ``sync`` runs, and ``audit verify --vault`` re-checks it
  against Vault itself.

The checkpoint signing key is a 0600 file beside the ledger
(``<ledger>.key``), created with it; its public half is in ``meta``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from keycourier._record import record
from keycourier.errors import ConfigError, IntegrityError, UnavailableError
from keycourier.files import create_private, make_private_dirs
from keycourier.ledger import chain
from keycourier.ledger.interface import Event, StoredEvent, VaultStatus
from keycourier.tlog import checkpoint as tlog_checkpoint
from keycourier.tlog import merkle, note

if TYPE_CHECKING:
    import sqlite_utils

# 2: the Merkle tree, signed tree heads (notes), policies; 3: the tree's hashes in the row
# of the event whose append completed them (events.nodes), so an append writes one row
SCHEMA_VERSION = 3
CHECKPOINT_EVERY = 1000
KEY_HEADER = "keycourier-ledger-key-v1"
KEY_FILE_MAX = 4096

_LEDGER_TABLES = frozenset({"meta", "events", "checkpoints", "delivery"})
_V2_TABLES = frozenset({"notes", "policies"})
_META_FORMAT = {
    "schema_version": r"[0-9]{1,6}",
    "ledger_id": r"[0-9a-f]{16}",
    "public_key": r"[0-9a-f]{64}",
    "created_at": r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{8,15}Z",
}

_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'keycourier ledger events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'keycourier ledger events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'keycourier ledger checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'keycourier ledger checkpoints are append-only'); END;
"""


_V2_SCHEMA = """
CREATE TABLE IF NOT EXISTS tree (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notes (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (digest TEXT PRIMARY KEY, canonical TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS tree_no_update BEFORE UPDATE ON tree
BEGIN SELECT RAISE(ABORT, 'keycourier ledger tree hashes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS tree_no_delete BEFORE DELETE ON tree
BEGIN SELECT RAISE(ABORT, 'keycourier ledger tree hashes are append-only'); END;
CREATE TRIGGER IF NOT EXISTS notes_no_update BEFORE UPDATE ON notes
BEGIN SELECT RAISE(ABORT, 'keycourier ledger checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS notes_no_delete BEFORE DELETE ON notes
BEGIN SELECT RAISE(ABORT, 'keycourier ledger checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS policies_no_update BEFORE UPDATE ON policies
BEGIN SELECT RAISE(ABORT, 'keycourier ledger policies are append-only'); END;
CREATE TRIGGER IF NOT EXISTS policies_no_delete BEFORE DELETE ON policies
BEGIN SELECT RAISE(ABORT, 'keycourier ledger policies are append-only'); END;
"""
ORIGIN_PREFIX = "keycourier/ledger/"
# From this many events on, `audit verify` checks the hash chain in a second process, which
# also hashes the last Merkle leaves (about TAIL_SHARE of them) while this one hashes the
# others and builds their part of the tree (below it, starting the process costs more than
# it saves). The share balances the two processes: the chain costs about as much as
# fetching and hashing the leaves, the tree about half of that.
PARALLEL_VERIFY_MIN = 100_000
TAIL_SHARE = 0.1
# The chain check that process runs: standard library only (``python -I -S -c``), reading
# the ledger at argv[1] with its own read-only connection, in one read transaction (one
# snapshot), from the genesis link argv[2]; the leaf hashes of the events after seq argv[3].
# Prints one JSON line {"ok", "count", "head", "leaves"}, then the leaf hashes (32 bytes
# each, in seq order).
_CHAIN_WALK = """
import hashlib, json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=10.0, isolation_level=None)
conn.execute("PRAGMA query_only = 1")
conn.execute("BEGIN")
sha256, prev, count, ok = hashlib.sha256, sys.argv[2].encode(), 0, True
split = int(sys.argv[3])
leaves = []
add_leaf = leaves.append
try:
    cur = conn.execute(
        "SELECT CAST(body AS BLOB), hash FROM events WHERE seq <= ? ORDER BY seq", (split,)
    )
    cur.arraysize = 4096
    while ok and (rows := cur.fetchmany()):
        count += len(rows)
        for body, digest in rows:
            if sha256(prev + body).hexdigest() != digest:
                ok = False
                break
            prev = digest.encode()
    cur = conn.execute(
        "SELECT CAST(body AS BLOB), hash FROM events WHERE seq > ? ORDER BY seq", (split,)
    )
    cur.arraysize = 4096
    while ok and (rows := cur.fetchmany()):
        count += len(rows)
        for body, digest in rows:
            if sha256(prev + body).hexdigest() != digest:
                ok = False
                break
            add_leaf(sha256(b"\\x00" + body).digest())
            prev = digest.encode()
except (TypeError, AttributeError):
    ok = False
conn.execute("COMMIT")
out = sys.stdout.buffer
out.write(json.dumps({"ok": ok, "count": count, "head": prev.decode(), "leaves": len(leaves)})
          .encode() + b"\\n")
out.write(b"".join(leaves))
out.flush()
"""


@record
class ChainBreak:
    seq: int
    reason: str


@record
class ChainReport:
    events: int
    checkpoints: int
    head_seq: int
    head_hash: str
    public_key: str
    unsigned_tail: int  # events after the last valid checkpoint
    first_break: ChainBreak | None
    interval: int = CHECKPOINT_EVERY  # a longer unsigned tail is a break

    @property
    def ok(self) -> bool:
        return self.first_break is None


@record
class Delivery:
    stored: StoredEvent
    path: str | None
    version: int | None
    body: str = ""


def key_path_for(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + ".key")


def _pending_key_path(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.name + ".key.new")


def _now() -> str:
    return chain.format_time(datetime.now(UTC))


class _TreeWork:
    """What ``verify`` computes of the tree while the chain is walked in another process."""

    levels: list[list[bytes]] | None = None
    heads: list[tuple[int, tlog_checkpoint.Checkpoint | str]] | None = None


class SqliteLedger:
    """One ledger file. Not thread-safe: use it from one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = not path.exists()
        if fresh:
            try:
                make_private_dirs(path.parent)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the ledger directory {path.parent}: {exc.strerror}"
                ) from None
        try:
            self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the ledger {path}: {exc}") from None
        if fresh:
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
        self._db: sqlite_utils.Database | None = None
        try:
            # What sqlite_utils.Database sets up, with stdlib sqlite3 only: opening an
            # existing ledger (audit verify, a record) never imports sqlite_utils.
            self.conn.execute("PRAGMA recursive_triggers = on")
            self.conn.execute("PRAGMA busy_timeout = 10000")
            if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.conn.execute("PRAGMA journal_mode = wal")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise ConfigError(f"{path} is not a usable keycourier ledger: {exc}") from None
        try:
            meta = self._check_meta()
        except BaseException:
            self.conn.close()
            raise
        self.ledger_id: str = meta["ledger_id"]
        self.public_key: str = meta["public_key"]
        self._signing_key: bytes | None = None
        self.appended_since_checkpoint = 0
        # (size, right edge) after this process's last append: saves the reads of the next
        self._frontier: tuple[int, dict[int, bytes]] | None = None

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, imported on first use (creating a ledger)."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    # -- schema ---------------------------------------------------------------------

    def _damaged(self, why: str) -> IntegrityError:
        return IntegrityError(
            f"ledger {self.path} is damaged: {why}",
            hints=[
                "keycourier never re-creates or repairs an existing ledger; keep the file and "
                "its key for investigation and restore both from a backup"
            ],
        )

    def _table_names(self) -> set[str]:
        """The database's tables, read with the stdlib (sqlite_utils stays unloaded)."""
        rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(name) for (name,) in rows}

    def _schema_version(self) -> int:
        """0 for a brand-new (empty) database, else the version ``meta`` records.

        A database that holds any of the ledger's tables but no usable
        ``meta.schema_version`` is damaged (exit 4), never a new ledger: creating the
        tables again would fail, and a new key would hide what happened.
        """
        tables = self._table_names()
        if not tables:
            return 0
        if not tables & _LEDGER_TABLES:
            raise ConfigError(
                f"{self.path} is not a keycourier ledger (it holds other tables)",
                hints=["point --ledger (or KEYCOURIER_LEDGER) at a keycourier ledger file"],
            )
        if "meta" not in tables:
            raise self._damaged("its meta table is missing")
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise self._damaged("meta has no schema_version")
        if not re.fullmatch(_META_FORMAT["schema_version"], str(row[0])):
            raise self._damaged("meta.schema_version is not a number")
        version = int(str(row[0]))
        if version < 1:
            raise self._damaged(f"meta.schema_version is {version}, which never existed")
        return version

    def _migrate(self) -> None:
        version = self._schema_version()
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} has ledger schema version {version}, newer than this keycourier "
                f"knows ({SCHEMA_VERSION})",
                hints=["upgrade keycourier; it never downgrades or rewrites a newer ledger"],
            )
        if version == SCHEMA_VERSION:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        created = False
        try:
            found = self._schema_version()
            if found == 0:
                self._create_v1()
                self._create_v2()
                created = True
            elif found == 1:
                self._create_v2()
            if found < 3:  # another process may have migrated while this one waited
                self._create_v3()
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        if created:
            self._finish_key()

    def _finish_key(self) -> bool:
        """Give a committed ledger's <key>.new its name; False when there is none to give.

        Only a pending key whose public half is the one in ``meta`` is taken (a creation
        killed between its commit and this rename); it never replaces an existing key.
        """
        from nacl.signing import SigningKey

        pending = _pending_key_path(self.path)
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'public_key'").fetchone()
        try:
            lines = pending.read_bytes()[: KEY_FILE_MAX + 1].split()
            seed = bytes.fromhex(lines[1].decode("ascii")) if len(lines) == 2 else b""
        except (OSError, ValueError, UnicodeDecodeError):
            return False
        if (
            row is None
            or len(seed) != 32
            or lines[0] != KEY_HEADER.encode()
            or SigningKey(seed).verify_key.encode().hex() != str(row[0])
        ):
            return False
        try:
            os.link(pending, key_path_for(self.path))  # never over an existing key
        except OSError:
            return False
        with contextlib.suppress(OSError):
            pending.unlink()
        return True

    def _create_v2(self) -> None:
        """The Merkle tree over the events (built from those already there), the signed
        tree heads and the policies in force; inside the migration's transaction."""
        for stmt in _V2_SCHEMA.strip().split(";\n"):
            stmt = stmt.strip().removesuffix(";")
            if stmt:
                self.conn.execute(stmt + (";" if stmt.endswith("END") else ""))
        hashes: dict[tuple[int, int], bytes] = {}
        rows = self.conn.execute("SELECT CAST(body AS BLOB) FROM events ORDER BY seq")
        for size, (body,) in enumerate(rows):
            for level, idx, value in merkle.stored_after_append(
                size, merkle.leaf_hash(body), lambda lv, ix: hashes[(lv, ix)]
            ):
                hashes[(level, idx)] = value
        self.conn.executemany(
            "INSERT INTO tree (level, idx, hash) VALUES (?, ?, ?)",
            [(lv, ix, h) for (lv, ix), h in hashes.items()],
        )
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )

    def _create_v3(self) -> None:
        """Move the tree's hashes into ``events.nodes`` (inside the migration's transaction).

        The append of leaf ``i`` completes the leaf and the subtrees it closes, levels 0 to
        the number of trailing 1 bits of ``i``; their hashes go in that event's row, level 0
        first. The row is written once with the event, so an append dirties no page but
        the events' (schema 2 kept a separate ``tree`` table, a second B-tree to update).
        """
        self.conn.execute("ALTER TABLE events ADD COLUMN nodes BLOB")
        hashes: dict[tuple[int, int], bytes] = {}
        for lv, ix, h in self.conn.execute("SELECT level, idx, hash FROM tree"):
            if (
                type(lv) is not int
                or type(ix) is not int
                or not isinstance(h, bytes)
                or len(h) != merkle.HASH_SIZE
            ):
                raise self._damaged("its Merkle tree holds a malformed node")
            hashes[(lv, ix)] = h
        count = int(self.conn.execute("SELECT count(*) FROM events").fetchone()[0])
        rows: list[tuple[bytes, int]] = []
        for index in range(count):
            try:
                rows.append((b"".join(hashes[key] for key in _completed(index)), index + 1))
            except KeyError:
                raise self._damaged(f"its Merkle tree lacks a node of event #{index + 1}") from None
        # the one rewrite the events table ever gets: its append-only trigger is lifted for
        # this transaction and put back before it commits
        self.conn.execute("DROP TRIGGER IF EXISTS events_no_update")
        self.conn.executemany("UPDATE events SET nodes = ? WHERE seq = ?", rows)
        self.conn.execute(_TRIGGERS.split("END;")[0] + "END;")  # events_no_update
        self.conn.execute("DROP TRIGGER IF EXISTS tree_no_update")
        self.conn.execute("DROP TRIGGER IF EXISTS tree_no_delete")
        self.conn.execute("DROP TABLE tree")
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )

    def _check_meta(self) -> dict[str, str]:
        """The fixed ``meta`` entries, each present and well-formed, and the chain's tables."""
        missing = sorted((_LEDGER_TABLES | _V2_TABLES) - self._table_names())
        if missing:
            raise self._damaged(f"its {missing[0]} table is missing")
        columns = {str(row[1]) for row in self.conn.execute("PRAGMA table_info(events)")}
        if not {"seq", "body", "prev_hash", "hash", "nodes"} <= columns:
            raise self._damaged("its events table lacks a column")
        meta = {str(k): str(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}
        for key, pattern in _META_FORMAT.items():
            value = meta.get(key)
            if value is None:
                raise self._damaged(f"meta has no {key}")
            if not re.fullmatch(pattern, value):
                raise self._damaged(f"meta.{key} is malformed")
        return meta

    def _create_v1(self) -> None:
        import secrets  # with random and base64: only when a ledger is created

        from nacl.signing import SigningKey

        db = self.db
        db.table("meta").create({"key": str, "value": str}, pk="key")
        db.table("events").create(
            {"seq": int, "body": str, "prev_hash": str, "hash": str},
            pk="seq",
            not_null={"body", "prev_hash", "hash"},
        )
        db.table("checkpoints").create(
            {"seq": int, "head_hash": str, "signed_at": str, "signature": str},
            pk="seq",
            not_null={"head_hash", "signed_at", "signature"},
        )
        db.table("delivery").create(
            {"seq": int, "status": str, "path": str, "version": int, "detail": str},
            pk="seq",
            not_null={"status"},
        )
        self.conn.execute("CREATE INDEX events_bundle ON events(json_extract(body, '$.bundle_id'))")
        self.conn.execute(
            "CREATE INDEX events_fingerprint ON events(json_extract(body, '$.fingerprint'))"
        )
        db.table("delivery").create_index(["status"])
        db.table("delivery").create_index(["path", "version"])
        for stmt in _TRIGGERS.strip().split("END;"):
            if stmt.strip():
                self.conn.execute(stmt + "END;")
        key_path = key_path_for(self.path)
        if key_path.exists():
            raise ConfigError(
                f"{key_path} already exists but the ledger {self.path} is new",
                hints=["move the stale key file away; it belongs to another ledger"],
            )
        # The key is written as <key>.new and takes its name only once the ledger that
        # names it is committed (_finish_key), so a creation killed half-way leaves no
        # key that looks like an existing ledger's. A <key>.new found now belongs to no
        # ledger (this database is empty): a creation that died before its commit.
        pending = _pending_key_path(self.path)
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        seed = secrets.token_bytes(32)
        create_private(pending, f"{KEY_HEADER}\n{seed.hex()}\n".encode("ascii"))
        public = SigningKey(seed).verify_key.encode().hex()
        db.table("meta").insert_all(
            [
                {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                {"key": "ledger_id", "value": secrets.token_hex(8)},
                {"key": "public_key", "value": public},
                {"key": "created_at", "value": _now()},
            ]
        )

    # -- keys -----------------------------------------------------------------------

    def _read_seed(self) -> bytes:
        """The checkpoint key file's seed.

        IntegrityError when the file is missing or is not a ledger key (it was removed
        or replaced: keycourier never makes a new key for an existing ledger),
        ConfigError when it exists but cannot be read (permissions).
        """
        key_path = key_path_for(self.path)
        restore = (
            f"restore {key_path.name} from a backup: keycourier creates a checkpoint key only "
            "with a new ledger, never for an existing one (if the key is lost for good, move "
            "the ledger aside, keep it, and let the next command start a new one)"
        )
        try:
            with key_path.open("rb") as fh:
                raw = fh.read(KEY_FILE_MAX + 1)
        except FileNotFoundError:
            if self._finish_key():
                return self._read_seed()
            raise IntegrityError(
                f"the ledger's checkpoint key {key_path} is missing", hints=[restore]
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read the ledger checkpoint key {key_path}: {exc.strerror}"
            ) from None
        lines = raw.split()
        seed = b""
        if len(raw) <= KEY_FILE_MAX and len(lines) == 2 and lines[0] == KEY_HEADER.encode():
            with contextlib.suppress(ValueError):
                seed = bytes.fromhex(lines[1].decode("ascii", "replace"))
        if len(seed) != 32:
            raise IntegrityError(f"{key_path} is not a keycourier ledger key", hints=[restore])
        return seed

    def key_file_public(self) -> str:
        """The public half of the key file beside the ledger (hex); see :meth:`_read_seed`."""
        from nacl.signing import SigningKey

        return str(SigningKey(self._read_seed()).verify_key.encode().hex())

    def _key(self) -> bytes:
        """The signing seed, checked against the ledger's public key (IntegrityError if not)."""
        if self._signing_key is None:
            from nacl.signing import SigningKey

            seed = self._read_seed()
            if SigningKey(seed).verify_key.encode().hex() != self.public_key:
                raise IntegrityError(
                    f"{key_path_for(self.path)} does not match the ledger's public key: "
                    "the ledger or its key was replaced",
                    hints=[
                        "restore the ledger's own key from a backup; keycourier signs no "
                        "checkpoint with another key"
                    ],
                )
            self._signing_key = seed
        return self._signing_key

    def meta_value(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta_value(self, key: str, value: str) -> None:
        """Bookkeeping only (e.g. where the key is pinned); never the chain or its key."""
        if key in {"schema_version", "ledger_id", "public_key", "created_at"}:
            raise ValueError(f"meta {key} is fixed at creation")
        with self._tx():
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
            )

    # -- writing --------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise UnavailableError(f"the ledger {self.path} is busy: {exc}") from None
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def head(self) -> tuple[int, str]:
        row = self.conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, chain.GENESIS)

    def append(
        self,
        event: Event,
        status: VaultStatus,
        path: str | Callable[[int], str | None] | None,
    ) -> StoredEvent:
        return self.append_full(event, status, path)[0]

    def append_full(
        self,
        event: Event,
        status: VaultStatus,
        path: str | Callable[[int], str | None] | None,
    ) -> tuple[StoredEvent, str, str | None]:
        """Append one event (and its delivery row) atomically: (stored, body, path).

        ``path`` may be a function of the sequence number (event records are named by it).
        The checkpoint key is checked before the first append (exit 4 when it is missing
        or not the ledger's): events that could never be signed are not added. The head
        is signed in the same transaction as soon as it is ``CHECKPOINT_EVERY`` events past
        the last checkpoint, whoever wrote those events, so no more than that many stay
        unsigned.
        """
        self._key()
        with self._tx():
            seq, prev = self.head()
            seq += 1
            body = chain.event_body(event, seq=seq, ledger_id=self.ledger_id)
            where = path(seq) if callable(path) else path
            digest = chain.link_hash(prev, body)
            kept, self._frontier = self._frontier, None  # until the transaction commits
            frontier, nodes = self._grow(seq - 1, body.encode(), kept)
            self.conn.execute(
                "INSERT INTO events (seq, body, prev_hash, hash, nodes) VALUES (?, ?, ?, ?, ?)",
                (seq, body, prev, digest, nodes),
            )
            self.conn.execute(
                "INSERT INTO delivery (seq, status, path, version, detail)"
                " VALUES (?, ?, ?, NULL, '')",
                (seq, str(status), where),
            )
            signed = self._checkpoint_due(seq) and self._try_sign(seq, digest)
        self._frontier = (seq, frontier)
        self.appended_since_checkpoint = 0 if signed else self.appended_since_checkpoint + 1
        stored = StoredEvent(seq=seq, event=event, prev_hash=prev, hash=digest, vault_status=status)
        return stored, body, where

    def path_state(self, path: str, before: int) -> tuple[int | None, int]:
        """(highest delivered Vault version of ``path``, pending events before ``before``)."""
        row = self.conn.execute(
            "SELECT max(version), total(status = 'pending' AND seq < ?) FROM delivery"
            " WHERE path = ?",
            (before, path),
        ).fetchone()
        return (None if row[0] is None else int(row[0])), int(row[1])

    def mark_delivered(self, results: Sequence[tuple[int, int]]) -> None:
        """Record (seq, Vault version) pairs as delivered."""
        if not results:
            return
        with self._tx():
            self.conn.executemany(
                "UPDATE delivery SET status = 'recorded', version = ?, detail = '' WHERE seq = ?",
                [(version, seq) for seq, version in results],
            )

    def set_path(self, seq: int, path: str) -> None:
        """Move a pending event's delivery to another Vault path (a layout upgrade)."""
        with self._tx():
            self.conn.execute(
                "UPDATE delivery SET path = ? WHERE seq = ? AND status = 'pending'", (path, seq)
            )

    def pending_paths(self, folder: str, exact: str, before: int) -> set[str]:
        """Paths of events before ``before`` still pending under ``folder`` (a prefix ending
        in "/") or at ``exact``."""
        rows = self.conn.execute(
            "SELECT DISTINCT path FROM delivery WHERE status = 'pending' AND seq < ?"
            " AND (path = ? OR substr(path, 1, length(?)) = ?)",
            (before, exact, folder, folder),
        ).fetchall()
        return {str(r[0]) for r in rows}

    def checkpoints_after(self, seq: int) -> list[tuple[int, str, str, str]]:
        """(seq, head_hash, signed_at, signature) of every checkpoint after ``seq``."""
        rows = self.conn.execute(
            "SELECT seq, head_hash, signed_at, signature FROM checkpoints WHERE seq > ?"
            " ORDER BY seq",
            (seq,),
        ).fetchall()
        return [(int(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def mark_detail(self, seq: int, detail: str) -> None:
        with self._tx():
            self.conn.execute("UPDATE delivery SET detail = ? WHERE seq = ?", (detail[:300], seq))

    def checkpoint(self) -> int | None:
        """Sign the chain head and the tree head unless both are signed. Returns the seq.

        The head and the last checkpoint are read inside the write transaction that
        inserts the checkpoint: writers in other processes sign each head once.
        """
        self.appended_since_checkpoint = 0
        with self._tx():
            seq, head_hash = self.head()
            if seq == 0:
                return None
            if self._last_checkpoint() >= seq:
                if self.note_at(seq) is not None:
                    return None
                self._sign_tree(seq)  # a ledger that predates the tree: its first tree head
                return seq
            self._sign(seq, head_hash)
        return seq

    def _last_checkpoint(self) -> int:
        return int(self.conn.execute("SELECT max(seq) FROM checkpoints").fetchone()[0] or 0)

    def _checkpoint_due(self, seq: int) -> bool:
        """Whether the ledger (all writers together) has CHECKPOINT_EVERY unsigned events."""
        return seq - self._last_checkpoint() >= CHECKPOINT_EVERY

    def _try_sign(self, seq: int, head_hash: str) -> bool:
        """``_sign`` within an append: an unusable key skips it (close's checkpoint says why)."""
        try:
            self._sign(seq, head_hash)
        except (ConfigError, IntegrityError):
            return False
        return True

    def _sign(self, seq: int, head_hash: str) -> None:
        """Insert the checkpoint of head ``seq``; call inside ``_tx``."""
        from nacl.signing import SigningKey

        signed_at = _now()
        message = chain.checkpoint_message(self.ledger_id, seq, head_hash, signed_at)
        signature = SigningKey(self._key()).sign(message).signature.hex()
        self.conn.execute(
            "INSERT INTO checkpoints (seq, head_hash, signed_at, signature) VALUES (?, ?, ?, ?)",
            (seq, head_hash, signed_at, signature),
        )
        self._sign_tree(seq)

    # -- the Merkle tree and its signed heads -----------------------------------------

    @property
    def origin(self) -> str:
        """The log's origin line and note key name: ``keycourier/ledger/<ledger id>``."""
        return ORIGIN_PREFIX + self.ledger_id

    def verifier(self) -> note.Verifier:
        """The verifier of this ledger's signed tree heads (its key from ``meta``)."""
        return note.Verifier(self.origin, bytes.fromhex(self.public_key))

    def _sign_tree(self, size: int) -> None:
        """Insert the signed note of the tree of ``size`` events; call inside ``_tx``."""
        body = tlog_checkpoint.Checkpoint(self.origin, size, self.root_at(size)).text()
        signed = note.sign(body, [note.Signer(self.origin, self._key())])
        self.conn.execute("INSERT INTO notes (size, note) VALUES (?, ?)", (size, signed))

    def node(self, level: int, idx: int) -> bytes:
        """The stored hash of complete subtree ``(level, idx)``; IntegrityError when absent.

        It is in the row of the event whose append completed it: event ``(idx + 1) <<
        level``, at ``level * 32`` in its ``nodes``."""
        row = self.conn.execute(
            "SELECT nodes FROM events WHERE seq = ?", ((idx + 1) << level,)
        ).fetchone()
        at = level * merkle.HASH_SIZE
        if row is None or not isinstance(row[0], bytes) or len(row[0]) < at + merkle.HASH_SIZE:
            raise IntegrityError(
                f"ledger {self.path} is damaged: its Merkle tree lacks node ({level}, {idx})"
            )
        return bytes(row[0][at : at + merkle.HASH_SIZE])

    def _grow(
        self, index: int, body: bytes, kept: tuple[int, dict[int, bytes]] | None
    ) -> tuple[dict[int, bytes], bytes]:
        """Append leaf ``index`` (the event ``body``): (the new right edge of the tree, the
        hashes it completes, leaf first).

        The right edge (one complete subtree per 1 bit of the size) is ``kept`` from this
        process's last append when no other writer appended since (it is updated in place),
        else read back."""
        leaf = merkle.leaf_hash(body)
        if kept is not None and kept[0] == index:
            edge = kept[1]
        else:
            edge = {
                lv: self.node(lv, (index >> lv) - 1)
                for lv in range(index.bit_length())
                if index >> lv & 1
            }
        level, current, done = 0, leaf, [leaf]
        while index >> level & 1:
            current = merkle.node_hash(edge.pop(level), current)
            level += 1
            done.append(current)
        edge[level] = current
        return edge, b"".join(done)

    def root_at(self, size: int) -> bytes:
        return merkle.root_hash(size, self.node)

    def note_at(self, size: int) -> str | None:
        row = self.conn.execute("SELECT note FROM notes WHERE size = ?", (size,)).fetchone()
        return None if row is None else str(row[0])

    def latest_note(self) -> tuple[int, str] | None:
        """(size, signed note) of the newest signed tree head."""
        row = self.conn.execute(
            "SELECT size, note FROM notes ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def notes(self) -> list[tuple[int, str]]:
        return [(int(a), str(b)) for a, b in self.conn.execute("SELECT size, note FROM notes")]

    def event_body(self, seq: int) -> str | None:
        row = self.conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    def remember_policy(self, digest: str, canonical: str) -> None:
        """Keep the canonical text of a policy in force (for evidence packs), once."""
        with self._tx():
            self.conn.execute(
                "INSERT OR IGNORE INTO policies (digest, canonical) VALUES (?, ?)",
                (digest, canonical),
            )

    def policy_text(self, digest: str) -> str | None:
        row = self.conn.execute(
            "SELECT canonical FROM policies WHERE digest = ?", (digest,)
        ).fetchone()
        return None if row is None else str(row[0])

    def check_key(self) -> None:
        """IntegrityError unless the key file beside the ledger is the ledger's own key."""
        self._key()

    # -- reading --------------------------------------------------------------------

    def _stored(self, row: tuple[int, str, str, str, str | None]) -> StoredEvent:
        seq, body, prev, digest, status = row
        _, _, event = chain.parse_body(body)
        return StoredEvent(
            seq=int(seq),
            event=event,
            prev_hash=prev,
            hash=digest,
            vault_status=VaultStatus(status or "disabled"),
        )

    _SELECT = (
        "SELECT e.seq, e.body, e.prev_hash, e.hash, d.status"
        " FROM events e LEFT JOIN delivery d ON d.seq = e.seq"
    )

    def history(
        self, *, bundle_id: str | None = None, fingerprint: str | None = None
    ) -> list[StoredEvent]:
        clauses: list[str] = []
        params: list[str] = []
        if bundle_id is not None:
            clauses.append("json_extract(e.body, '$.bundle_id') = ?")
            params.append(bundle_id)
        if fingerprint is not None:
            clauses.append("json_extract(e.body, '$.fingerprint') = ?")
            params.append(fingerprint)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self.conn.execute(f"{self._SELECT}{where} ORDER BY e.seq", params).fetchall()
        return [self._stored(r) for r in rows]

    def history_by_data(self, name: str, value: str) -> list[StoredEvent]:
        """The events whose ``data.<name>`` is ``value`` (a full scan: audit look-ups of
        connection and entity IDs only); ``name`` is an identifier, never user input."""
        if re.fullmatch(r"[a-z_]{1,64}", name) is None:
            raise ValueError(f"not a data field name: {name!r}")
        rows = self.conn.execute(
            f"{self._SELECT} WHERE json_extract(e.body, '$.data.{name}') = ? ORDER BY e.seq",
            (value,),
        ).fetchall()
        return [self._stored(r) for r in rows]

    def iter_all(self) -> Iterator[StoredEvent]:
        for row in self.conn.execute(f"{self._SELECT} ORDER BY e.seq"):
            yield self._stored(row)

    def pending(self) -> list[Delivery]:
        rows = self.conn.execute(
            "SELECT e.seq, e.body, e.prev_hash, e.hash, d.status, d.path FROM events e "
            "JOIN delivery d ON d.seq = e.seq WHERE d.status = 'pending' ORDER BY e.seq"
        ).fetchall()
        return [Delivery(self._stored(r[:5]), r[5], None, r[1]) for r in rows]

    def pending_count(self) -> int:
        return int(
            self.conn.execute("SELECT count(*) FROM delivery WHERE status = 'pending'").fetchone()[
                0
            ]
        )

    def has_pending_before(self, path: str, seq: int) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM delivery WHERE path = ? AND status = 'pending' AND seq < ? LIMIT 1",
            (path, seq),
        ).fetchone()
        return row is not None

    def known_version(self, path: str) -> int | None:
        row = self.conn.execute(
            "SELECT max(version) FROM delivery WHERE path = ?", (path,)
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def delivered(self) -> list[tuple[int, str, int, str, str, str]]:
        """(seq, path, version, body, prev_hash, hash) of every event marked recorded in Vault."""
        rows = self.conn.execute(
            "SELECT e.seq, d.path, d.version, e.body, e.prev_hash, e.hash FROM events e "
            "JOIN delivery d ON d.seq = e.seq WHERE d.status = 'recorded' ORDER BY e.seq"
        ).fetchall()
        return [(int(a), str(b), int(c), str(d), str(e), str(f)) for a, b, c, d, e, f in rows]

    def event_row(self, seq: int) -> tuple[str, str, str] | None:
        row = self.conn.execute(
            "SELECT body, prev_hash, hash FROM events WHERE seq = ?", (seq,)
        ).fetchone()
        return (str(row[0]), str(row[1]), str(row[2])) if row else None

    def delivery_of(self, seq: int) -> tuple[str, str | None, int | None]:
        row = self.conn.execute(
            "SELECT status, path, version FROM delivery WHERE seq = ?", (seq,)
        ).fetchone()
        if row is None:
            return ("missing", None, None)
        return (str(row[0]), row[1], None if row[2] is None else int(row[2]))

    # -- verification ---------------------------------------------------------------

    def verify(self) -> ChainReport:
        """Check every link and every checkpoint signature; report the first break."""
        from nacl.exceptions import BadSignatureError
        from nacl.signing import VerifyKey

        checkpoints = self.conn.execute(
            "SELECT seq, head_hash, signed_at, signature FROM checkpoints ORDER BY seq"
        ).fetchall()
        first: ChainBreak | None = None
        try:
            verify_key = VerifyKey(bytes.fromhex(self.public_key))
        except ValueError:
            return ChainReport(
                0, 0, 0, chain.GENESIS, self.public_key, 0, ChainBreak(0, "bad public key in meta")
            )
        # The key in meta is only as trustworthy as the file it sits in: an attacker who
        # rewrites the ledger can swap it and re-sign. The key file must be there and agree
        # with it (an exported checkpoint, `audit verify --since`, or the key pinned in
        # Vault, `--vault`, catches a key file and meta replaced together).
        try:
            file_key = self.key_file_public()
        except IntegrityError as exc:
            first = ChainBreak(0, exc.message)
        except ConfigError as exc:
            first = ChainBreak(0, f"the checkpoint key file is unusable: {exc.message}")
        else:
            if file_key != self.public_key:
                first = ChainBreak(
                    0,
                    f"the ledger's public key does not match its key file "
                    f"{key_path_for(self.path).name}: the ledger or the key was replaced",
                )
        wanted: dict[int, str] = {}  # checkpoint seq -> head hash, validly signed
        unsigned: list[ChainBreak] = []
        signatures_checked = False

        def check_signatures() -> None:  # once, as soon as the chain walk has started
            nonlocal signatures_checked
            if signatures_checked:
                return
            signatures_checked = True
            for cp_seq, cp_hash, signed_at, signature in checkpoints:
                message = chain.checkpoint_message(
                    self.ledger_id, int(cp_seq), str(cp_hash), str(signed_at)
                )
                try:
                    verify_key.verify(message, bytes.fromhex(str(signature)))
                except (BadSignatureError, ValueError):
                    unsigned.append(ChainBreak(int(cp_seq), "checkpoint signature is invalid"))
                    continue
                wanted[int(cp_seq)] = str(cp_hash)

        leaves: list[bytes] = []
        early = _TreeWork()

        def meanwhile() -> None:  # while the chain is walked elsewhere
            early.levels = merkle.levels_of(leaves)
            early.heads = self._open_heads()

        fast = self._fast_walk(wanted, leaves, check_signatures, meanwhile)
        check_signatures()
        for bad in unsigned:
            if first is None or bad.seq < first.seq:
                first = bad
        if fast is not None:
            count, prev = fast
            chain_break: ChainBreak | None = None
        else:
            leaves.clear()
            early = _TreeWork()
            chain_break, count, prev = self._walk(dict(wanted), leaves)
        if early.levels is None:
            levels = merkle.levels_of(leaves)
        else:
            levels = merkle.extend_levels(early.levels, leaves[len(early.levels[0]) :])
        heads = self._open_heads() if early.heads is None else early.heads
        for found in (chain_break, self._check_tree(len(leaves), levels, heads)):
            if found is not None and (first is None or found.seq < first.seq):
                first = found
        last_cp = max(wanted, default=0)
        tail = max(0, count - last_cp)
        if tail > CHECKPOINT_EVERY and (first is None or last_cp + 1 < first.seq):
            # Every command signs the head when it closes and every CHECKPOINT_EVERY events,
            # so a longer unsigned tail means checkpoints were removed (to rewrite or cut
            # what they signed), not a crash.
            first = ChainBreak(
                last_cp + 1,
                f"{tail} events from #{last_cp + 1} on are not signed by any checkpoint, "
                f"more than the checkpoint interval of {CHECKPOINT_EVERY}: checkpoints "
                "were removed or the chain was rewritten",
            )
        return ChainReport(
            events=count,
            checkpoints=len(checkpoints),
            head_seq=count,
            head_hash=prev,
            public_key=self.public_key,
            unsigned_tail=tail,
            first_break=first,
            interval=CHECKPOINT_EVERY,
        )

    def _open_heads(self) -> list[tuple[int, tlog_checkpoint.Checkpoint | str]]:
        """Every signed tree head by size: its checkpoint, or why it does not open."""
        verifier = self.verifier()
        heads: list[tuple[int, tlog_checkpoint.Checkpoint | str]] = []
        for size, text in sorted(self.notes()):
            try:
                heads.append((size, tlog_checkpoint.parse(note.open_note(text, [verifier]).text)))
            except (note.NoteError, tlog_checkpoint.CheckpointError) as exc:
                heads.append((size, str(exc)))
        return heads

    def _check_tree(
        self,
        count: int,
        levels: list[list[bytes]],
        heads: list[tuple[int, tlog_checkpoint.Checkpoint | str]],
    ) -> ChainBreak | None:
        """The Merkle tree and its signed heads against the events' leaf hashes.

        ``levels`` is the tree computed from the ``count`` events' leaves
        (``merkle.levels_of``), ``heads`` the signed tree heads (``_open_heads``). Every
        signed tree head must verify with the ledger's key and name the root of its first
        ``size`` events (computed from the events, not read); the stored tree must give
        the same root for all of them (a stored node that ``audit prove`` would read off
        the root's path is checked when it proves: it verifies what it prints against a
        signed head first).
        """

        def computed(level: int, idx: int) -> bytes:
            return levels[level][idx]

        first: ChainBreak | None = None
        for size, cp in heads:
            where = max(1, min(size, count))
            if isinstance(cp, str):
                return ChainBreak(where, f"the signed tree head of size {size} is invalid ({cp})")
            if cp.origin != self.origin or cp.size != size:
                return ChainBreak(where, f"the signed tree head of size {size} is of another log")
            if size > count:
                return ChainBreak(
                    count + 1, f"a signed tree head covers {size} events but the ledger has {count}"
                )
            if cp.root_hash != merkle.root_hash(size, computed):
                return ChainBreak(
                    where, f"the events differ from the signed tree head of size {size}"
                )
        if count:
            try:
                stored = self.root_at(count)
            except IntegrityError as exc:
                return ChainBreak(count, exc.message)
            if stored != merkle.root_hash(count, computed):
                first = ChainBreak(count, "the stored Merkle tree does not match the events")
        return first

    def _fast_walk(
        self,
        wanted: dict[int, str],
        leaves: list[bytes],
        prepare: Callable[[], None],
        meanwhile: Callable[[], None],
    ) -> tuple[int, str] | None:
        """The chain and the leaf hashes in one pass, or, for a large ledger on a machine
        with a second core, the chain in a helper process while this one hashes the leaves
        and runs ``meanwhile`` (its part of the tree check). ``prepare`` fills ``wanted``;
        it runs first (after starting the helper, when there is one)."""
        hi = self.conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        if hi >= PARALLEL_VERIFY_MIN and (os.cpu_count() or 1) > 1:
            return self._parallel_walk(wanted, leaves, meanwhile, prepare)
        prepare()
        return self._serial_walk(wanted, leaves)

    def _parallel_walk(
        self,
        wanted: dict[int, str],
        leaves: list[bytes],
        meanwhile: Callable[[], None] | None = None,
        prepare: Callable[[], None] | None = None,
    ) -> tuple[int, str] | None:
        """``_serial_walk``'s answer from two processes; None on any doubt (``_walk`` then
        re-examines the ledger in one pass and names the first break).

        The helper walks the whole chain and hashes the leaves after ``split``; this
        process runs ``prepare`` (which fills ``wanted``), hashes the leaves up to ``split``
        and runs ``meanwhile`` (with ``leaves`` holding those) before it waits. ``split``
        is a multiple of a large power of two, so the tree of the first leaves extends
        cheaply (``merkle.extend_levels``). The two parts must add up to the events both
        processes counted, or it is a doubt."""
        import json
        import subprocess
        import sys

        lo, hi, rows = self.conn.execute(
            "SELECT min(seq), max(seq), count(*) FROM events"
        ).fetchone()
        # every row is one of 1..hi: the helper's two ranges (seq <= split, seq > split)
        # then cover them all (a row whose seq is not an integer would be in neither)
        if lo not in (None, 1) or rows != (hi or 0):
            return None
        hi = int(hi or 0)
        split = int(hi * (1 - TAIL_SHARE))
        split -= split % (1 << max(0, split.bit_length() - 6))
        try:
            helper = subprocess.Popen(  # noqa: S603 - our own code, argv only
                [
                    sys.executable,
                    "-I",
                    "-S",
                    "-c",
                    _CHAIN_WALK,
                    str(self.path),
                    chain.GENESIS,
                    str(split),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            if prepare is not None:
                prepare()
            return self._serial_walk(wanted, leaves)
        try:
            if prepare is not None:
                prepare()
            sha256 = hashlib.sha256
            cur = self.conn.execute(
                "SELECT CAST(body AS BLOB) FROM events WHERE seq <= ? ORDER BY seq", (split,)
            )
            cur.arraysize = 4096
            try:
                add_leaf = leaves.append
                while rows := cur.fetchmany():
                    for (body,) in rows:
                        add_leaf(sha256(b"\x00" + body).digest())
            except TypeError:
                return None
            finally:
                cur.close()
            if len(leaves) != split:
                return None
            if meanwhile is not None:
                meanwhile()
            out, _ = helper.communicate(timeout=3600)
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
        header, _, tail = out.partition(b"\n")
        try:
            walked = json.loads(header)
            ok, count, head = bool(walked["ok"]), int(walked["count"]), str(walked["head"])
            theirs = int(walked["leaves"])
        except (ValueError, KeyError, TypeError):
            return None
        size = merkle.HASH_SIZE
        if (
            not ok
            or helper.returncode != 0
            or count != hi
            or theirs != hi - split
            or len(tail) != theirs * size
        ):
            return None
        leaves.extend(tail[i : i + size] for i in range(0, len(tail), size))
        if not self._heads_match(wanted):
            return None
        return count, head

    def _heads_match(self, wanted: dict[int, str]) -> bool:
        """Every validly signed chain checkpoint names the hash its event has."""
        heads = dict(
            self.conn.execute(
                "SELECT c.seq, e.hash FROM checkpoints c LEFT JOIN events e ON e.seq = c.seq"
            ).fetchall()
        )
        return all(heads.get(seq) == digest for seq, digest in wanted.items())

    def _serial_walk(self, wanted: dict[int, str], leaves: list[bytes]) -> tuple[int, str] | None:
        """The common case, as lean as the bare loop: (events, head hash), or None on any doubt.

        Sequence numbers are checked without a scan (INTEGER PRIMARY KEY: unique, so
        min 1 and max equal to the rows read means no gap), checkpoint heads by a join; the
        Python loop only hashes. Bodies come as the stored UTF-8 bytes (no decode and
        re-encode per row), in chunks, so rows are counted per chunk. Any failure (a
        mismatch, a non-text column, a non-UTF-8 database) is re-examined by ``_walk``,
        which decodes every row and names the first broken event.
        """
        lo, hi = self.conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
        if lo is not None and lo != 1:
            return None
        sha256 = hashlib.sha256
        prev = chain.GENESIS.encode()
        count = 0
        cur = self.conn.execute("SELECT CAST(body AS BLOB), hash FROM events ORDER BY seq")
        cur.arraysize = 4096
        try:
            add_leaf = leaves.append
            while rows := cur.fetchmany():
                count += len(rows)
                for body, digest in rows:
                    if sha256(prev + body).hexdigest() != digest:
                        return None
                    add_leaf(sha256(b"\x00" + body).digest())
                    prev = digest.encode()
        except (TypeError, AttributeError):
            return None
        finally:
            cur.close()
        if count != (hi or 0) or not self._heads_match(wanted):
            return None
        return count, prev.decode()

    def _walk(
        self, wanted: dict[int, str], leaves: list[bytes]
    ) -> tuple[ChainBreak | None, int, str]:
        """Event by event: (first break, events verified, head hash)."""
        sha256 = hashlib.sha256
        prev = chain.GENESIS
        expected = 1
        chain_break: ChainBreak | None = None
        marks = sorted(wanted)
        marks.append(0)
        mark_i = 0
        next_mark = marks[0]
        for seq, body, digest in self.conn.execute(
            "SELECT seq, body, hash FROM events ORDER BY seq"
        ):
            if not isinstance(seq, int):
                chain_break = ChainBreak(expected, "an event has no sequence number")
                break
            if seq != expected:
                chain_break = ChainBreak(
                    expected if seq > expected else seq,
                    f"event #{expected} is missing (next is #{seq})",
                )
                break
            if sha256((prev + body).encode()).hexdigest() != digest:
                chain_break = ChainBreak(seq, "hash does not match the event and the previous link")
                break
            leaves.append(sha256(b"\x00" + body.encode()).digest())
            if seq == next_mark:
                if wanted.pop(seq) != digest:
                    chain_break = ChainBreak(seq, "event differs from the signed checkpoint")
                    break
                mark_i += 1
                next_mark = marks[mark_i]
            prev = digest
            expected += 1
        if chain_break is None and wanted:
            missing = min(wanted)
            chain_break = ChainBreak(
                missing, f"checkpoint #{missing} signs an event that is not in the ledger"
            )
        return chain_break, expected - 1, prev

    def close(self) -> None:
        self.conn.close()


def _completed(index: int) -> list[tuple[int, int]]:
    """The complete subtrees ``(level, idx)`` that the append of leaf ``index`` completes."""
    out = [(0, index)]
    level = 0
    while index >> level & 1:
        level += 1
        out.append((level, index >> level))
    return out
