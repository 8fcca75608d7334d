"""The hash chain and checkpoint format shared by every ledger backend (stdlib only).

An event's *body* is its canonical JSON (sorted keys, no spaces, UTF-8):
``{"actor","at","bundle_id","data","fingerprint","ledger","policy_digest","seq","type"}``.
Its hash is ``sha256(prev_hash_hex || body)`` in lowercase hex; the first
event's ``prev_hash`` is 64 zeros. A checkpoint signs (Ed25519) the text
``keycourier-ledger-checkpoint-v1\\n<ledger_id>\\n<seq>\\n<head_hash>\\n<signed_at>``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from keycourier.errors import IntegrityError, UsageError
from keycourier.ledger.interface import Event, EventType

GENESIS = "0" * 64
CHECKPOINT_DOMAIN = "keycourier-ledger-checkpoint-v1"
MAX_DATA_BYTES = 16 * 1024
MAX_FIELD_CHARS = 512


def format_time(at: datetime) -> str:
    if at.tzinfo is None or at.utcoffset() is None:
        raise UsageError("event times must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise IntegrityError(f"ledger event has a malformed time {text[:40]!r}") from None


def canonical(obj: Mapping[str, Any]) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _check_json(value: Any, depth: int = 0) -> None:  # noqa: ANN401 - any JSON value
    if depth > 8:
        raise UsageError("event data is nested too deeply")
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError("event data holds a non-finite number")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageError("event data keys must be strings")
            _check_json(item, depth + 1)
        return
    raise UsageError(f"event data holds a {type(value).__name__}, which is not JSON")


def event_body(event: Event, *, seq: int, ledger_id: str) -> str:
    """Validate an event and return its canonical body."""
    if not isinstance(event.type, EventType):
        raise UsageError("unknown event type")
    for name in ("actor", "bundle_id", "fingerprint", "policy_digest"):
        value = getattr(event, name)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_FIELD_CHARS):
            raise UsageError(
                f"event {name} must be a string of at most {MAX_FIELD_CHARS} characters"
            )
    if not event.actor:
        raise UsageError("event actor must not be empty")
    _check_json(dict(event.data))
    body = canonical(
        {
            "actor": event.actor,
            "at": format_time(event.at),
            "bundle_id": event.bundle_id,
            "data": dict(event.data),
            "fingerprint": event.fingerprint,
            "ledger": ledger_id,
            "policy_digest": event.policy_digest,
            "seq": seq,
            "type": str(event.type),
        }
    )
    if len(body.encode()) > MAX_DATA_BYTES:
        raise UsageError(f"event is larger than {MAX_DATA_BYTES} bytes")
    return body


def parse_body(body: str) -> tuple[int, str, Event]:
    """(seq, ledger_id, event) from a canonical body; IntegrityError when malformed."""
    try:
        obj = json.loads(body)
        event = Event(
            type=EventType(obj["type"]),
            at=parse_time(obj["at"]),
            actor=str(obj["actor"]),
            bundle_id=obj.get("bundle_id"),
            fingerprint=obj.get("fingerprint"),
            policy_digest=obj.get("policy_digest"),
            data=dict(obj.get("data") or {}),
        )
        return int(obj["seq"]), str(obj["ledger"]), event
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("a ledger event body is malformed") from None


def link_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def checkpoint_message(ledger_id: str, seq: int, head_hash: str, signed_at: str) -> bytes:
    return f"{CHECKPOINT_DOMAIN}\n{ledger_id}\n{seq}\n{head_hash}\n{signed_at}".encode()
