"""Exported checkpoints: a ledger's signed head as a small text file (a C2SP-style signed note).

Format version 1 (``audit checkpoint`` writes it, ``audit verify --since`` reads it)::

    keycourier/ledger-v1/<ledger_id>        origin: format version and ledger ID
    <events>                                number of events, decimal, no leading zero
    <head hash>                             hash of event #<events>, standard base64
                                            (blank line)
    — keycourier/ledger/<ledger_id>         U+2014, a space, the key name
    <base64(key id || signature)>           wrapped at 64 characters

The body (the first three lines, each ending in a newline) is the signed text. The
signature is Ed25519 by the ledger's checkpoint key; the key ID is the first four bytes
of ``SHA-256(key name || 0x0A || 0x01 || public key)``. Joining the lines after the key
name, with one space between the name and the base64, gives the C2SP signature line
``— <key name> <base64>``: the note is a C2SP signed note whose signature line is wrapped
so that no line is longer than 64 characters. The verifier key (``audit key``) is
``<key name>+<key ID, 8 hex digits>+<base64(0x01 || public key)>``.

The parser is strict: a body it does not know (another format version, extension lines)
is refused, never guessed at. Only line ends (CRLF) and trailing spaces are forgiven.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from keycourier.errors import IntegrityError

VERSION = 1
MAX_NOTE_BYTES = 4096
LINE_WIDTH = 64
ORIGIN_PREFIX = "keycourier/ledger-v"
KEY_NAME_PREFIX = "keycourier/ledger/"
DASH = "\u2014"
ED25519 = b"\x01"

_ID = r"[0-9a-f]{16}"
_B64 = r"[A-Za-z0-9+/]+={0,2}"


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A parsed exported checkpoint. Its signature is not verified yet."""

    ledger_id: str
    events: int
    head_hash: str  # lowercase hex, as the ledger stores it
    key_name: str
    key_id: bytes  # 4 bytes
    signature: bytes  # 64 bytes
    body: bytes  # the signed text


def key_name(ledger_id: str) -> str:
    return KEY_NAME_PREFIX + ledger_id


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public_key).digest()[:4]


def verifier_key(ledger_id: str, public_key_hex: str) -> str:
    """The one-line verifier key of a ledger (``<name>+<key id>+<base64 key>``)."""
    public = bytes.fromhex(public_key_hex)
    name = key_name(ledger_id)
    encoded = base64.b64encode(ED25519 + public).decode()
    return f"{name}+{key_id(name, public).hex()}+{encoded}"


def body_text(ledger_id: str, events: int, head_hash: str) -> bytes:
    head = base64.b64encode(bytes.fromhex(head_hash)).decode()
    return f"{ORIGIN_PREFIX}{VERSION}/{ledger_id}\n{events}\n{head}\n".encode()


def format_note(
    ledger_id: str,
    events: int,
    head_hash: str,
    public_key_hex: str,
    sign: Callable[[bytes], bytes],
) -> str:
    """The note text; ``sign`` returns the 64-byte Ed25519 signature of its argument."""
    body = body_text(ledger_id, events, head_hash)
    name = key_name(ledger_id)
    blob = key_id(name, bytes.fromhex(public_key_hex)) + sign(body)
    encoded = base64.b64encode(blob).decode()
    wrapped = [encoded[i : i + LINE_WIDTH] for i in range(0, len(encoded), LINE_WIDTH)]
    return body.decode() + "\n" + f"{DASH} {name}\n" + "".join(w + "\n" for w in wrapped)


def _bad(where: str, why: str) -> IntegrityError:
    return IntegrityError(f"{where} is not a keycourier checkpoint: {why}")


def parse_note(data: bytes, where: str) -> SignedCheckpoint:
    """Parse an exported checkpoint; IntegrityError naming the first problem."""
    if len(data) > MAX_NOTE_BYTES:
        raise _bad(where, f"it is larger than {MAX_NOTE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(where, "it is not UTF-8 text") from None
    lines = [line.rstrip(" \t\r") for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) < 6:
        raise _bad(where, "it is too short (origin, events, head hash, blank, signature)")
    origin = lines[0]
    if not origin.startswith(ORIGIN_PREFIX):
        raise _bad(where, f"line 1 is not a keycourier ledger origin ({ORIGIN_PREFIX}N/ID)")
    version, _, ledger_id = origin[len(ORIGIN_PREFIX) :].partition("/")
    if version != str(VERSION):
        if re.fullmatch(r"[1-9][0-9]{0,3}", version):
            raise IntegrityError(
                f"{where} is a version {version} checkpoint; this keycourier reads version "
                f"{VERSION} only",
                hints=["use the keycourier version that exported it, or a newer one"],
            )
        raise _bad(where, "line 1 names no format version")
    if not re.fullmatch(_ID, ledger_id):
        raise _bad(where, "line 1 does not end with a ledger ID (16 hex digits)")
    if not re.fullmatch(r"[1-9][0-9]{0,18}", lines[1]):
        raise _bad(where, "line 2 is not a positive event count")
    events = int(lines[1])
    try:
        head = base64.b64decode(lines[2], validate=True)
    except binascii.Error:
        head = b""
    if len(head) != 32 or base64.b64encode(head).decode() != lines[2]:
        raise _bad(where, "line 3 is not a base64 SHA-256 head hash")
    if lines[3]:
        raise _bad(where, "line 4 must be blank (this version has no extension lines)")
    sig_head = lines[4]
    prefix = DASH + " "
    name = sig_head[len(prefix) :]
    if not sig_head.startswith(prefix) or not re.fullmatch(re.escape(KEY_NAME_PREFIX) + _ID, name):
        raise _bad(where, f"line 5 is not a signature line ({DASH} {KEY_NAME_PREFIX}ID)")
    encoded = "".join(lines[5:])
    if any(len(line) > LINE_WIDTH for line in lines[5:]) or not re.fullmatch(_B64, encoded):
        raise _bad(where, "the signature is not base64 wrapped at 64 characters")
    try:
        blob = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise _bad(where, "the signature is not base64") from None
    if len(blob) != 4 + 64:
        raise _bad(where, "the signature is not a key ID and an Ed25519 signature")
    return SignedCheckpoint(
        ledger_id=ledger_id,
        events=events,
        head_hash=head.hex(),
        key_name=name,
        key_id=blob[:4],
        signature=blob[4:],
        body="\n".join(lines[:3]).encode() + b"\n",
    )


def check_signature(
    note: SignedCheckpoint, ledger_id: str, public_key_hex: str, where: str
) -> None:
    """The note must be this ledger's and signed by ``public_key_hex``; IntegrityError if not."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    if note.ledger_id != ledger_id or note.key_name != key_name(ledger_id):
        raise IntegrityError(
            f"checkpoint {where} is of ledger {note.ledger_id}, not of this ledger "
            f"{ledger_id}: the ledger was replaced, or it is another ledger's checkpoint"
        )
    public = bytes.fromhex(public_key_hex)
    if note.key_id != key_id(note.key_name, public):
        raise IntegrityError(
            f"checkpoint key differs: the ledger's key was replaced ({where} was signed by "
            f"key ID {note.key_id.hex()}, the ledger's key has ID "
            f"{key_id(note.key_name, public).hex()})"
        )
    try:
        VerifyKey(public).verify(note.body, note.signature)
    except BadSignatureError:
        raise IntegrityError(f"checkpoint {where} has an invalid signature") from None
