"""Signed, encrypted handover bundles (docs/bundle-format.md) and identities."""

from __future__ import annotations

from keycourier.bundle.core import (
    Inspection,
    OpenedBundle,
    ParsedBundle,
    SealedBundle,
    extract_age,
    inspect,
    open_verified,
    parse,
    seal,
)
from keycourier.bundle.identity import (
    KeycourierIdentity,
    PublicIdentity,
    is_protected,
    load_identity,
    read_public,
)
from keycourier.bundle.model import (
    Attestation,
    Credentials,
    Manifest,
    Platform,
    PolicyStamp,
    StructureError,
    integrity_error,
)
from keycourier.bundle.service import CheckedBundle, ReceiverPolicyError, open_bundle, read_identity
from keycourier.policy import credential_fingerprint

__all__ = [
    "Attestation",
    "CheckedBundle",
    "Credentials",
    "Inspection",
    "KeycourierIdentity",
    "Manifest",
    "OpenedBundle",
    "ParsedBundle",
    "Platform",
    "PolicyStamp",
    "PublicIdentity",
    "ReceiverPolicyError",
    "SealedBundle",
    "StructureError",
    "credential_fingerprint",
    "extract_age",
    "inspect",
    "integrity_error",
    "is_protected",
    "load_identity",
    "open_bundle",
    "open_verified",
    "parse",
    "read_identity",
    "read_public",
    "seal",
]
