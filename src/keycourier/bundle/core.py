"""Sealing and opening bundles (docs/bundle-format.md); parsing and inspecting, which
need no key and no age engine, are in ``keycourier.bundle.parsing``."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii as _q

from keycourier import age
from keycourier.bundle import text as _text
from keycourier.bundle.canonical import canonical_json, parse_canonical
from keycourier.bundle.identity import KeycourierIdentity
from keycourier.bundle.model import (
    PAYLOAD_FORMAT,
    Attestation,
    Credentials,
    Manifest,
    PolicyStamp,
    format_time,
    integrity_error,
    manifest_parts,
    payload_member,
)
from keycourier.bundle.parsing import CLOCK_SKEW as CLOCK_SKEW
from keycourier.bundle.parsing import MAX_BUNDLE_BYTES as MAX_BUNDLE_BYTES
from keycourier.bundle.parsing import MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES
from keycourier.bundle.parsing import MAX_PAYLOAD_BYTES as MAX_PAYLOAD_BYTES
from keycourier.bundle.parsing import SIGNATURE_CONTEXT as SIGNATURE_CONTEXT
from keycourier.bundle.parsing import Inspection as Inspection
from keycourier.bundle.parsing import ParsedBundle as ParsedBundle
from keycourier.bundle.parsing import extract_age as extract_age
from keycourier.bundle.parsing import in_future, payload_ok, verify_signature
from keycourier.bundle.parsing import inspect as inspect
from keycourier.bundle.parsing import parse as parse
from keycourier.errors import PolicyError, UsageError
from keycourier.policy import credential_fingerprint
from keycourier.redact import Secret, mask

_NO_TIME = timedelta(0)


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
    supersedes: str | None = None,
) -> SealedBundle:
    """Encrypt ``credentials`` for ``recipients`` and sign the manifest.

    The caller has already run the handover policy; ``policy`` records its
    digest and verdict. ``now`` and ``bundle_id`` are seams for tests.
    """
    if not recipients:
        raise UsageError("at least one recipient is required")
    if len(set(recipients)) != len(recipients):
        raise UsageError("a recipient is listed twice")
    if supersedes is not None and supersedes == bundle_id:
        raise UsageError("a bundle cannot supersede itself")
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
        supersedes=supersedes,
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
    if not _trusted(m, trusted) or not verify_signature(parsed):
        raise integrity_error()
    binary = parsed.payload
    if not payload_ok(parsed):
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
    if in_future(m, current):
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
