"""Events signed by a keycourier identity, so that a reader can tell who wrote them.

A Vault record proves only that some token with write access created it. An
event that must be acted on by another machine (a ``revoked`` event above all)
carries an Ed25519 signature by the identity that made it, inside its data:
``signer_key`` (``ed25519:<base64>``, covered by the signature) and
``signature`` (base64 of the 64-byte signature). The signed message is

    keycourier-event-v1\\n<canonical JSON of type, at, actor, bundle_id,
    fingerprint and data without "signature">

so a signature cannot be moved to another bundle, another event type or
another time. Readers honour an event from Vault only when its signature is
valid and the signer is a key they trust for that role.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING

from keycourier._record import replace
from keycourier.bundle.identity import signing_fingerprint
from keycourier.ledger import chain
from keycourier.ledger.interface import Event

if TYPE_CHECKING:
    from keycourier.bundle.identity import KeycourierIdentity

EVENT_DOMAIN = "keycourier-event-v1"
SIGNER = "signer_key"
SIGNATURE = "signature"


def statement(event: Event) -> bytes:
    """The bytes an event's signature covers."""
    data = {k: v for k, v in event.data.items() if k != SIGNATURE}
    body = chain.canonical(
        {
            "actor": event.actor,
            "at": chain.format_time(event.at),
            "bundle_id": event.bundle_id,
            "data": data,
            "fingerprint": event.fingerprint,
            "type": str(event.type),
        }
    )
    return f"{EVENT_DOMAIN}\n{body}".encode()


def sign_event(event: Event, identity: KeycourierIdentity) -> Event:
    """The event with ``signer_key`` and ``signature`` added to its data."""
    unsigned = replace(
        event,
        data={
            **{k: v for k, v in event.data.items() if k not in {SIGNER, SIGNATURE}},
            SIGNER: identity.public().signing_key,
        },
    )
    signature = identity.sign(statement(unsigned))
    return replace(
        unsigned, data={**unsigned.data, SIGNATURE: base64.b64encode(signature).decode()}
    )


def _key_bytes(key_text: str) -> bytes | None:
    if not key_text.startswith("ed25519:") or len(key_text) > 100:
        return None
    try:
        raw = base64.b64decode(key_text.split(":", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def signer_of(event: Event) -> str | None:
    """The ``ed25519:`` key whose valid signature the event carries, else None."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    key_text = event.data.get(SIGNER)
    signature = event.data.get(SIGNATURE)
    if not isinstance(key_text, str) or not isinstance(signature, str) or len(signature) > 200:
        return None
    key = _key_bytes(key_text)
    if key is None:
        return None
    try:
        raw = base64.b64decode(signature, validate=True)
        VerifyKey(key).verify(statement(event), raw)
    except (binascii.Error, ValueError, BadSignatureError):
        return None
    return key_text


def key_trusted(key_text: str, trusted: Iterable[str]) -> bool:
    """Whether a signer key is one of ``trusted`` (``ed25519:`` keys or ``kc1:`` fingerprints)."""

    key = _key_bytes(key_text)
    if key is None:
        return False
    candidates = (key_text, signing_fingerprint(key))
    return any(
        hmac.compare_digest(t.strip().encode(), c.encode()) for t in trusted for c in candidates
    )
