"""Deny: record that a credential fingerprint must never be handed over again."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from keycourier._record import record
from keycourier.errors import UsageError
from keycourier.ledger.interface import Event, EventType, Recorder, RecordOutcome

FINGERPRINT_RE: Final = re.compile(r"^kc1:[0-9a-f]{32}\Z")
MAX_REASON_CHARS: Final = 500
MAX_ACTOR_CHARS: Final = 200


@record
class DenyRequest:
    fingerprint: str  # kc1:<32 lowercase hex>, as `check` and `inspect` print it
    reason: str  # recorded in clear: never a secret; 1-500 printable characters
    actor: str  # who denies it; 1-200 characters
    policy_digest: str | None  # the policy in force, stamped on the event


@record
class Denied:
    event: Event
    outcome: RecordOutcome


def check_denial(fingerprint: str, reason: str, actor: str) -> tuple[str, str, str]:
    """(fingerprint, reason, actor) stripped, or UsageError naming what is wrong."""
    if not FINGERPRINT_RE.match(fingerprint):
        raise UsageError(
            "the fingerprint must look like kc1:<32 lowercase hex>",
            hints=["copy it from 'keycourier check' or 'keycourier inspect'"],
        )
    text = reason.strip()
    if not text or len(text) > MAX_REASON_CHARS or any(ord(c) < 0x20 for c in text):
        raise UsageError(f"--reason must be 1 to {MAX_REASON_CHARS} printable characters")
    who = actor.strip()
    if not who or len(who) > MAX_ACTOR_CHARS:
        raise UsageError(f"--by must be 1 to {MAX_ACTOR_CHARS} characters")
    return fingerprint, text, who


def deny(request: DenyRequest, *, recorder: Recorder, now: datetime | None = None) -> Denied:
    """Record `denied_fingerprint`: every later check, seal, open or ingest of that
    credential is rejected by the denied-fingerprint rule (through the deny list)."""
    fingerprint, reason, actor = check_denial(request.fingerprint, request.reason, request.actor)
    event = Event(
        type=EventType.DENIED_FINGERPRINT,
        at=now or datetime.now(UTC),
        actor=actor,
        fingerprint=fingerprint,
        policy_digest=request.policy_digest,
        data={"reason": reason},
    )
    return Denied(event, recorder.record(event))
