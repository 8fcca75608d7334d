"""Every CCTV age vector, one test case per file."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from keycourier import age
from keycourier.age import _format
from keycourier.age._api import _open_source
from keycourier.age.recipients import ScryptIdentity
from keycourier.redact import Secret
from tests.unit.age._vectors import Vector, all_vector_paths, load

EXPECTED_ERROR: dict[str, type[age.AgeError]] = {
    "header failure": age.HeaderError,
    "armor failure": age.ArmorError,
    "payload failure": age.PayloadError,
    "no match": age.NoMatchError,
    "HMAC failure": age.HmacError,
}

PATHS = all_vector_paths()


def _identities(v: Vector) -> list[age.Identity]:
    idents: list[age.Identity] = [age.parse_identity(i) for i in v.identities]
    idents += [ScryptIdentity(Secret(p)) for p in v.passphrases]
    # A few header-failure vectors name no key; an unrelated one cannot match.
    return idents or [age.X25519Identity.generate()]


def test_all_115_vectors_are_present() -> None:
    assert len(PATHS) == 115


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_vector(path: Path) -> None:
    v = load(path)
    idents = _identities(v)
    if v.expect == "success":
        plaintext = age.decrypt(idents, v.data)
        assert hashlib.sha256(plaintext).hexdigest() == v.payload
        return
    expected = EXPECTED_ERROR[v.expect]
    with pytest.raises(age.AgeError) as info:
        age.decrypt(idents, v.data)
    assert type(info.value) is expected, f"{v.name}: {info.value!r}"


@pytest.mark.parametrize(
    "path",
    [p for p in PATHS if load(p).expect == "payload failure"],
    ids=lambda p: p.name,
)
def test_payload_failure_released_prefix_matches(path: Path) -> None:
    """The streaming API releases exactly the verified prefix the vectors describe."""
    v = load(path)
    out = io.BytesIO()
    with pytest.raises(age.PayloadError):
        age.decrypt_stream(_identities(v), io.BytesIO(v.data), out)
    assert hashlib.sha256(out.getvalue()).hexdigest() == v.payload


@pytest.mark.parametrize(
    "path",
    [p for p in PATHS if load(p).expect == "success"],
    ids=lambda p: p.name,
)
def test_success_vectors_reencrypt_byte_for_byte(path: Path) -> None:
    """Re-encrypting the plaintext from the vector's own stanzas, key and nonce gives its bytes."""
    v = load(path)
    plaintext = age.decrypt(_identities(v), v.data)
    binary = _open_source(io.BytesIO(v.data)).read(1 << 26)
    reader = _format.Reader(io.BytesIO(binary))
    header = _format.read_header(reader)
    nonce = reader.read(16)
    out = io.BytesIO()
    age.encrypt_stream_from_parts(
        header.stanzas, v.file_key, nonce, io.BytesIO(plaintext), out, armor=v.armored
    )
    if v.armored:
        canonical = v.data.strip(b" \t\r\n").replace(b"\r\n", b"\n") + b"\n"
        if v.name in ("armor_whitespace_outside", "armor_crlf", "armor_no_eol"):
            assert age.decrypt(_identities(v), out.getvalue()) == plaintext
        assert out.getvalue() == canonical
    else:
        assert out.getvalue() == binary


@pytest.mark.parametrize(
    "path",
    [p for p in PATHS if load(p).expect not in ("header failure", "armor failure")],
    ids=lambda p: p.name,
)
def test_parsed_headers_re_encode_to_the_same_bytes(path: Path) -> None:
    v = load(path)
    binary = _open_source(io.BytesIO(v.data)).read(1 << 26)
    header = _format.read_header(_format.Reader(io.BytesIO(binary)))
    encoded = _format.VERSION_LINE + b"".join(s.encode() for s in header.stanzas) + b"---"
    assert encoded == header.mac_input
