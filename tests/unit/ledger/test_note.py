"""Exported checkpoints (ledger/note.py): the format, its strict parser, its signature."""

from __future__ import annotations

import base64
import hashlib

import pytest
from nacl.signing import SigningKey

from keycourier.errors import IntegrityError
from keycourier.ledger import note

LEDGER = "0123456789abcdef"
HEAD = hashlib.sha256(b"head").hexdigest()
KEY = SigningKey(bytes(range(32)))
PUBLIC = KEY.verify_key.encode().hex()


def sign(body: bytes) -> bytes:
    return bytes(KEY.sign(body).signature)


def sample(events: int = 42) -> str:
    return note.format_note(LEDGER, events, HEAD, PUBLIC, sign)


def accept(data: bytes) -> None:
    """Parse and check against the sample's ledger and key (IntegrityError if refused)."""
    note.check_signature(note.parse_note(data, "cp"), LEDGER, PUBLIC, "cp")


def test_round_trip_and_layout() -> None:
    text = sample()
    lines = text.split("\n")
    assert lines[:4] == [
        f"keycourier/ledger-v1/{LEDGER}",
        "42",
        base64.b64encode(bytes.fromhex(HEAD)).decode(),
        "",
    ]
    assert lines[4] == f"\u2014 keycourier/ledger/{LEDGER}"
    assert text.endswith("\n")
    assert all(len(line) <= 64 for line in lines)
    parsed = note.parse_note(text.encode(), "cp")
    assert (parsed.ledger_id, parsed.events, parsed.head_hash) == (LEDGER, 42, HEAD)
    note.check_signature(parsed, LEDGER, PUBLIC, "cp")


def test_unwrapped_signature_line_is_the_c2sp_one() -> None:
    """Key ID and signature as C2SP signed-note defines them, computed independently here."""
    text = sample()
    body, _, sig_block = text.partition("\n\n")
    sig_lines = sig_block.rstrip("\n").split("\n")
    dash, name = sig_lines[0].split(" ")
    assert dash == "\u2014"
    blob = base64.b64decode("".join(sig_lines[1:]))
    public = bytes.fromhex(PUBLIC)
    assert blob[:4] == hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]
    KEY.verify_key.verify((body + "\n").encode(), blob[4:])
    name_, key_id, key_b64 = note.verifier_key(LEDGER, PUBLIC).split("+", 2)
    assert (name_, key_id) == (name, blob[:4].hex())
    assert base64.b64decode(key_b64) == b"\x01" + public


def test_every_bit_flip_is_refused() -> None:
    data = sample().encode()
    for i in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            with pytest.raises(IntegrityError):
                accept(bytes(flipped))


def test_every_truncation_is_refused() -> None:
    data = sample().encode().rstrip(b"\n")
    for n in range(len(data)):
        with pytest.raises(IntegrityError):
            accept(data[:n])


def test_crlf_line_ends_are_forgiven() -> None:
    accept(sample().replace("\n", "\r\n").encode())


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("ledger-v1/", "ledger-v2/", "version 2 checkpoint; this keycourier reads version 1"),
        ("ledger-v1/", "ledger-vx/", "line 1 names no format version"),
        (f"v1/{LEDGER}", "v1/XYZ", "line 1 does not end with a ledger ID"),
        ("\n42\n", "\n042\n", "line 2 is not a positive event count"),
        ("\n42\n", "\n0\n", "line 2 is not a positive event count"),
        ("=\n\n", "=\nextension\n\n", "line 4 must be blank"),
        ("=\n\n", "\n\n", "line 3 is not a base64 SHA-256 head hash"),
        ("\u2014 ", "-- ", "line 5 is not a signature line"),
    ],
)
def test_what_the_parser_refuses(old: str, new: str, message: str) -> None:
    text = sample()
    assert old in text
    with pytest.raises(IntegrityError, match=message):
        note.parse_note(text.replace(old, new, 1).encode(), "cp")


def test_size_limit() -> None:
    with pytest.raises(IntegrityError, match="larger than"):
        note.parse_note(sample().encode() + b" " * note.MAX_NOTE_BYTES, "cp")


def test_another_key_or_ledger_is_named() -> None:
    parsed = note.parse_note(sample().encode(), "cp")
    other = SigningKey(bytes(32)).verify_key.encode().hex()
    with pytest.raises(IntegrityError, match="checkpoint key differs: the ledger's key was"):
        note.check_signature(parsed, LEDGER, other, "cp")
    with pytest.raises(IntegrityError, match="is of ledger 0123456789abcdef, not of this"):
        note.check_signature(parsed, "fedcba9876543210", PUBLIC, "cp")
