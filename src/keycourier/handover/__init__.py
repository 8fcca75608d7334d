"""The handover workflows as a library: check and seal on the sender's side, open and
ingest on the receiver's, revoke and deny on either.

Each workflow takes typed inputs (the facts, the identity, the pinned senders, the policy, a
recorder, a clock) and returns a typed result with its warnings and the event it recorded.
It never prints and never exits: errors are ``keycourier.errors`` classes with their exit
codes. The command line (``keycourier.cli``) parses options, calls one of these and renders
the result. docs/api.md shows them in scripts.
"""

from __future__ import annotations

from keycourier.handover.checking import CheckRequest, check
from keycourier.handover.denying import Denied, DenyRequest, check_denial, deny
from keycourier.handover.ingesting import (
    Ingested,
    IngestRequest,
    KvMetadataView,
    KvStore,
    PathClaim,
    claim_path,
    ingest,
)
from keycourier.handover.opening import (
    DecidingRecorder,
    Opened,
    OpenRequest,
    check_state,
    open_bundle,
    signer_hint,
)
from keycourier.handover.revoking import Revoked, RevokeRequest, check_revocation, revoke
from keycourier.handover.sealing import (
    DEFAULT_LIFETIME,
    RejectedError,
    Sealed,
    SealRequest,
    check_bundle_id,
    rotation_source,
    seal,
    summary,
)

__all__ = [
    "DEFAULT_LIFETIME",
    "CheckRequest",
    "DecidingRecorder",
    "Denied",
    "DenyRequest",
    "IngestRequest",
    "Ingested",
    "KvMetadataView",
    "KvStore",
    "OpenRequest",
    "Opened",
    "PathClaim",
    "RejectedError",
    "RevokeRequest",
    "Revoked",
    "SealRequest",
    "Sealed",
    "check",
    "check_bundle_id",
    "check_denial",
    "check_revocation",
    "check_state",
    "claim_path",
    "deny",
    "ingest",
    "open_bundle",
    "revoke",
    "rotation_source",
    "seal",
    "signer_hint",
    "summary",
]
