"""The one-block HKDF in age/_format.py equals RFC 5869 HKDF (cryptography's)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from keycourier.age._format import hkdf


@given(ikm=st.binary(max_size=64), salt=st.binary(max_size=80), info=st.binary(max_size=64))
def test_matches_rfc5869(ikm: bytes, salt: bytes, info: bytes) -> None:
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt or None, info=info).derive(ikm)
    assert hkdf(ikm, salt, info) == expected


def test_rfc5869_case_1() -> None:
    # RFC 5869 appendix A.1, first 32 bytes of OKM.
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
    assert hkdf(ikm, salt, info).hex() == okm
