from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from keycourier import bundle
from keycourier.bundle import Credentials, KeycourierIdentity, SealedBundle
from keycourier.bundle.model import INTEGRITY_MESSAGE
from keycourier.errors import IntegrityError, PolicyError, UsageError
from tests.support.bundles import NOW, STAMP, make_bundle, qbo_credentials

LATER = NOW + timedelta(hours=1)


def trust(ident: KeycourierIdentity) -> list[str]:
    return [ident.public().signing_fingerprint]


def test_round_trip_releases_exact_credentials(
    sealed: SealedBundle,
    sender: KeycourierIdentity,
    receiver: KeycourierIdentity,
    creds: Credentials,
) -> None:
    opened = bundle.open_verified(sealed.text, identity=receiver, trusted=trust(sender), now=LATER)
    assert opened.credentials.client_id == creds.client_id
    assert opened.credentials.client_secret.equals(creds.client_secret)
    assert opened.manifest == sealed.manifest


def test_trust_by_full_signing_key(
    sealed: SealedBundle, sender: KeycourierIdentity, receiver: KeycourierIdentity
) -> None:
    key = sender.public().signing_key
    opened = bundle.open_verified(sealed.text, identity=receiver, trusted=[key], now=LATER)
    assert opened.manifest.sender_key == key


def test_manifest_is_public_and_never_holds_the_secret(
    sealed: SealedBundle, creds: Credentials, receiver: KeycourierIdentity
) -> None:
    text = sealed.text.decode("ascii")
    assert creds.client_secret.reveal() not in text
    assert creds.client_id not in text
    m = sealed.manifest
    assert m.client_id_masked == f"{creds.client_id[:4]}…{creds.client_id[-4:]}"
    assert m.fingerprint == bundle.credential_fingerprint(
        "quickbooks", creds.client_id, creds.client_secret
    )
    assert m.recipients == (receiver.public().recipient,)
    assert m.expires_at - m.created_at == timedelta(days=7)
    assert text.startswith("keycourier-bundle/v2\n-----BEGIN KEYCOURIER MANIFEST-----\n")
    assert text.endswith("-----END AGE ENCRYPTED FILE-----\n")
    assert max(len(line) for line in text.split("\n")) == 64


def test_inspect_needs_no_key(sealed: SealedBundle) -> None:
    result = bundle.inspect(sealed.text, now=LATER)
    assert result.signature_valid
    assert result.payload_digest_valid
    assert not result.expired
    assert (
        json.loads(json.dumps(result.to_dict()))["manifest"]["bundle_id"]
        == sealed.manifest.bundle_id
    )


def test_untrusted_sender_gets_the_one_integrity_error(
    sealed: SealedBundle, receiver: KeycourierIdentity
) -> None:
    stranger = KeycourierIdentity.generate(now=NOW)
    with pytest.raises(IntegrityError) as info:
        bundle.open_verified(sealed.text, identity=receiver, trusted=trust(stranger), now=LATER)
    assert info.value.message == INTEGRITY_MESSAGE


def test_wrong_identity_gets_the_same_error(
    sealed: SealedBundle, sender: KeycourierIdentity
) -> None:
    other = KeycourierIdentity.generate(now=NOW)
    with pytest.raises(IntegrityError) as info:
        bundle.open_verified(sealed.text, identity=other, trusted=trust(sender), now=LATER)
    assert info.value.message == INTEGRITY_MESSAGE


def _blocks(text: bytes) -> tuple[bytes, bytes]:
    head, _, armor = text.partition(b"-----BEGIN AGE ENCRYPTED FILE-----")
    return head, b"-----BEGIN AGE ENCRYPTED FILE-----" + armor


def test_swapped_payload_is_detected(
    sender: KeycourierIdentity, receiver: KeycourierIdentity
) -> None:
    a = make_bundle(sender, receiver, qbo_credentials())
    b = make_bundle(sender, receiver, qbo_credentials())
    frankenstein = _blocks(a.text)[0] + _blocks(b.text)[1]
    with pytest.raises(IntegrityError):
        bundle.open_verified(frankenstein, identity=receiver, trusted=trust(sender), now=LATER)


def test_resigned_manifest_with_foreign_payload_is_detected(
    sender: KeycourierIdentity, receiver: KeycourierIdentity
) -> None:
    """A trusted sender's key signing a manifest whose payload belongs to another bundle."""
    from keycourier.bundle import text as bundle_text
    from keycourier.bundle.canonical import canonical_json
    from keycourier.bundle.core import SIGNATURE_CONTEXT

    a = make_bundle(sender, receiver, qbo_credentials())
    b = make_bundle(sender, receiver, qbo_credentials())
    # Take a's manifest, point its payload digest at b's payload, re-sign properly.
    m = a.manifest.to_dict()
    m["payload"] = b.manifest.to_dict()["payload"]
    mb = canonical_json(m)
    sig = sender.sign(SIGNATURE_CONTEXT + mb)
    text = bundle_text.write(mb, sig, bundle.parse(b.text).payload)
    assert bundle.inspect(text, now=LATER).signature_valid
    with pytest.raises(IntegrityError):
        bundle.open_verified(text, identity=receiver, trusted=trust(sender), now=LATER)


def test_expired_bundle_is_a_policy_error_that_says_when(
    sealed: SealedBundle, sender: KeycourierIdentity, receiver: KeycourierIdentity
) -> None:
    with pytest.raises(PolicyError) as info:
        bundle.open_verified(
            sealed.text, identity=receiver, trusted=trust(sender), now=NOW + timedelta(days=8)
        )
    assert "expired at 2026-11-29T12:00:00Z" in info.value.message


def test_crlf_and_outer_whitespace_survive_transport(
    sealed: SealedBundle, sender: KeycourierIdentity, receiver: KeycourierIdentity
) -> None:
    mangled = b"\n  \n" + sealed.text.replace(b"\n", b"\r\n") + b"\r\n\r\n"
    opened = bundle.open_verified(mangled, identity=receiver, trusted=trust(sender), now=LATER)
    assert opened.manifest.bundle_id == sealed.manifest.bundle_id


def _swap_blocks(t: bytes) -> bytes:
    lines = t.split(b"\n")
    i, j = (
        lines.index(b"-----BEGIN KEYCOURIER MANIFEST-----"),
        lines.index(b"-----BEGIN KEYCOURIER SIGNATURE-----"),
    )
    k = lines.index(b"-----BEGIN AGE ENCRYPTED FILE-----")
    return b"\n".join([lines[0], *lines[j:k], *lines[i:j], *lines[k:]])


def _quote_all_but_line_5(t: bytes) -> bytes:
    lines = t.split(b"\n")
    return b"\n".join(line if i == 4 else b"> " + line for i, line in enumerate(lines))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda t: t.replace(b"keycourier-bundle/v2", b"keycourier-bundle/v3", 1),
            "unsupported bundle format version 'keycourier-bundle/v3'",
        ),
        (
            lambda t: t.replace(b"-----END KEYCOURIER MANIFEST-----", b"JUNK\n" * 1, 1),
            "the bundle is damaged at line",
        ),
        (lambda t: t + t, "more than one bundle"),
        (_quote_all_but_line_5, "the bundle is damaged at line 5: the line does not start"),
        (lambda t: t.replace(b"\n", b"\n!", 1), "the bundle is damaged at line 2: expected"),
        (
            lambda t: t.replace(
                b"==\n-----END KEYCOURIER SIGNATURE", b"=*\n-----END KEYCOURIER SIGNATURE"
            ),
            "a character that is not base64 in the signature block",
        ),
        (_swap_blocks, "the bundle is damaged at line 2: expected"),
        (
            lambda t: t.replace(b"FILE-----\n", b"FILE----- and more\n"),
            "text after '-----END AGE ENCRYPTED FILE-----' on the same line",
        ),
        (lambda t: t[: t.index(b"-----END AGE")], "ends before '-----END AGE ENCRYPTED FILE-----'"),
        (lambda t: b"", "not a keycourier bundle: the input is empty"),
    ],
)
def test_layout_deviations_are_rejected_precisely(
    mutate: object,
    message: str,
    sealed: SealedBundle,
    sender: KeycourierIdentity,
    receiver: KeycourierIdentity,
) -> None:
    assert callable(mutate)
    text = mutate(sealed.text)
    for check in (
        lambda: bundle.inspect(text, now=LATER),
        lambda: bundle.open_verified(text, identity=receiver, trusted=trust(sender), now=LATER),
    ):
        with pytest.raises(IntegrityError) as info:
            check()
        assert message in info.value.message
        assert info.value.message != INTEGRITY_MESSAGE


def test_a_damaged_line_is_named(sealed: SealedBundle) -> None:
    """Every base64 line, damaged in turn, is named by its number, also after quoting."""
    lines = sealed.text.split(b"\n")
    blocks = {b"MANIFEST-----": "manifest", b"SIGNATURE-----": "signature", b"FILE-----": "age"}
    block = ""
    for i, line in enumerate(lines):
        if line.startswith(b"-----BEGIN"):
            block = blocks[line.split(b" ")[-1]]
            continue
        if line.startswith((b"-----", b"keycourier")) or not line:
            continue
        damaged = [*lines[:i], b"*" + line[1:], *lines[i + 1 :]]
        quoted = b"Hi,\n" + b"\n".join(b"> " + x for x in damaged)
        for text, number in ((b"\n".join(damaged), i + 1), (quoted, i + 2)):
            with pytest.raises(IntegrityError) as info:
                bundle.inspect(text, now=LATER)
            assert info.value.message == (
                f"the bundle is damaged at line {number}: "
                f"a character that is not base64 in the {block} block"
            )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: b"junk\n" + t,
        lambda t: t + b"junk\n",
        lambda t: t.replace(b"\n", b"\n ", 1),
        lambda t: b"\xef\xbb\xbf" + t,
        lambda t: t.replace(
            b"-----END KEYCOURIER SIGNATURE-----\n", b"-----END KEYCOURIER SIGNATURE-----\n\n", 1
        ),
        lambda t: b"Hello,\n\nhere it is:\n\n" + t + b"\n--\nJane\n",
    ],
)
def test_transport_noise_is_undone(
    mutate: object, sealed: SealedBundle, sender: KeycourierIdentity, receiver: KeycourierIdentity
) -> None:
    assert callable(mutate)
    opened = bundle.open_verified(
        mutate(sealed.text), identity=receiver, trusted=trust(sender), now=LATER
    )
    assert opened.manifest == sealed.manifest


def test_oversized_bundle_is_rejected_before_parsing(
    sender: KeycourierIdentity, receiver: KeycourierIdentity
) -> None:
    with pytest.raises(IntegrityError):
        bundle.open_verified(
            b"x" * (1024 * 1024 + 1), identity=receiver, trusted=trust(sender), now=LATER
        )


def test_every_bit_flip_is_rejected(
    sealed: SealedBundle, sender: KeycourierIdentity, receiver: KeycourierIdentity
) -> None:
    """Exhaustive: flip each bit of a sample bundle; nothing may open, nothing else may escape."""
    text = sealed.text
    fpr = trust(sender)
    accepted = []
    for i in range(len(text)):
        for bit in range(8):
            mutated = bytearray(text)
            mutated[i] ^= 1 << bit
            try:
                bundle.open_verified(bytes(mutated), identity=receiver, trusted=fpr, now=LATER)
            except IntegrityError:
                continue
            accepted.append((i, bit))
    # CR<->LF style flips are only harmless where the reader normalises; none should open.
    assert accepted == []


def test_every_truncation_is_rejected(
    sealed: SealedBundle, sender: KeycourierIdentity, receiver: KeycourierIdentity
) -> None:
    text = sealed.text.rstrip(b"\n")
    fpr = trust(sender)
    for n in range(len(text)):
        with pytest.raises(IntegrityError):
            bundle.open_verified(text[:n], identity=receiver, trusted=fpr, now=LATER)


def test_seal_refuses_bad_recipients(sender: KeycourierIdentity, creds: Credentials) -> None:
    with pytest.raises(UsageError):
        bundle.seal(
            creds,
            sender=sender,
            recipients=[],
            policy=STAMP,
            lifetime=timedelta(days=1),
            environment="production",
            now=NOW,
        )
    with pytest.raises(UsageError):
        bundle.seal(
            creds,
            sender=sender,
            recipients=["age1notarecipient"],
            policy=STAMP,
            lifetime=timedelta(days=1),
            environment="production",
            now=NOW,
        )


def test_stock_age_decrypts_the_extracted_payload(
    sealed: SealedBundle, receiver: KeycourierIdentity, creds: Credentials, tmp_path: Path
) -> None:
    key = tmp_path / "id.agekey"
    key.write_text(receiver.export_age())
    key.chmod(0o600)
    armored = bundle.extract_age(sealed.text)
    out = subprocess.run(
        ["age", "-d", "-i", str(key)], input=armored, capture_output=True, check=True
    )
    payload = json.loads(out.stdout)
    assert payload["client_id"] == creds.client_id
    assert payload["client_secret"] == creds.client_secret.reveal()
    assert payload["bundle_id"] == sealed.manifest.bundle_id
