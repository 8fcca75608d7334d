"""Revoke: record that a bundle must not be opened or ingested any more."""

from __future__ import annotations

from datetime import UTC, datetime

from keycourier._record import record
from keycourier.bundle import KeycourierIdentity
from keycourier.errors import UsageError
from keycourier.ledger.interface import Event, EventType, Recorder, RecordOutcome
from keycourier.ledger.signed import sign_event

MAX_REASON_CHARS = 500
MAX_BUNDLE_ID_CHARS = 128
UNSIGNED_WARNING = (
    "the revocation is not signed (no identity): receivers on other machines ignore it; "
    "only this ledger refuses the bundle"
)


@record
class RevokeRequest:
    bundle_id: str
    reason: str  # recorded in clear: never a secret; 1-500 characters
    actor: str  # who revokes (the identity's fingerprint when there is one)
    # signs the event: other machines act on a revocation they find in Vault only when it
    # is signed by the bundle's sender key or a key they trust
    identity: KeycourierIdentity | None = None


@record
class Revoked:
    event: Event
    outcome: RecordOutcome
    warnings: tuple[str, ...] = ()


def check_revocation(bundle_id: str, reason: str) -> tuple[str, str]:
    """(bundle ID, reason stripped), or UsageError for a reason that is empty or too long
    or a bundle ID that is not one (checked before anything else is asked for)."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON_CHARS:
        raise UsageError(f"--reason must be 1-{MAX_REASON_CHARS} characters")
    if (
        not bundle_id
        or len(bundle_id) > MAX_BUNDLE_ID_CHARS
        or not bundle_id.isascii()
        or "/" in bundle_id
    ):
        raise UsageError("BUNDLE_ID is not a bundle ID")
    return bundle_id, reason


def revoke(request: RevokeRequest, *, recorder: Recorder, now: datetime | None = None) -> Revoked:
    """Record `revoked` (signed when the request has an identity). UsageError for a reason
    that is empty or too long, or a bundle ID that is not one."""

    bundle_id, reason = check_revocation(request.bundle_id, request.reason)
    event = Event(
        type=EventType.REVOKED,
        at=now or datetime.now(UTC),
        actor=request.actor,
        bundle_id=bundle_id,
        data={"reason": reason},
    )
    warnings: tuple[str, ...] = ()
    if request.identity is not None:
        event = sign_event(event, request.identity)
    else:
        warnings = (UNSIGNED_WARNING,)
    return Revoked(event, recorder.record(event), warnings)
