"""Signed, encrypted handover bundles (docs/bundle-format.md) and identities.

The names below load their module on first use (PEP 562), so that
``keycourier.bundle.parsing`` (``keycourier inspect``) comes without the age
engine and the handover policy that sealing and opening need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keycourier.bundle.core import OpenedBundle, SealedBundle, open_verified, seal
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
    from keycourier.bundle.parsing import Inspection, ParsedBundle, extract_age, inspect, parse
    from keycourier.bundle.service import (
        CheckedBundle,
        ReceiverPolicyError,
        open_bundle,
        read_identity,
    )
    from keycourier.policy import credential_fingerprint

# name -> the module that defines it
_HOME = {
    "Attestation": "keycourier.bundle.model",
    "CheckedBundle": "keycourier.bundle.service",
    "Credentials": "keycourier.bundle.model",
    "Inspection": "keycourier.bundle.parsing",
    "KeycourierIdentity": "keycourier.bundle.identity",
    "Manifest": "keycourier.bundle.model",
    "OpenedBundle": "keycourier.bundle.core",
    "ParsedBundle": "keycourier.bundle.parsing",
    "Platform": "keycourier.bundle.model",
    "PolicyStamp": "keycourier.bundle.model",
    "PublicIdentity": "keycourier.bundle.identity",
    "ReceiverPolicyError": "keycourier.bundle.service",
    "SealedBundle": "keycourier.bundle.core",
    "StructureError": "keycourier.bundle.model",
    "credential_fingerprint": "keycourier.policy",
    "extract_age": "keycourier.bundle.parsing",
    "inspect": "keycourier.bundle.parsing",
    "integrity_error": "keycourier.bundle.model",
    "is_protected": "keycourier.bundle.identity",
    "load_identity": "keycourier.bundle.identity",
    "open_bundle": "keycourier.bundle.service",
    "open_verified": "keycourier.bundle.core",
    "parse": "keycourier.bundle.parsing",
    "read_identity": "keycourier.bundle.service",
    "read_public": "keycourier.bundle.identity",
    "seal": "keycourier.bundle.core",
}

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


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
