"""The stream masker: every predictable encoding, across every read boundary."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

from hypothesis import given
from hypothesis import strategies as st

from keycourier.helper.masking import CONCEALED, StreamMasker, encodings

TOKEN = "tok+en/with=odd&chars_0123456789abcdef"
CLIENT_ID = "5b7c3f1e-8d2a-4c6b-9e0f-1a2b3c4d5e6f"
SECRET = "s3cr3t-value-for-masking-tests"


def _mask_all(masker: StreamMasker, data: bytes, cuts: list[int]) -> bytes:
    out = b""
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        cut = min(max(cut, prev), len(data))
        out += masker.feed(data[prev:cut])
        prev = cut
    return out + masker.flush()


def _forms() -> list[bytes]:
    basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode())
    return [
        TOKEN.encode(),
        quote(TOKEN, safe="").encode(),
        quote_plus(TOKEN).encode(),
        json.dumps({"t": TOKEN}).encode(),
        b"Authorization: Basic " + basic,
        b"x-" + base64.b64encode(f"user:{TOKEN}".encode()) + b"-x",
        base64.urlsafe_b64encode(TOKEN.encode()),
        SECRET.encode(),
        TOKEN.encode().hex().encode(),
        b"0x" + SECRET.encode().hex().upper().encode(),
        b"dump " + (b"GET /?t=" + TOKEN.encode() + b" HTTP/1.1").hex().encode(),
    ]


def _hex_forms() -> list[bytes]:
    return [v.encode().hex().encode() for v in (TOKEN, SECRET)] + [
        v.encode().hex().upper().encode() for v in (TOKEN, SECRET)
    ]


def test_each_encoding_is_concealed_in_one_piece() -> None:
    for form in _forms():
        masker = StreamMasker([TOKEN, SECRET])
        out = masker.feed(b"before " + form + b" after\n") + masker.flush()
        assert CONCEALED in out
        assert TOKEN.encode() not in out
        assert SECRET.encode() not in out
        assert quote(TOKEN, safe="").encode() not in out
        assert base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()) not in out
        assert out.startswith(b"before ")
        assert out.endswith(b" after\n")


def test_hex_encodings_are_concealed_lower_and_upper_case() -> None:
    for form in _hex_forms():
        masker = StreamMasker([TOKEN, SECRET])
        out = masker.feed(b"hex: " + form + b"\n") + masker.flush()
        assert out == b"hex: " + CONCEALED + b"\n"
    assert TOKEN.encode().hex().encode() in encodings(TOKEN)
    assert TOKEN.encode().hex().upper().encode() in encodings(TOKEN)


def test_text_without_secrets_passes_unchanged() -> None:
    masker = StreamMasker([TOKEN])
    data = b"hello world\n" * 100
    assert _mask_all(masker, data, list(range(0, len(data), 7))) == data


def test_empty_secret_list_is_a_pass_through() -> None:
    masker = StreamMasker([])
    assert masker.feed(b"abc") == b"abc"
    assert masker.flush() == b""


def test_encodings_include_the_raw_value_and_url_form() -> None:
    forms = encodings(TOKEN)
    assert TOKEN.encode() in forms
    assert quote(TOKEN, safe="").encode() in forms


@given(
    prefix=st.binary(max_size=50),
    suffix=st.binary(max_size=50),
    which=st.integers(min_value=0, max_value=10),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30),
)
def test_split_reads_never_leak(prefix: bytes, suffix: bytes, which: int, cuts: list[int]) -> None:
    form = _forms()[which]
    data = prefix + form + suffix + form
    whole = StreamMasker([TOKEN, SECRET])
    expected = whole.feed(data) + whole.flush()
    got = _mask_all(StreamMasker([TOKEN, SECRET]), data, cuts)
    assert got == expected
    assert TOKEN.encode() not in got
    assert SECRET.encode() not in got
    assert quote(TOKEN, safe="").encode() not in got
    for hex_form in _hex_forms():
        assert hex_form not in got
