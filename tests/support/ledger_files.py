"""Ledger files for tests: one filled through the recorder, and a raw connection that goes
behind the triggers' back."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from keycourier import config
from keycourier.ledger.interface import Event, EventType, VaultStatus
from keycourier.ledger.recorder import open_recorder

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def ev(kind: EventType, n: int = 0, **kw: object) -> Event:
    return Event(type=kind, at=T0 + timedelta(seconds=n), actor="kc1:alice", **kw)  # type: ignore[arg-type]


def fill(path: Path, count: int) -> None:
    settings = config.load(ledger_path=path, env={"HOME": str(path.parent)})
    with open_recorder(settings) as rec:
        for i in range(count):
            out = rec.record(
                ev(EventType.SEALED, i, bundle_id=f"b{i % 3}", fingerprint=f"fp{i % 2}")
            )
            assert out.vault_status == VaultStatus.DISABLED
            assert out.seq == i + 1


def raw(path: Path) -> sqlite3.Connection:
    """A second connection that goes behind the triggers' back."""
    conn = sqlite3.connect(path, isolation_level=None)
    for name in ("events_no_update", "events_no_delete"):
        conn.execute(f"DROP TRIGGER {name}")
    return conn
