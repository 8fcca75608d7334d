"""The ledger as an auditor reads it: rows for JSON lines and CSV, and the timeline of one
bundle, credential, connection or entity."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from keycourier.errors import (
    AuthError,
    ConfigError,
    UnavailableError,
    UsageError,
)
from keycourier.ledger.chain import format_time
from keycourier.ledger.interface import (
    Event,
    StoredEvent,
)
from keycourier.ledger.state import printable_event

if TYPE_CHECKING:
    from keycourier.ledger.recorder import LedgerRecorder


def export_row(stored: StoredEvent) -> dict[str, Any]:

    e = stored.event
    return {
        "seq": stored.seq,
        "type": str(e.type),
        "at": format_time(e.at),
        "actor": e.actor,
        "bundle_id": e.bundle_id,
        "fingerprint": e.fingerprint,
        "policy_digest": e.policy_digest,
        "data": dict(e.data),
        "prev_hash": stored.prev_hash,
        "hash": stored.hash,
        "vault_status": str(stored.vault_status),
    }


CSV_FIELDS = (
    "time",
    "seq",
    "type",
    "actor",
    "partner",
    "platform",
    "environment",
    "bundle_id",
    "fingerprint",
    "vault_path",
    "vault_version",
    "policy_digest",
    "detail",
    "vault_status",
)


_CSV_FROM_DATA = ("partner", "platform", "environment", "vault_path", "vault_version")


def _csv_value(value: Any) -> str:  # noqa: ANN401 - any JSON value
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def csv_row(stored: StoredEvent) -> dict[str, str]:
    """One flat spreadsheet row: the common fields as columns, the rest of ``data`` in detail."""

    e = stored.event
    data = dict(e.data)
    row = {
        "time": format_time(e.at),
        "seq": str(stored.seq),
        "type": str(e.type),
        "actor": e.actor,
        "bundle_id": e.bundle_id or "",
        "fingerprint": e.fingerprint or "",
        "policy_digest": e.policy_digest or "",
        "vault_status": str(stored.vault_status),
    }
    for key in _CSV_FROM_DATA:
        row[key] = _csv_value(data.pop(key, None))
    if not row["vault_version"]:  # ingest records the KV version as kv_version
        row["vault_version"] = _csv_value(data.pop("kv_version", None))
    row["detail"] = "; ".join(f"{k}={_csv_value(v)}" for k, v in sorted(data.items()))
    return row


def export(
    events: Iterator[StoredEvent], fmt: str, *, since: datetime | None = None
) -> Iterator[str]:
    """JSON lines (every field) or CSV (flat columns, header first), one string per line."""
    if fmt not in {"jsonl", "csv"}:
        raise UsageError("export format must be jsonl or csv")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    if fmt == "csv":
        writer.writeheader()
        yield buf.getvalue()
    for stored in events:
        if since is not None and stored.event.at < since:
            continue
        if fmt == "jsonl":
            yield json.dumps(export_row(stored), sort_keys=True, ensure_ascii=False) + "\n"
        else:
            buf.seek(0)
            buf.truncate()
            writer.writerow(csv_row(stored))
            yield buf.getvalue()


def timeline(recorder: LedgerRecorder, key: str) -> list[tuple[str, Event, str]]:
    """(source, event, vault_status) of a bundle ID, a credential fingerprint, a connection
    ID or an entity/organization ID, oldest first. Bundles are also looked up in Vault."""
    local = _local_matches(recorder, key)
    out: list[tuple[str, Event, str]] = [("ledger", s.event, str(s.vault_status)) for s in local]
    bundle_ids = {s.event.bundle_id for s in local if s.event.bundle_id} or (
        {key} if not local else set()
    )
    if recorder.mirror is not None:
        for bid in sorted(bundle_ids):
            try:
                found = recorder.vault_only_events(bid)
            except (UnavailableError, AuthError, UsageError, ConfigError):
                continue
            out.extend(("vault", printable_event(e), origin) for origin, e in found)
    out.sort(key=lambda t: t[1].at)
    return out


# the `data` fields of connection events a timeline may be looked up by
TIMELINE_DATA_KEYS = ("connection_id", "entity_id")


def _local_matches(recorder: LedgerRecorder, key: str) -> list[StoredEvent]:
    """This ledger's events whose bundle ID, fingerprint, ``data.connection_id`` or
    ``data.entity_id`` is ``key``, in ledger order (each event once)."""
    found: dict[int, StoredEvent] = {}
    for stored in (
        *recorder.history(bundle_id=key),
        *recorder.history(fingerprint=key),
        *(s for name in TIMELINE_DATA_KEYS for s in recorder.ledger.history_by_data(name, key)),
    ):
        found.setdefault(stored.seq, stored)
    return [found[seq] for seq in sorted(found)]
