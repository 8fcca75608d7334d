"""Property tests: round trips, and every bit flip / truncation is rejected."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keycourier import age
from keycourier.redact import Secret

IDENTITIES = [age.X25519Identity.generate() for _ in range(5)]
RECIPIENTS = [i.recipient() for i in IDENTITIES]
HYBRID = age.HybridIdentity.generate()
CHUNK = 64 * 1024
EDGE_SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1, 3 * CHUNK - 5]


def _bytes_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


plaintexts = st.one_of(
    st.binary(max_size=512),
    st.builds(_bytes_of, st.sampled_from(EDGE_SIZES), st.integers(0, 2**32)),
)


@settings(max_examples=60)
@given(plaintext=plaintexts, count=st.integers(1, 5), armor=st.booleans(), which=st.integers(0, 4))
def test_x25519_round_trip(plaintext: bytes, count: int, armor: bool, which: int) -> None:
    recipients = RECIPIENTS[:count]
    data = age.encrypt(recipients, plaintext, armor=armor)
    assert data.startswith(b"-----BEGIN AGE" if armor else b"age-encryption.org/v1\n")
    chunks = max(1, -(-len(plaintext) // CHUNK))
    if not armor:
        header = data.index(b"\n--- ") + 5 + 43 + 1
        assert len(data) == header + 16 + len(plaintext) + 16 * chunks
    assert age.decrypt([IDENTITIES[which % count]], data) == plaintext
    if count < 5:
        with pytest.raises(age.NoMatchError):
            age.decrypt([IDENTITIES[4]], data)


@settings(max_examples=10)
@given(plaintext=plaintexts, armor=st.booleans())
def test_hybrid_round_trip(plaintext: bytes, armor: bool) -> None:
    data = age.encrypt([HYBRID.recipient()], plaintext, armor=armor)
    assert age.decrypt([IDENTITIES[0], HYBRID], data) == plaintext


@settings(max_examples=10)
@given(plaintext=st.binary(max_size=300), work_factor=st.integers(1, 6))
def test_scrypt_round_trip(plaintext: bytes, work_factor: int) -> None:
    data = age.encrypt([age.ScryptRecipient(Secret("correct horse"), work_factor)], plaintext)
    assert f" {work_factor}\n".encode() in data
    assert age.decrypt([age.ScryptIdentity(Secret("correct horse"))], data) == plaintext
    with pytest.raises(age.NoMatchError):
        age.decrypt([age.ScryptIdentity(Secret("wrong horse"))], data)
    if work_factor > 1:
        capped = age.ScryptIdentity(Secret("correct horse"), max_work_factor=work_factor - 1)
        with pytest.raises(age.HeaderError):
            age.decrypt([capped], data)


@settings(max_examples=20)
@given(plaintext=plaintexts, count=st.integers(1, 3))
def test_stream_api_matches_bytes_api(plaintext: bytes, count: int) -> None:
    out = io.BytesIO()
    age.encrypt_stream(RECIPIENTS[:count], io.BytesIO(plaintext), out, armor=True)
    back = io.BytesIO()
    age.decrypt_stream([IDENTITIES[0]], io.BytesIO(out.getvalue()), back)
    assert back.getvalue() == plaintext == age.decrypt([IDENTITIES[0]], out.getvalue())


def _small_files() -> list[tuple[str, bytes, list[age.Identity]]]:
    plain = b"client_secret=s3cr3t"
    return [
        ("binary-x25519", age.encrypt(RECIPIENTS[:2], plain), [IDENTITIES[1]]),
        ("armored-x25519", age.encrypt(RECIPIENTS[:1], plain, armor=True), [IDENTITIES[0]]),
        (
            "binary-scrypt",
            age.encrypt([age.ScryptRecipient(Secret("pw"), 2)], plain),
            [age.ScryptIdentity(Secret("pw"))],
        ),
    ]


@pytest.mark.parametrize(("name", "data", "idents"), _small_files(), ids=lambda x: str(x)[:14])
def test_every_single_bit_flip_is_rejected(
    name: str, data: bytes, idents: list[age.Identity]
) -> None:
    assert age.decrypt(idents, data)
    for i in range(len(data) * 8):
        tampered = bytearray(data)
        tampered[i // 8] ^= 1 << (i % 8)
        with pytest.raises(age.AgeError):
            age.decrypt(idents, bytes(tampered))


@pytest.mark.parametrize(("name", "data", "idents"), _small_files(), ids=lambda x: str(x)[:14])
def test_every_truncation_is_rejected(name: str, data: bytes, idents: list[age.Identity]) -> None:
    # An armored file may lose its final newline (the spec allows no EOL).
    keep = len(data) - 1 if name.startswith("armored") else len(data)
    for n in range(keep):
        with pytest.raises(age.AgeError):
            age.decrypt(idents, data[:n])
    if keep != len(data):
        assert age.decrypt(idents, data[:keep]) == age.decrypt(idents, data)


@settings(max_examples=40)
@given(position=st.integers(0, 10**9), bit=st.integers(0, 7))
def test_bit_flip_anywhere_in_a_multi_chunk_file(position: int, bit: int) -> None:
    data = _MULTI
    tampered = bytearray(data)
    tampered[position % len(data)] ^= 1 << bit
    with pytest.raises(age.AgeError):
        age.decrypt([IDENTITIES[0]], bytes(tampered))


_MULTI = age.encrypt(RECIPIENTS[:1], _bytes_of(2 * CHUNK + 100, 7))


@settings(max_examples=30)
@given(cut=st.integers(1, 2 * CHUNK + 100 + 200))
def test_truncated_multi_chunk_file_is_rejected(cut: int) -> None:
    with pytest.raises(age.AgeError):
        age.decrypt([IDENTITIES[0]], _MULTI[: max(0, len(_MULTI) - cut)])
