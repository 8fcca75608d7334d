"""Bundles built by hand for tests: a payload encrypted to chosen recipients, a manifest
bound to a payload."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from keycourier import age
from keycourier.bundle import (
    Credentials,
    KeycourierIdentity,
    Manifest,
    PolicyStamp,
    SealedBundle,
    seal,
)
from keycourier.bundle.core import _plaintext
from keycourier.bundle.model import manifest_parts
from keycourier.redact import Secret
from tests.support.random_text import ALNUM

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def qbo_credentials() -> Credentials:
    client_id = "AB" + "".join(secrets.choice(ALNUM) for _ in range(48))
    secret = "".join(secrets.choice(ALNUM) for _ in range(40))
    return Credentials("quickbooks", client_id, Secret(secret))


STAMP = PolicyStamp("sha256:" + "ab" * 32, "pass", ())


def make_bundle(
    sender: KeycourierIdentity,
    receiver: KeycourierIdentity,
    creds: Credentials,
    *,
    lifetime: timedelta = timedelta(days=7),
    now: datetime = NOW,
) -> SealedBundle:
    return seal(
        creds,
        sender=sender,
        recipients=[receiver.public().recipient],
        policy=STAMP,
        lifetime=lifetime,
        environment="production",
        partner="Acme Ltd",
        now=now,
    )


def encrypt_for(manifest: Manifest, creds: Credentials, recipients: list[age.Recipient]) -> bytes:
    """The payload of ``manifest`` (bound to it) encrypted to ``recipients``."""
    head, tail = manifest_parts(dataclasses.replace(manifest, payload_sha256="0" * 64))
    plaintext = _plaintext(
        manifest.bundle_id,
        hashlib.sha256(head + tail).hexdigest(),
        creds.platform,
        creds.client_id,
        creds.client_secret.reveal(),
    )
    return age.encrypt(recipients, plaintext)


def with_payload(manifest: dict[str, Any], binary: bytes) -> dict[str, Any]:
    manifest = dict(manifest)
    manifest["payload"] = {
        "sha256": hashlib.sha256(binary).hexdigest(),
        "size": len(binary),
        "type": "age-v1",
    }
    return manifest
