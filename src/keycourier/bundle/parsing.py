"""Parsing and inspecting bundles: everything that needs no key (docs/bundle-format.md).

No age engine here: the payload's age header is read for its structure only
(``keycourier.age._header``), so ``keycourier inspect`` loads no crypto library
but libsodium (through PyNaCl) for the signature. Sealing and opening, which
encrypt and decrypt, are in ``keycourier.bundle.core``.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from keycourier.age._header import HYBRID_TYPE, X25519_TYPE, Reader, read_header
from keycourier.age.errors import AgeError
from keycourier.bundle import text as _text
from keycourier.bundle.canonical import parse_canonical
from keycourier.bundle.identity import signing_fingerprint
from keycourier.bundle.model import (
    FORMAT,
    FORMAT_V1,
    Manifest,
    StructureError,
    manifest_from_dict,
)

MAX_BUNDLE_BYTES = _text.MAX_BUNDLE_BYTES
MAX_MANIFEST_BYTES = _text.MAX_MANIFEST_BYTES
MAX_PAYLOAD_BYTES = _text.MAX_PAYLOAD_BYTES
SIGNATURE_CONTEXT = b"keycourier-bundle/v2 manifest\n"
SIGNATURE_CONTEXTS = {FORMAT_V1: b"keycourier-bundle/v1 manifest\n", FORMAT: SIGNATURE_CONTEXT}
CLOCK_SKEW = timedelta(minutes=5)  # how far in the future a created_at may be
ED25519_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64


@dataclass(frozen=True, slots=True)
class ParsedBundle:
    """A bundle whose structure is sound (docs/bundle-format.md section 6, step 1)."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    payload: bytes  # the binary age file

    @property
    def payload_armored(self) -> bytes:
        """The age file in the age spec's armor (64 columns), whatever transport did."""
        return _armor(self.payload)


@dataclass(frozen=True, slots=True)
class Inspection:
    manifest: Manifest
    signature_valid: bool
    payload_digest_valid: bool
    expired: bool
    created_in_future: bool = False  # more than CLOCK_SKEW after the inspecting clock

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest.to_dict(),
            "signature_valid": self.signature_valid,
            "payload_digest_valid": self.payload_digest_valid,
            "expired": self.expired,
            "created_in_future": self.created_in_future,
        }


def _armor(binary: bytes) -> bytes:
    return (
        f"{_text.BEGIN_A}\n".encode("ascii")
        + _text.wrap64(binary)
        + f"{_text.END_A}\n".encode("ascii")
    )


# -- parsing --------------------------------------------------------------------


def parse(text: bytes) -> ParsedBundle:
    """Step 1 of docs/bundle-format.md section 6: everything that needs no key.

    Raises a StructureError (exit 4) that says what is wrong, and where.
    """
    blocks = _text.read(text)
    obj = parse_canonical(
        blocks.manifest,
        limit=MAX_MANIFEST_BYTES,
        error=StructureError(
            "the bundle's manifest is not readable: it is not canonical JSON",
            line=blocks.manifest_line,
        ),
    )
    manifest = manifest_from_dict(obj)
    if manifest.format != blocks.version:
        raise StructureError(
            f"the bundle's manifest is not readable: its format '{manifest.format}' "
            f"differs from the bundle's first line '{blocks.version}'",
            line=blocks.manifest_line,
        )
    _check_stanzas(manifest, blocks.payload)
    return ParsedBundle(manifest, blocks.manifest, blocks.signature, blocks.payload)


def _stanza_type(recipient: str) -> str:
    """The stanza type age writes for a recipient of the manifest (age1pq1... or age1...)."""
    return HYBRID_TYPE if recipient.startswith("age1pq1") else X25519_TYPE


def _check_stanzas(manifest: Manifest, binary: bytes) -> None:
    """The age header's stanzas correspond to the signed recipients (section 2)."""
    try:
        header = read_header(Reader(io.BytesIO(binary)))
    except AgeError as exc:
        raise StructureError(f"the bundle's payload is not an age file: {exc}") from None
    have = [s.type for s in header.stanzas]
    want = [_stanza_type(r) for r in manifest.recipients]
    if have != want:
        raise StructureError(
            "the age payload's recipients do not match the manifest: the payload has "
            f"{len(have)} recipient stanza(s) ({', '.join(have)}), the manifest lists "
            f"{len(want)} ({', '.join(want)})",
            hints=(
                "the payload may be readable by a recipient the manifest does not show: "
                "do not use this bundle, and ask the sender for a fresh one",
            ),
        )


def verify_signature(parsed: ParsedBundle) -> bool:
    """The manifest's Ed25519 signature verifies under its sender key (and that key has the
    manifest's sender fingerprint).

    Through PyNaCl's binding, as ``VerifyKey(key).verify(message, signature)`` does it
    (lengths checked first, then ``crypto_sign_open`` of signature + message): the
    ``nacl.signing`` module brings ``nacl.public`` and ``nacl.encoding`` with it.
    """
    from nacl.bindings import crypto_sign_open
    from nacl.exceptions import BadSignatureError

    key = base64.b64decode(parsed.manifest.sender_key.split(":", 1)[1])
    if signing_fingerprint(key) != parsed.manifest.sender_fingerprint:
        return False
    if len(key) != ED25519_KEY_BYTES or len(parsed.signature) != ED25519_SIGNATURE_BYTES:
        return False
    context = SIGNATURE_CONTEXTS[parsed.manifest.format]
    try:
        crypto_sign_open(parsed.signature + context + parsed.manifest_bytes, key)
    except (BadSignatureError, ValueError):
        return False
    return True


def payload_ok(parsed: ParsedBundle) -> bool:
    binary = parsed.payload
    return (
        len(binary) == parsed.manifest.payload_size
        and len(binary) <= MAX_PAYLOAD_BYTES
        and hashlib.sha256(binary).hexdigest() == parsed.manifest.payload_sha256
    )


def in_future(manifest: Manifest, now: datetime) -> bool:
    return manifest.created_at > now + CLOCK_SKEW


def inspect(text: bytes, *, now: datetime | None = None) -> Inspection:
    """Read the public manifest and check what can be checked without keys."""
    parsed = parse(text)
    current = now or datetime.now(UTC)
    return Inspection(
        manifest=parsed.manifest,
        signature_valid=verify_signature(parsed),
        payload_digest_valid=payload_ok(parsed),
        expired=parsed.manifest.expires_at <= current,
        created_in_future=in_future(parsed.manifest, current),
    )


def extract_age(text: bytes) -> bytes:
    """The armored age payload, after the checks that need no key (signature not pinned)."""
    parsed = parse(text)
    if not payload_ok(parsed):
        raise StructureError("the payload digest does not match the manifest")
    return parsed.payload_armored
