"""The one-chunk path of ``age.encrypt`` writes the same bytes as the streaming path."""

from __future__ import annotations

import io
import os

import pytest

from keycourier import age
from keycourier.age._format import CHUNK_SIZE

IDENTITY = age.X25519Identity.generate()
FILE_KEY = bytes(range(16))
NONCE = bytes(range(16, 32))


@pytest.mark.parametrize("size", [0, 1, 200, CHUNK_SIZE - 1, CHUNK_SIZE])
def test_bytes_path_equals_stream_path(size: int) -> None:
    plaintext = os.urandom(size)
    stanzas = IDENTITY.recipient().wrap(FILE_KEY)
    out = io.BytesIO()
    age.encrypt_stream_from_parts(stanzas, FILE_KEY, NONCE, io.BytesIO(plaintext), out)
    assert age.encrypt_bytes_from_parts(stanzas, FILE_KEY, NONCE, plaintext) == out.getvalue()


def test_bytes_path_refuses_a_second_chunk() -> None:
    stanzas = IDENTITY.recipient().wrap(FILE_KEY)
    with pytest.raises(ValueError, match="more than one chunk"):
        age.encrypt_bytes_from_parts(stanzas, FILE_KEY, NONCE, bytes(CHUNK_SIZE + 1))


@pytest.mark.parametrize("size", [0, 300, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE])
def test_encrypt_round_trips_on_both_sides_of_the_chunk_size(size: int) -> None:
    plaintext = os.urandom(size)
    data = age.encrypt([IDENTITY.recipient()], plaintext)
    assert age.decrypt([IDENTITY], data) == plaintext
    # A single final chunk, or full non-final chunks then a final one.
    chunks = max(1, -(-size // CHUNK_SIZE))
    header_end = data.index(b"\n---") + 1
    header_end = data.index(b"\n", header_end) + 1
    assert len(data) - header_end - len(NONCE) == size + 16 * chunks


def test_one_recipient_checks_still_apply() -> None:
    with pytest.raises(age.AgeUsageError):
        age.encrypt([IDENTITY.recipient().to_string()], b"x")  # type: ignore[list-item]
    with pytest.raises(age.AgeUsageError):
        age.encrypt([], b"x")
