"""Armor: what the strict decoder tolerates (CRLF, outside whitespace) and what it refuses."""

from __future__ import annotations

import pytest

from keycourier import age

IDENT = age.X25519Identity.generate()
PLAIN = b"armored credentials " * 20
ARMORED = age.encrypt([IDENT.recipient()], PLAIN, armor=True)


def test_armor_layout() -> None:
    lines = ARMORED.decode().split("\n")
    assert lines[0] == "-----BEGIN AGE ENCRYPTED FILE-----"
    assert lines[-2] == "-----END AGE ENCRYPTED FILE-----"
    assert lines[-1] == ""
    body = lines[1:-2]
    assert all(len(line) == 64 for line in body[:-1])
    assert 1 <= len(body[-1]) <= 64


@pytest.mark.parametrize(
    "variant",
    [
        ARMORED.replace(b"\n", b"\r\n"),
        ARMORED[:-1],
        b" \t\r\n\n" + ARMORED + b"\n\n  \t",
    ],
    ids=["crlf", "no-final-eol", "outside-whitespace"],
)
def test_tolerated_variants(variant: bytes) -> None:
    assert age.decrypt([IDENT], variant) == PLAIN


@pytest.mark.parametrize(
    "variant",
    [
        b"x" + ARMORED,
        ARMORED + b"x",
        ARMORED.replace(b"-----\n", b"-----\nComment: hi\n\n", 1),
        ARMORED.replace(b"FILE-----\n", b"FILE-----\n\n", 1),
        ARMORED.replace(b"\n-----END", b"\n\n-----END"),
        ARMORED.replace(b"AGE ENCRYPTED", b"age encrypted"),
        b" " * 2000 + ARMORED,
        ARMORED.replace(b"\n", b" \n", 2),
    ],
    ids=[
        "leading-garbage",
        "trailing-garbage",
        "headers",
        "empty-first-line",
        "empty-last-line",
        "lowercase-label",
        "too-much-whitespace",
        "trailing-space",
    ],
)
def test_refused_variants(variant: bytes) -> None:
    with pytest.raises(age.ArmorError):
        age.decrypt([IDENT], variant)


def test_armored_header_must_still_be_lf_only() -> None:
    import base64

    binary = age.encrypt([IDENT.recipient()], PLAIN)
    crlf = binary.replace(b"\n", b"\r\n", 1)
    text = base64.encodebytes(crlf).replace(b"\n", b"")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    armored = (
        b"-----BEGIN AGE ENCRYPTED FILE-----\n"
        + b"\n".join(lines)
        + b"\n-----END AGE ENCRYPTED FILE-----\n"
    )
    with pytest.raises(age.HeaderError):
        age.decrypt([IDENT], armored)
