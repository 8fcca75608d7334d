"""The hand-written canonical writers on the seal path agree with the generic encoder.

``seal`` writes the manifest and the payload plaintext without ``json`` (for
speed); these tests pin them to ``canonical_json`` so the two cannot drift.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from keycourier import bundle
from keycourier.age import X25519Identity
from keycourier.bundle import Attestation, KeycourierIdentity, Manifest, PolicyStamp, SealedBundle
from keycourier.bundle.canonical import canonical_json
from keycourier.bundle.core import SIGNATURE_CONTEXT, _new_bundle_id, _plaintext
from keycourier.bundle.model import (
    PAYLOAD_FORMAT,
    canonical_manifest,
    format_time,
    manifest_parts,
    payload_member,
)
from keycourier.redact import Secret
from tests.support.bundles import NOW

# Any text, including quotes, backslashes, control characters, non-ASCII and
# lone surrogates: the writers must escape exactly as the encoder does.
TEXT = st.text(max_size=40)
TIMES = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    return Manifest(
        bundle_id=draw(TEXT),
        created_at=draw(TIMES),
        expires_at=draw(TIMES),
        platform=draw(TEXT),
        environment=draw(TEXT),
        partner=draw(st.none() | TEXT),
        attestation=draw(st.none() | st.builds(Attestation, TEXT, TEXT)),
        client_id_masked=draw(TEXT),
        fingerprint=draw(TEXT),
        recipients=tuple(draw(st.lists(TEXT, max_size=4))),
        sender_key=draw(TEXT),
        sender_fingerprint=draw(TEXT),
        policy=PolicyStamp(draw(TEXT), draw(TEXT), tuple(draw(st.lists(TEXT, max_size=3)))),
        payload_sha256=draw(TEXT),
        payload_size=draw(st.integers(min_value=0, max_value=2**40)),
        supersedes=draw(st.none() | TEXT),
    )


@settings(max_examples=300, deadline=None)
@given(manifests())
def test_manifest_writer_matches_canonical_json(m: Manifest) -> None:
    head, tail = manifest_parts(m)
    whole = m.to_dict()
    assert canonical_manifest(m) == canonical_json(whole)
    assert head + payload_member(m.payload_sha256, m.payload_size) + tail == canonical_json(whole)
    del whole["payload"]
    assert head + tail == canonical_json(whole)  # the bytes the binding digest covers


@settings(max_examples=300, deadline=None)
@given(TEXT, TEXT, TEXT, TEXT, TEXT)
def test_plaintext_writer_matches_canonical_json(
    bundle_id: str, binding: str, platform: str, client_id: str, secret: str
) -> None:
    expected = canonical_json(
        {
            "format": PAYLOAD_FORMAT,
            "bundle_id": bundle_id,
            "manifest_sha256": binding,
            "platform": platform,
            "client_id": client_id,
            "client_secret": secret,
        }
    )
    assert _plaintext(bundle_id, binding, platform, client_id, secret) == expected


@settings(max_examples=500, deadline=None)
@given(TIMES)
def test_format_time_is_strftime(value: datetime) -> None:
    assert format_time(value) == value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_bundle_ids_are_canonical_random_uuid4() -> None:
    ids = [_new_bundle_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # Every hex digit outside the fixed version and variant bits varies.
    for i, column in enumerate(zip(*ids, strict=True)):
        expected = 1 if i in (8, 13, 18, 23) else (1 if i == 14 else 4 if i == 19 else 16)
        assert len(set(column)) == expected, i


def test_sealed_manifest_line_is_the_generic_encoding(sealed: SealedBundle) -> None:
    parsed = bundle.parse(sealed.text)
    assert parsed.manifest_bytes == canonical_json(sealed.manifest.to_dict())
    assert max(len(line) for line in sealed.text.split(b"\n")) <= 64
    assert sealed.manifest.payload_sha256 != "0" * 64
    assert sealed.manifest.payload_size > 0


def test_signature_is_pynacl_ed25519(sender: KeycourierIdentity, sealed: SealedBundle) -> None:
    seed = bytes(range(32))
    ident = KeycourierIdentity(X25519Identity.generate(), Secret(seed), NOW)
    message = b"any message"
    assert ident.sign(message) == SigningKey(seed).sign(message).signature
    assert ident.signing_public == bytes(SigningKey(seed).verify_key)
    parsed = bundle.parse(sealed.text)
    VerifyKey(sender.signing_public).verify(
        SIGNATURE_CONTEXT + parsed.manifest_bytes, parsed.signature
    )
