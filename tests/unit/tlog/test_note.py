"""C2SP signed notes and tlog-checkpoint bodies."""

from __future__ import annotations

import base64
import hashlib

import pytest

from keycourier.tlog import checkpoint, note

SEED = bytes(range(32))
SIGNER = note.Signer("example.com/keycourier/ledger-1", SEED)
TEXT = "example.com/keycourier/ledger-1\n3\n" + base64.b64encode(bytes(32)).decode() + "\n"


def test_key_id_and_vkey_follow_the_spec() -> None:
    verifier = SIGNER.verifier
    expected = hashlib.sha256(SIGNER.name.encode() + b"\n\x01" + verifier.public_key).digest()[:4]
    assert verifier.key_id == expected
    name, hex_id, blob = verifier.vkey().split("+", 2)
    assert (name, hex_id) == (SIGNER.name, expected.hex())
    assert base64.b64decode(blob) == b"\x01" + verifier.public_key
    assert note.parse_vkey(verifier.vkey()) == verifier


def test_sign_and_open_round_trip() -> None:
    signed = note.sign(TEXT, [SIGNER])
    head, _, sig_line = signed.partition("\n\n")
    assert head + "\n" == TEXT
    assert sig_line.startswith("\u2014 " + SIGNER.name + " ")
    opened = note.open_note(signed, [SIGNER.verifier])
    assert opened.text == TEXT
    assert opened.verified_by == (SIGNER.name,)


def test_every_changed_character_fails() -> None:
    signed = note.sign(TEXT, [SIGNER])
    for i, ch in enumerate(signed):
        if ch == "\n" or ch == "\u2014":
            continue
        swapped = "B" if ch != "B" else "C"
        bad = signed[:i] + swapped + signed[i + 1 :]
        with pytest.raises(note.NoteError):
            note.open_note(bad, [SIGNER.verifier])


def test_unknown_keys_and_malformed_notes_fail() -> None:
    other = note.Signer(SIGNER.name, bytes(32))
    signed = note.sign(TEXT, [other])
    with pytest.raises(note.NoteError, match="known key"):
        note.open_note(signed, [SIGNER.verifier])
    for bad in [TEXT, TEXT + "\n", "x\n\n\u2014 a\n", "a\x01\n\n" + signed.split("\n\n")[1]]:
        with pytest.raises(note.NoteError):
            note.open_note(bad, [SIGNER.verifier])
    with pytest.raises(note.NoteError):
        note.sign("no newline", [SIGNER])
    with pytest.raises(note.NoteError):
        note.sign("a\n\nb\n", [SIGNER])
    with pytest.raises(note.NoteError):
        note.Signer("has space", SEED)
    with pytest.raises(note.NoteError):
        note.parse_vkey(SIGNER.verifier.vkey().replace("+", "+0", 1))


def test_two_signers_and_an_extra_unknown_signature() -> None:
    second = note.Signer("witness.example", bytes([7]) * 32)
    signed = note.sign(TEXT, [SIGNER, second])
    opened = note.open_note(signed, [second.verifier])
    assert opened.verified_by == ("witness.example",)
    assert opened.unverified == (SIGNER.name,)


def test_checkpoint_body_round_trip_and_strictness() -> None:
    cp = checkpoint.Checkpoint("example.com/log", 42, bytes(range(32)), ("ext one",))
    assert checkpoint.parse(cp.text()) == cp
    good = cp.text()
    for bad in [
        good[:-1],
        good.replace("\n42\n", "\n042\n"),
        good.replace("\n42\n", "\n-1\n"),
        good.replace("\n42\n", "\n4 2\n"),
        "\n42\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "o\n1\n" + base64.b64encode(bytes(31)).decode() + "\n",
        "o\n1\n" + base64.b64encode(bytes(32)).decode().rstrip("=") + "\n",
        "o\n1\n",
    ]:
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.parse(bad)
