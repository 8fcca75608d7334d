"""Sealing, parsing, inspecting and opening bundles (docs/bundle-format.md)."""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii as _q
from typing import Any

from keycourier import age
from keycourier.bundle import text as _text
from keycourier.bundle.canonical import canonical_json, parse_canonical
from keycourier.bundle.identity import KeycourierIdentity, signing_fingerprint
from keycourier.bundle.model import (
    FORMAT,
    FORMAT_V1,
    PAYLOAD_FORMAT,
    Attestation,
    Credentials,
    Manifest,
    PolicyStamp,
    StructureError,
    format_time,
    integrity_error,
    manifest_from_dict,
    manifest_parts,
    payload_member,
)
from keycourier.errors import PolicyError, UsageError
from keycourier.policy import credential_fingerprint
from keycourier.redact import Secret, mask

MAX_BUNDLE_BYTES = _text.MAX_BUNDLE_BYTES
MAX_MANIFEST_BYTES = _text.MAX_MANIFEST_BYTES
MAX_PAYLOAD_BYTES = _text.MAX_PAYLOAD_BYTES
SIGNATURE_CONTEXT = b"keycourier-bundle/v2 manifest\n"
SIGNATURE_CONTEXTS = {FORMAT_V1: b"keycourier-bundle/v1 manifest\n", FORMAT: SIGNATURE_CONTEXT}
CLOCK_SKEW = timedelta(minutes=5)  # how far in the future a created_at may be
_NO_TIME = timedelta(0)


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
    return SealedBundle(text=_text.write(manifest_bytes, signature, binary), manifest=manifest)


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
    from keycourier.age.recipients import HYBRID_TYPE, X25519_TYPE

    return HYBRID_TYPE if recipient.startswith("age1pq1") else X25519_TYPE


def _check_stanzas(manifest: Manifest, binary: bytes) -> None:
    """The age header's stanzas correspond to the signed recipients (section 2)."""
    from keycourier.age._format import Reader, read_header

    try:
        header = read_header(Reader(io.BytesIO(binary)))
    except age.AgeError as exc:
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


def _verify_signature(parsed: ParsedBundle) -> bool:
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    key = base64.b64decode(parsed.manifest.sender_key.split(":", 1)[1])
    if signing_fingerprint(key) != parsed.manifest.sender_fingerprint:
        return False
    context = SIGNATURE_CONTEXTS[parsed.manifest.format]
    try:
        VerifyKey(key).verify(context + parsed.manifest_bytes, parsed.signature)
    except (BadSignatureError, ValueError):
        return False
    return True


def _payload_ok(parsed: ParsedBundle) -> bool:
    binary = parsed.payload
    return (
        len(binary) == parsed.manifest.payload_size
        and len(binary) <= MAX_PAYLOAD_BYTES
        and hashlib.sha256(binary).hexdigest() == parsed.manifest.payload_sha256
    )


def _in_future(manifest: Manifest, now: datetime) -> bool:
    return manifest.created_at > now + CLOCK_SKEW


def inspect(text: bytes, *, now: datetime | None = None) -> Inspection:
    """Read the public manifest and check what can be checked without keys."""
    parsed = parse(text)
    current = now or datetime.now(UTC)
    return Inspection(
        manifest=parsed.manifest,
        signature_valid=_verify_signature(parsed),
        payload_digest_valid=_payload_ok(parsed),
        expired=parsed.manifest.expires_at <= current,
        created_in_future=_in_future(parsed.manifest, current),
    )


def extract_age(text: bytes) -> bytes:
    """The armored age payload, after the checks that need no key (signature not pinned)."""
    parsed = parse(text)
    if not _payload_ok(parsed):
        raise StructureError("the payload digest does not match the manifest")
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

    Raises a StructureError naming the fault for step 1, the single integrity
    error for every failure of steps 2-5, and a PolicyError (exit 7) for an
    expired bundle or one created more than CLOCK_SKEW in the future. Policy re-evaluation and
    ledger checks are the caller's (``keycourier.bundle.open_bundle``).
    """
    parsed = parse(text)
    m = parsed.manifest
    if not _trusted(m, trusted) or not _verify_signature(parsed):
        raise integrity_error()
    binary = parsed.payload
    if not _payload_ok(parsed):
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
    if _in_future(m, current):
        raise PolicyError(
            f"bundle {m.bundle_id} was created at {format_time(m.created_at)}, in the future "
            f"(more than {CLOCK_SKEW.seconds // 60} minutes after this machine's "
            f"{format_time(current)})",
            hints=[
                "check the clocks of the sender and of this machine",
                "ask the sender to seal a new bundle",
            ],
        )
    if m.expires_at <= current:
        raise PolicyError(
            f"bundle {m.bundle_id} expired at {format_time(m.expires_at)}",
            hints=["ask the sender to seal a new bundle"],
        )
    return OpenedBundle(manifest=m, credentials=Credentials(m.platform, obj["client_id"], secret))
