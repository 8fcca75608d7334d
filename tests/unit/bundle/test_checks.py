"""Manifest checks that need a validly signed manifest to reach: crafted with the real
engine (age, Ed25519) and the sender's key, so only the check under test can refuse them."""

from __future__ import annotations

import base64
import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from keycourier import age, bundle
from keycourier.bundle import Credentials, KeycourierIdentity
from keycourier.bundle.canonical import canonical_json
from keycourier.bundle.parsing import _armor
from keycourier.errors import IntegrityError, PolicyError
from tests.support.bundles import NOW, encrypt_for, make_bundle, with_payload

LATER = NOW + timedelta(hours=1)
V1_CONTEXT = b"keycourier-bundle/v1 manifest\n"


def v1_text(sender: KeycourierIdentity, manifest: dict[str, Any], binary: bytes) -> bytes:
    """A version-1 bundle around ``manifest`` and the age file ``binary``, signed by ``sender``."""
    mb = canonical_json(manifest)
    sig = base64.b64encode(sender.sign(V1_CONTEXT + mb))
    return (
        b"keycourier-bundle/v1\n-----BEGIN KEYCOURIER MANIFEST-----\n"
        + mb
        + b"\n-----END KEYCOURIER MANIFEST-----\n-----BEGIN KEYCOURIER SIGNATURE-----\n"
        + sig
        + b"\n-----END KEYCOURIER SIGNATURE-----\n"
        + _armor(binary)
    )


def v1_bundle(
    sender: KeycourierIdentity,
    receiver: KeycourierIdentity,
    creds: Credentials,
    *,
    extra: list[age.Recipient] = (),  # type: ignore[assignment]
    edit: dict[str, Any] | None = None,
    now: Any = NOW,
) -> bytes:
    sealed = make_bundle(sender, receiver, creds, now=now)
    m = dataclasses.replace(sealed.manifest, format="keycourier-bundle/v1")
    binary = encrypt_for(m, creds, [receiver.age_identity.recipient(), *extra])
    d = with_payload(m.to_dict(), binary)
    for path, value in (edit or {}).items():
        target = d
        *parents, last = path.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    return v1_text(sender, d, binary)


def trust(ident: KeycourierIdentity) -> list[str]:
    return [ident.public().signing_fingerprint]


def test_a_crafted_v1_bundle_opens(
    sender: KeycourierIdentity, receiver: KeycourierIdentity, creds: Credentials
) -> None:
    """The crafting helper is sound: without a change, the bundle opens."""
    text = v1_bundle(sender, receiver, creds)
    opened = bundle.open_verified(text, identity=receiver, trusted=trust(sender), now=LATER)
    assert opened.credentials.client_id == creds.client_id


# -- shapes are matched in full --------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "recipients",
        "sender.signing_key",
        "sender.fingerprint",
        "policy.digest",
        "policy.warnings",
        "fingerprint",
        "payload.sha256",
    ],
)
def test_a_trailing_newline_is_a_wrong_shape(
    field: str, sender: KeycourierIdentity, receiver: KeycourierIdentity, creds: Credentials
) -> None:
    sealed = make_bundle(sender, receiver, creds)
    d = sealed.manifest.to_dict()
    parent, _, leaf = field.rpartition(".")
    target = d[parent] if parent else d
    value = target[leaf]
    if leaf == "recipients":
        value = [value[0] + "\n"]
    elif leaf == "warnings":
        value = ["sandbox-host\n"]
    else:
        value = value + "\n"
    text = v1_bundle(sender, receiver, creds, edit={field: value})
    with pytest.raises(IntegrityError):
        bundle.parse(text)
    with pytest.raises(IntegrityError):
        bundle.inspect(text, now=LATER)


# -- a created_at in the future --------------------------------------------------------


def test_a_bundle_dated_in_the_future_is_refused(
    sender: KeycourierIdentity, receiver: KeycourierIdentity, creds: Credentials
) -> None:
    future = make_bundle(sender, receiver, creds, now=NOW + timedelta(days=365))
    with pytest.raises(PolicyError) as info:
        bundle.open_verified(future.text, identity=receiver, trusted=trust(sender), now=NOW)
    assert info.value.exit_code == 7
    assert "in the future" in info.value.message
    assert "2027-11-22T12:00:00Z" in info.value.message
    assert bundle.inspect(future.text, now=NOW).created_in_future


def test_a_created_at_within_the_clock_skew_opens(
    sender: KeycourierIdentity, receiver: KeycourierIdentity, creds: Credentials
) -> None:
    skewed = make_bundle(sender, receiver, creds, now=NOW + timedelta(minutes=5))
    opened = bundle.open_verified(skewed.text, identity=receiver, trusted=trust(sender), now=NOW)
    assert opened.manifest.bundle_id == skewed.manifest.bundle_id
    assert not bundle.inspect(skewed.text, now=NOW).created_in_future
    later = make_bundle(sender, receiver, creds, now=NOW + timedelta(minutes=5, seconds=1))
    with pytest.raises(PolicyError):
        bundle.open_verified(later.text, identity=receiver, trusted=trust(sender), now=NOW)


# -- the age header's stanzas and the manifest's recipients ------------------------------


def test_a_hidden_extra_recipient_is_refused(
    sender: KeycourierIdentity, receiver: KeycourierIdentity, creds: Credentials
) -> None:
    eavesdropper = KeycourierIdentity.generate(now=NOW)
    text = v1_bundle(sender, receiver, creds, extra=[eavesdropper.age_identity.recipient()])
    armored = text[text.index(b"-----BEGIN AGE") :]
    # the hidden recipient can really read the payload, and the signature is the sender's
    assert b"client_secret" in age.decrypt([eavesdropper.age_identity], armored)
    with pytest.raises(IntegrityError) as info:
        bundle.inspect(text, now=LATER)
    assert "recipients do not match" in info.value.message
    with pytest.raises(IntegrityError):
        bundle.open_verified(text, identity=receiver, trusted=trust(sender), now=LATER)


def test_a_stanza_of_another_type_is_refused(
    sender: KeycourierIdentity, receiver: KeycourierIdentity, creds: Credentials
) -> None:
    """The manifest shows one X25519 recipient; the payload has one hybrid stanza."""
    sealed = make_bundle(sender, receiver, creds)
    m = dataclasses.replace(sealed.manifest, format="keycourier-bundle/v1")
    hybrid = age.HybridIdentity.generate()
    binary = encrypt_for(m, creds, [hybrid.recipient()])
    d = with_payload(m.to_dict(), binary)
    text = v1_text(sender, d, binary)
    with pytest.raises(IntegrityError) as info:
        bundle.inspect(text, now=LATER)
    assert "recipients do not match" in info.value.message


def test_hybrid_recipients_match_their_stanzas(
    sender: KeycourierIdentity, creds: Credentials
) -> None:
    """age1pq1... recipients have mlkem768x25519 stanzas (age does not mix them with X25519)."""
    pq = [KeycourierIdentity.generate(pq=True, now=NOW) for _ in range(2)]
    sealed = bundle.seal(
        creds,
        sender=sender,
        recipients=[p.public().recipient for p in pq],
        policy=bundle.parse(make_bundle(sender, pq[0], creds).text).manifest.policy,
        lifetime=timedelta(days=1),
        environment="production",
        now=NOW,
    )
    assert all(r.startswith("age1pq1") for r in sealed.manifest.recipients)
    for ident in pq:
        opened = bundle.open_verified(sealed.text, identity=ident, trusted=trust(sender), now=LATER)
        assert opened.credentials.client_id == creds.client_id
