"""C2SP signed notes with Ed25519 signatures (PyNaCl).

A note is UTF-8 text that ends with a newline and holds no blank line, then one
blank line, then signature lines ``"\u2014 <key name> <base64(key id || signature)>\\n"``.
An Ed25519 signature covers the text bytes, final newline included. The key id is
the first four bytes of ``SHA-256(key name || 0x0A || 0x01 || public key)``, and a
verifier key is written ``<name>+<key id, 8 hex digits>+<base64(0x01 || public key)>``.
This is the format that ``golang.org/x/mod/sumdb/note`` signs and opens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import unicodedata
from collections.abc import Iterable

from keycourier._record import field, record

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "
MAX_NOTE_BYTES = 64 * 1024
MAX_SIGNATURES = 100
MAX_NAME_CHARS = 256


class NoteError(ValueError):
    """A malformed note, a bad verifier key, or a signature that does not verify."""


def _valid_name(name: str) -> bool:
    return (
        0 < len(name) <= MAX_NAME_CHARS
        and "+" not in name
        and not any(ch.isspace() or unicodedata.category(ch) == "Zs" for ch in name)
        and all(ord(ch) >= 0x20 for ch in name)
    )


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


@record
class Verifier:
    name: str
    public_key: bytes = field(repr=False)

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    def vkey(self) -> str:
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    def verify(self, text: bytes, signature: bytes) -> bool:
        import nacl.exceptions  # PyNaCl at first use: importing this module stays cheap
        import nacl.signing

        try:
            nacl.signing.VerifyKey(self.public_key).verify(text, signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
        return True


def parse_vkey(vkey: str) -> Verifier:
    """A verifier from ``name+hexid+base64``; NoteError when malformed or inconsistent."""
    text = vkey.strip()
    parts = text.split("+", 2)
    if len(parts) != 3 or len(text) > 1024:
        raise NoteError("a verifier key has the form NAME+KEYID+BASE64")
    name, hex_id, blob = parts
    if not _valid_name(name):
        raise NoteError("the verifier key's name is not a valid note key name")
    try:
        if len(hex_id) != 8:
            raise ValueError
        claimed = bytes.fromhex(hex_id)
        raw = base64.b64decode(blob, validate=True)
    except (ValueError, binascii.Error):
        raise NoteError("the verifier key's id or key is not encoded as expected") from None
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError("the verifier key is not an Ed25519 key")
    verifier = Verifier(name, raw[1:])
    if not hmac.compare_digest(verifier.key_id, claimed):
        raise NoteError("the verifier key's id does not match its name and key")
    return verifier


@record
class Signer:
    name: str
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise NoteError("not a valid note key name")
        if len(self.seed) != 32:
            raise NoteError("an Ed25519 seed is 32 bytes")

    @property
    def verifier(self) -> Verifier:
        import nacl.signing

        public = bytes(nacl.signing.SigningKey(self.seed).verify_key)
        return Verifier(self.name, public)

    def signature_line(self, text: bytes) -> str:
        import nacl.signing

        signature = nacl.signing.SigningKey(self.seed).sign(text).signature
        blob = base64.b64encode(self.verifier.key_id + signature).decode()
        return f"{SIG_PREFIX}{self.name} {blob}\n"


def sign(text: str, signers: Iterable[Signer]) -> str:
    """The signed note of ``text`` (which must end with a newline and hold no blank line)."""
    if not text.endswith("\n") or "\n\n" in text or text.startswith("\n"):
        raise NoteError("note text must end with a newline and hold no blank line")
    _check_chars(text)
    body = text.encode()
    lines = [signer.signature_line(body) for signer in signers]
    if not lines:
        raise NoteError("a note needs at least one signer")
    return text + "\n" + "".join(lines)


@record
class OpenedNote:
    text: str
    verified_by: tuple[str, ...]  # key names whose signatures verified
    unverified: tuple[str, ...]  # key names of signatures by unknown keys


def _check_chars(message: str) -> None:
    for ch in message:
        if (ord(ch) < 0x20 and ch != "\n") or ch == "\ufffd":
            raise NoteError("a note holds a control character")


def open_note(message: str | bytes, verifiers: Iterable[Verifier]) -> OpenedNote:
    """Parse ``message`` and verify it; NoteError unless a known key signed it."""
    if isinstance(message, bytes):
        if len(message) > MAX_NOTE_BYTES:
            raise NoteError("the note is too large")
        try:
            message = message.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("a note is UTF-8 text") from None
    if len(message) > MAX_NOTE_BYTES:
        raise NoteError("the note is too large")
    _check_chars(message)
    split = message.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no signature block")
    text, sigs = message[: split + 1], message[split + 2 :]
    if not sigs or not sigs.endswith("\n"):
        raise NoteError("the note's signature block is malformed")
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[str] = []
    unverified: list[str] = []
    seen: set[tuple[str, bytes]] = set()
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("the note has too many signatures")
    body = text.encode()
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise NoteError("a note signature line does not start with an em dash")
        name, sep, blob = line[len(SIG_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(blob, validate=True) if sep and blob else b""
        except (ValueError, binascii.Error):
            raw = b""
        if not _valid_name(name) or len(raw) < 5:
            raise NoteError("a note signature line is malformed")
        kid, signature = raw[:4], raw[4:]
        verifier = known.get((name, kid))
        if verifier is None:
            unverified.append(name)
            continue
        if (name, kid) in seen:
            continue
        seen.add((name, kid))
        if not verifier.verify(body, signature):
            raise NoteError(f"the signature by {name} does not verify")
        verified.append(name)
    if not verified:
        raise NoteError("no signature on the note is by a known key")
    return OpenedNote(text, tuple(verified), tuple(unverified))
