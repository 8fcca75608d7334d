"""The provenance port: what every ledger backend and the recorder facade offer.

Events never hold a secret: only bundle IDs, fingerprints, masked IDs, key
fingerprints, policy digests and plain metadata.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from keycourier._record import field, record


class EventType(enum.StrEnum):
    REJECTED = "rejected"
    SEALED = "sealed"
    OPENED = "opened"
    INGESTED = "ingested"
    REVOKED = "revoked"
    DENIED_FINGERPRINT = "denied_fingerprint"
    # a release (sealed/opened) that did not happen: the command failed after appending it
    # (e.g. --require-vault with Vault unreachable); data.aborts_seq names the voided event
    RELEASE_ABORTED = "release_aborted"
    TOKEN_ISSUED = "token_issued"  # noqa: S105 - an event name
    TOKEN_HANDED_OUT = "token_handed_out"  # noqa: S105 - an event name
    CONNECTION_CREATED = "connection_created"
    CONNECTION_CONNECTED = "connection_connected"
    CONNECTION_DISCONNECTED = "connection_disconnected"
    # a bundle replaced by a newer one at the same Vault path (docs/rotation.md)
    SUPERSEDED = "superseded"
    # the sender checked the receiver's signed receipt of a bundle (docs/receipts.md)
    RECEIPT_VERIFIED = "receipt_verified"


RELEASES = frozenset({EventType.SEALED, EventType.OPENED})


class VaultStatus(enum.StrEnum):
    RECORDED = "recorded"  # written to Vault and confirmed
    PENDING = "pending"  # Vault unreachable: kept locally, `keycourier sync` delivers it
    DISABLED = "disabled"  # no Vault configured: local ledger only


@record
class Event:
    """One provenance event, as the caller describes it (before sequencing)."""

    type: EventType
    at: datetime  # timezone-aware UTC
    actor: str  # who did it: a signing-key fingerprint, a client name, a profile
    bundle_id: str | None = None
    fingerprint: str | None = None  # credential fingerprint (redact.fingerprint)
    policy_digest: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)  # JSON-able, no secrets


@record
class StoredEvent:
    """An event as the ledger holds it: sequenced and chained."""

    seq: int
    event: Event
    prev_hash: str
    hash: str
    vault_status: VaultStatus


@record
class RecordOutcome:
    seq: int
    vault_status: VaultStatus
    detail: str = ""  # e.g. why Vault was not reached; never a secret


class Recorder(Protocol):
    """Local ledger + Vault, as seal/open/ingest/revoke/token see them."""

    def record(self, event: Event) -> RecordOutcome: ...

    def history(
        self, *, bundle_id: str | None = None, fingerprint: str | None = None
    ) -> Sequence[StoredEvent]: ...

    def history_by_data(self, name: str, value: str) -> Sequence[StoredEvent]:
        """The events whose ``data.<name>`` is ``value`` (``name``: an identifier)."""
        ...

    def shared_events(self, bundle_id: str) -> Sequence[Event] | None:
        """The bundle's events that only the shared store (Vault) holds: recorded by other
        ledgers, or missing from or different in this one. None when there is no shared
        store; UnavailableError or AuthError when it cannot be read. They are not trusted
        as they are: ``ledger.state.bundle_state`` checks their signatures."""
        ...

    def close(self) -> None: ...
