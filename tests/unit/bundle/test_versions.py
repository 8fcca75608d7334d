"""Version 1 bundles (as the version-1 writer made them) stay readable; foreign input is named."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keycourier import age, bundle
from keycourier.bundle import KeycourierIdentity, SealedBundle
from keycourier.errors import IntegrityError
from keycourier.redact import Secret
from tests.support.bundles import NOW

V1 = Path(__file__).resolve().parents[2] / "vectors" / "bundle-v1"
EXPECTED = json.loads((V1 / "expected.json").read_text())
WHEN = datetime(2026, 12, 4, tzinfo=UTC)


def _receiver() -> KeycourierIdentity:
    data = (V1 / "receiver.kcid").read_bytes()
    return bundle.load_identity(data, Secret(EXPECTED["passphrase"]))


def test_the_v1_fixture_still_inspects_and_opens() -> None:
    text = (V1 / "handover-v1.kcb").read_bytes()
    assert text.startswith(b"keycourier-bundle/v1\n")
    result = bundle.inspect(text, now=WHEN)
    assert result.signature_valid
    assert result.payload_digest_valid
    assert result.manifest.format == "keycourier-bundle/v1"
    assert result.manifest.bundle_id == EXPECTED["bundle_id"]
    opened = bundle.open_verified(
        text, identity=_receiver(), trusted=[EXPECTED["sender_fingerprint"]], now=WHEN
    )
    assert opened.credentials.client_id == EXPECTED["client_id"]
    assert opened.credentials.client_secret.reveal() == EXPECTED["client_secret"]
    assert bundle.extract_age(text) == text[text.index(b"-----BEGIN AGE") :]


def test_the_v1_fixture_survives_quoting_crlf_and_rewrapped_armor() -> None:
    text = (V1 / "handover-v1.kcb").read_bytes()
    lines = text.rstrip(b"\n").split(b"\n")
    age_at = lines.index(b"-----BEGIN AGE ENCRYPTED FILE-----")
    rewrapped = [
        *lines[: age_at + 1],
        *[x[i : i + 40] for x in lines[age_at + 1 : -1] for i in range(0, len(x), 40)],
        lines[-1],
    ]
    mangled = b"\xef\xbb\xbfOn Monday you wrote:\r\n" + b"".join(
        b"> " + x + b"  \r\n" for x in rewrapped
    )
    opened = bundle.open_verified(
        mangled, identity=_receiver(), trusted=[EXPECTED["sender_fingerprint"]], now=WHEN
    )
    assert opened.credentials.client_id == EXPECTED["client_id"]


def test_a_v1_manifest_line_cut_in_two_is_damaged() -> None:
    text = (V1 / "handover-v1.kcb").read_bytes()
    lines = text.split(b"\n")
    cut = b"\n".join([*lines[:2], lines[2][:500], lines[2][500:], *lines[3:]])
    with pytest.raises(IntegrityError) as info:
        bundle.inspect(cut, now=WHEN)
    assert info.value.message == "the bundle is damaged at line 4: expected " + repr(
        "-----END KEYCOURIER MANIFEST-----"
    ).replace('"', "'")


def test_a_manifest_format_that_differs_from_the_first_line(sealed: SealedBundle) -> None:
    text = sealed.text.replace(b"keycourier-bundle/v2", b"keycourier-bundle/v1", 1)
    with pytest.raises(IntegrityError) as info:
        bundle.inspect(text, now=NOW)
    assert info.value.message.startswith("the bundle is damaged at line 4")  # read as v1


def test_a_manifest_that_is_not_json_is_not_readable(sealed: SealedBundle) -> None:
    from keycourier.bundle import text as bundle_text

    parsed = bundle.parse(sealed.text)
    text = bundle_text.write(b"not json at all", parsed.signature, parsed.payload)
    with pytest.raises(IntegrityError) as info:
        bundle.inspect(text, now=NOW)
    assert info.value.message == ("the bundle's manifest is not readable: it is not canonical JSON")


def test_a_manifest_field_is_named(sealed: SealedBundle) -> None:
    from keycourier.bundle import text as bundle_text
    from keycourier.bundle.canonical import canonical_json

    parsed = bundle.parse(sealed.text)
    d = sealed.manifest.to_dict()
    d["platform"] = "myspace"
    text = bundle_text.write(canonical_json(d), parsed.signature, parsed.payload)
    with pytest.raises(IntegrityError) as info:
        bundle.inspect(text, now=NOW)
    assert info.value.message == (
        "the bundle's manifest is not readable: field 'platform' is missing, unknown or of "
        "the wrong form"
    )


def _identity_file() -> bytes:
    return KeycourierIdentity.generate(now=NOW).to_file(None)


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (_identity_file, "this is a keycourier identity file"),
        (
            lambda: age.encrypt([age.X25519Identity.generate().recipient()], b"x", armor=True),
            "this is an age file (use `keycourier age decrypt`)",
        ),
        (
            lambda: age.encrypt([age.X25519Identity.generate().recipient()], b"x"),
            "this is an age file (use `keycourier age decrypt`)",
        ),
        (
            lambda: KeycourierIdentity.generate(now=NOW).export_age().encode(),
            "this is an age identity (a secret key: keep it private)",
        ),
        (
            lambda: b"keycourier-receipt/v1\n...\n",
            "this is a keycourier receipt (use `keycourier receipt inspect` or `receipt verify`)",
        ),
        (lambda: b"keycourier-ticket/v3\n", "this is a keycourier ticket file"),
    ],
)
def test_a_known_foreign_file_is_named(make: object, what: str) -> None:
    assert callable(make)
    with pytest.raises(IntegrityError) as info:
        bundle.inspect(make(), now=NOW)
    assert info.value.message == f"not a keycourier bundle: {what}"


def test_anything_else_is_not_a_bundle() -> None:
    with pytest.raises(IntegrityError) as info:
        bundle.inspect(b"hello\nworld\n", now=NOW)
    assert info.value.message == "not a keycourier bundle"
    assert "keycourier-bundle/v2" in info.value.hints[0]
