"""Sealing, parsing, inspecting and opening bundles (docs/bundle-format.md)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import os
import re
from binascii import b2a_base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii as _q
from typing import Any

from keycourier import age
from keycourier.bundle.canonical import canonical_json, parse_canonical
from keycourier.bundle.identity import KeycourierIdentity, signing_fingerprint
from keycourier.bundle.model import (
    FORMAT,
    PAYLOAD_FORMAT,
    Attestation,
    Credentials,
    Manifest,
    PolicyStamp,
    format_time,
    integrity_error,
    manifest_from_dict,
    manifest_parts,
    payload_member,
)
from keycourier.errors import PolicyError, UsageError
from keycourier.policy import credential_fingerprint
from keycourier.redact import Secret, mask

MAX_BUNDLE_BYTES = 1024 * 1024
MAX_MANIFEST_BYTES = 16 * 1024
MAX_PAYLOAD_BYTES = 64 * 1024
SIGNATURE_CONTEXT = b"keycourier-bundle/v1 manifest\n"

_BEGIN_M = "-----BEGIN KEYCOURIER MANIFEST-----"
_END_M = "-----END KEYCOURIER MANIFEST-----"
_BEGIN_S = "-----BEGIN KEYCOURIER SIGNATURE-----"
_END_S = "-----END KEYCOURIER SIGNATURE-----"
_BEGIN_A = "-----BEGIN AGE ENCRYPTED FILE-----"
_END_A = "-----END AGE ENCRYPTED FILE-----"
_SIG_RE = re.compile(r"^[A-Za-z0-9+/]{86}==\Z")
_LEAD_M = f"{FORMAT}\n{_BEGIN_M}\n".encode("ascii")
_LEAD_S = f"\n{_END_M}\n{_BEGIN_S}\n".encode("ascii")
_LEAD_A = f"\n{_END_S}\n{_BEGIN_A}\n".encode("ascii")
_TAIL_A = f"{_END_A}\n".encode("ascii")
_NO_TIME = timedelta(0)


@dataclass(frozen=True, slots=True)
class ParsedBundle:
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    payload_armored: bytes


@dataclass(frozen=True, slots=True)
class Inspection:
    manifest: Manifest
    signature_valid: bool
    payload_digest_valid: bool
    expired: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest.to_dict(),
            "signature_valid": self.signature_valid,
            "payload_digest_valid": self.payload_digest_valid,
            "expired": self.expired,
        }


@dataclass(frozen=True, slots=True)
class SealedBundle:
    text: bytes
    manifest: Manifest


@dataclass(frozen=True, slots=True)
class OpenedBundle:
    manifest: Manifest
    credentials: Credentials


# -- sealing ------------------------------------------------------------------


def seal(
    credentials: Credentials,
    *,
    sender: KeycourierIdentity,
    recipients: Sequence[str],
    policy: PolicyStamp,
    lifetime: timedelta,
    environment: str,
    partner: str | None = None,
    attestation: Attestation | None = None,
    now: datetime | None = None,
    bundle_id: str | None = None,
) -> SealedBundle:
    """Encrypt ``credentials`` for ``recipients`` and sign the manifest.

    The caller has already run the handover policy; ``policy`` records its
    digest and verdict. ``now`` and ``bundle_id`` are seams for tests.
    """
    if not recipients:
        raise UsageError("at least one recipient is required")
    if len(set(recipients)) != len(recipients):
        raise UsageError("a recipient is listed twice")
    if lifetime <= _NO_TIME:
        raise UsageError("the bundle lifetime must be positive")
    parsed = [_recipient(r) for r in recipients]
    created = (now or datetime.now(UTC)).replace(microsecond=0)
    me = sender.public()
    bid = bundle_id or _new_bundle_id()
    platform, client_id, secret = (
        credentials.platform,
        credentials.client_id,
        credentials.client_secret,
    )
    manifest = Manifest(
        bundle_id=bid,
        created_at=created,
        expires_at=created + lifetime,
        platform=platform,
        environment=environment,
        partner=partner,
        attestation=attestation,
        client_id_masked=mask(client_id),
        fingerprint=credential_fingerprint(platform, client_id, secret),
        recipients=tuple([p[1] for p in parsed]),
        sender_key=me.signing_key,
        sender_fingerprint=me.signing_fingerprint,
        policy=policy,
        payload_sha256="0" * 64,  # set below, before the manifest leaves this function
        payload_size=0,
    )
    # The payload must commit to the manifest and the manifest to the payload.
    # Break the cycle: the plaintext carries the binding digest (the manifest
    # *without* its payload member), and the signature covers the full manifest.
    head, tail = manifest_parts(manifest)
    plaintext = _plaintext(
        bid, hashlib.sha256(head + tail).hexdigest(), platform, client_id, secret.reveal()
    )
    binary = age.encrypt([p[0] for p in parsed], plaintext)
    digest, size = hashlib.sha256(binary).hexdigest(), len(binary)
    manifest_bytes = head + payload_member(digest, size) + tail
    signature = sender.sign(SIGNATURE_CONTEXT + manifest_bytes)
    # Nothing else holds ``manifest`` yet: fill in the payload fields in place (the
    # documented way to initialise a frozen dataclass) instead of building it twice.
    object.__setattr__(manifest, "payload_sha256", digest)
    object.__setattr__(manifest, "payload_size", size)
    text = b"".join(
        (
            _LEAD_M,
            manifest_bytes,
            _LEAD_S,
            base64.b64encode(signature),
            _LEAD_A,
            _armor_body(binary),
            _TAIL_A,
        )
    )
    return SealedBundle(text=text, manifest=manifest)


def _new_bundle_id() -> str:
    """A random (version 4) UUID in its canonical text form, as ``str(uuid.uuid4())``."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _plaintext(bundle_id: str, binding: str, platform: str, client_id: str, secret: str) -> bytes:
    """The canonical payload object (docs/bundle-format.md section 5), keys in sorted order.

    Equal to ``canonical_json`` of the same dict (the tests compare the two);
    strings go through the ``json`` encoder's own C escaper.
    """
    return (
        f'{{"bundle_id":{_q(bundle_id)},"client_id":{_q(client_id)}'
        f',"client_secret":{_q(secret)},"format":{_q(PAYLOAD_FORMAT)}'
        f',"manifest_sha256":{_q(binding)},"platform":{_q(platform)}}}'
    ).encode("ascii")


@functools.lru_cache(maxsize=256)
def _recipient(text: str) -> tuple[age.Recipient, str]:
    """A parsed recipient and its canonical text (public values, safe to cache)."""
    recipient = age.parse_recipient(text)
    return recipient, recipient.to_string()


def _binding_digest(manifest: Manifest) -> str:
    """SHA-256 of the canonical manifest with the payload object removed.

    The payload's own digest cannot be known before encryption, so the
    plaintext commits to everything else and the signature covers the rest.
    """
    d = manifest.to_dict()
    del d["payload"]
    return hashlib.sha256(canonical_json(d)).hexdigest()


def _armor(binary: bytes) -> bytes:
    return _BEGIN_A.encode("ascii") + b"\n" + _armor_body(binary) + _TAIL_A


def _armor_body(binary: bytes) -> bytes:
    """Padded base64 in 64-column lines, each ending in a newline (48 bytes per line)."""
    return b"".join([b2a_base64(binary[i : i + 48]) for i in range(0, len(binary), 48)])


# -- parsing --------------------------------------------------------------------


def parse(text: bytes) -> ParsedBundle:
    """Parse the layout and the manifest (docs/bundle-format.md sections 1-2)."""
    if len(text) > MAX_BUNDLE_BYTES:
        raise integrity_error()
    try:
        s = text.decode("ascii")
    except UnicodeDecodeError:
        raise integrity_error() from None
    lines = s.replace("\r\n", "\n").strip(" \t\r\n").split("\n")
    if len(lines) < 9 or lines[0] != FORMAT:
        raise integrity_error()
    if lines[1] != _BEGIN_M or lines[3] != _END_M or lines[4] != _BEGIN_S or lines[6] != _END_S:
        raise integrity_error()
    if lines[7] != _BEGIN_A or lines[-1] != _END_A or lines[8:-1].count(_END_A):
        raise integrity_error()
    manifest_bytes = lines[2].encode("ascii")
    obj = parse_canonical(manifest_bytes, limit=MAX_MANIFEST_BYTES, error=integrity_error())
    manifest = manifest_from_dict(obj)
    if not _SIG_RE.match(lines[5]):
        raise integrity_error()
    signature = base64.b64decode(lines[5])
    if base64.b64encode(signature) != lines[5].encode("ascii"):  # non-canonical padding bits
        raise integrity_error()
    armored = ("\n".join(lines[7:]) + "\n").encode("ascii")
    if len(armored) > MAX_PAYLOAD_BYTES * 2:
        raise integrity_error()
    return ParsedBundle(manifest, manifest_bytes, signature, armored)


def _verify_signature(parsed: ParsedBundle) -> bool:
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    key = base64.b64decode(parsed.manifest.sender_key.split(":", 1)[1])
    if signing_fingerprint(key) != parsed.manifest.sender_fingerprint:
        return False
    try:
        VerifyKey(key).verify(SIGNATURE_CONTEXT + parsed.manifest_bytes, parsed.signature)
    except (BadSignatureError, ValueError):
        return False
    return True


def _dearmor(parsed: ParsedBundle) -> bytes | None:
    lines = parsed.payload_armored.decode("ascii").split("\n")[1:-2]
    if not lines or any(len(line) != 64 for line in lines[:-1]) or not 0 < len(lines[-1]) <= 64:
        return None
    joined = "".join(lines)
    try:
        binary = base64.b64decode(joined, validate=True)
    except binascii.Error:
        return None
    if base64.b64encode(binary).decode("ascii") != joined:
        return None
    return binary


def _payload_ok(parsed: ParsedBundle, binary: bytes | None) -> bool:
    return (
        binary is not None
        and len(binary) == parsed.manifest.payload_size
        and len(binary) <= MAX_PAYLOAD_BYTES
        and hashlib.sha256(binary).hexdigest() == parsed.manifest.payload_sha256
    )


def inspect(text: bytes, *, now: datetime | None = None) -> Inspection:
    """Read the public manifest and check what can be checked without keys."""
    parsed = parse(text)
    current = now or datetime.now(UTC)
    return Inspection(
        manifest=parsed.manifest,
        signature_valid=_verify_signature(parsed),
        payload_digest_valid=_payload_ok(parsed, _dearmor(parsed)),
        expired=parsed.manifest.expires_at <= current,
    )


def extract_age(text: bytes) -> bytes:
    """The armored age payload, after the checks that need no key (signature not pinned)."""
    parsed = parse(text)
    if not _payload_ok(parsed, _dearmor(parsed)):
        raise integrity_error()
    return parsed.payload_armored


# -- opening --------------------------------------------------------------------


def _trusted(manifest: Manifest, trusted: Sequence[str]) -> bool:
    import hmac

    candidates = (manifest.sender_key, manifest.sender_fingerprint)
    return any(
        hmac.compare_digest(t.strip().encode(), c.encode()) for t in trusted for c in candidates
    )


def open_verified(
    text: bytes,
    *,
    identity: KeycourierIdentity,
    trusted: Sequence[str],
    now: datetime | None = None,
) -> OpenedBundle:
    """Steps 1-6a of docs/bundle-format.md section 6: verify everything, then check expiry.

    Raises the single integrity error for every failure of steps 1-5 and a
    PolicyError (exit 7) for an expired bundle. Policy re-evaluation and
    ledger checks are the caller's (``keycourier.bundle.open_bundle``).
    """
    parsed = parse(text)
    m = parsed.manifest
    if not _trusted(m, trusted) or not _verify_signature(parsed):
        raise integrity_error()
    binary = _dearmor(parsed)
    if binary is None or not _payload_ok(parsed, binary):
        raise integrity_error()
    try:
        plaintext = age.decrypt([identity.age_identity], binary)
    except age.AgeError:
        raise integrity_error() from None
    obj = parse_canonical(plaintext, limit=MAX_PAYLOAD_BYTES, error=integrity_error())
    keys = {"format", "bundle_id", "manifest_sha256", "platform", "client_id", "client_secret"}
    if set(obj) != keys or not all(isinstance(obj[k], str) for k in keys):
        raise integrity_error()
    pre = dataclasses.replace(m, payload_sha256="0" * 64, payload_size=0)
    secret = Secret(obj["client_secret"])
    if (
        obj["format"] != PAYLOAD_FORMAT
        or obj["bundle_id"] != m.bundle_id
        or obj["platform"] != m.platform
        or obj["manifest_sha256"] != _binding_digest(pre)
        or mask(obj["client_id"]) != m.client_id_masked
        or credential_fingerprint(obj["platform"], obj["client_id"], secret) != m.fingerprint
    ):
        raise integrity_error()
    current = now or datetime.now(UTC)
    if m.expires_at <= current:
        raise PolicyError(
            f"bundle {m.bundle_id} expired at {format_time(m.expires_at)}",
            hints=["ask the sender to seal a new bundle"],
        )
    return OpenedBundle(manifest=m, credentials=Credentials(m.platform, obj["client_id"], secret))
