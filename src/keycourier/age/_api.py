"""Encrypt and decrypt whole age files, as bytes or as streams."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import BinaryIO

from keycourier.age._format import (
    CHUNK_SIZE,
    FILE_KEY_SIZE,
    MAGIC_PREFIX,
    NONCE_SIZE,
    ArmorDecoder,
    ArmorEncoder,
    Reader,
    Stanza,
    decrypt_payload,
    encode_header,
    encrypt_one_chunk,
    encrypt_payload,
    payload_key,
    read_header,
    verify_header_mac,
)
from keycourier.age.errors import AgeUsageError, HeaderError, HmacError, NoMatchError
from keycourier.age.recipients import (
    SCRYPT_TYPE,
    Identity,
    Recipient,
    ScryptRecipient,
    check_stanza,
)


def _stanzas_for(recipients: Sequence[Recipient], file_key: bytes) -> list[Stanza]:
    recipients = list(recipients)
    if not recipients:
        raise AgeUsageError("at least one recipient is required")
    if len(recipients) == 1 and isinstance(recipients[0], Recipient):
        return recipients[0].wrap(file_key)  # nothing to mix or combine
    kinds: set[bool] = set()
    for r in recipients:
        if not isinstance(r, Recipient):
            raise AgeUsageError("recipients must be keycourier.age Recipient objects")
        if isinstance(r, ScryptRecipient) and len(recipients) > 1:
            raise AgeUsageError("a passphrase cannot be combined with other recipients")
        kinds.add(r.post_quantum)
    if len(kinds) > 1:
        raise AgeUsageError(
            "post-quantum (age1pq1...) and classic recipients cannot be mixed in one file",
            hints=["a classic recipient would undo the post-quantum protection"],
        )
    stanzas: list[Stanza] = []
    for r in recipients:
        stanzas.extend(r.wrap(file_key))
    return stanzas


def encrypt_stream_from_parts(
    stanzas: Sequence[Stanza],
    file_key: bytes,
    nonce: bytes,
    src: BinaryIO,
    dst: BinaryIO,
    *,
    armor: bool = False,
) -> None:
    """Deterministic seam: write an age file from given stanzas, file key and nonce.

    For tests and vectors only; real callers use ``encrypt_stream``, which draws
    a fresh file key and nonce.
    """
    if len(file_key) != FILE_KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise AgeUsageError("the file key and nonce are 16 bytes each")
    encoder = ArmorEncoder(dst) if armor else None
    write = encoder.write if encoder is not None else dst.write
    write(encode_header(list(stanzas), file_key) + nonce)
    encrypt_payload(payload_key(file_key, nonce), src, write)
    if encoder is not None:
        encoder.close()


def encrypt_stream(
    recipients: Sequence[Recipient], src: BinaryIO, dst: BinaryIO, *, armor: bool = False
) -> None:
    """Encrypt ``src`` to ``dst`` for ``recipients``, one 64 KiB chunk at a time."""
    file_key = os.urandom(FILE_KEY_SIZE)
    stanzas = _stanzas_for(recipients, file_key)
    encrypt_stream_from_parts(stanzas, file_key, os.urandom(NONCE_SIZE), src, dst, armor=armor)


def encrypt_bytes_from_parts(
    stanzas: Sequence[Stanza], file_key: bytes, nonce: bytes, plaintext: bytes
) -> bytes:
    """Deterministic seam for a binary age file of at most one payload chunk.

    Byte for byte what ``encrypt_stream_from_parts`` writes for the same
    parts; ``encrypt`` uses it for small inputs (tests compare the two).
    """
    if len(file_key) != FILE_KEY_SIZE or len(nonce) != NONCE_SIZE:
        raise AgeUsageError("the file key and nonce are 16 bytes each")
    return (
        encode_header(list(stanzas), file_key)
        + nonce
        + encrypt_one_chunk(payload_key(file_key, nonce), plaintext)
    )


def encrypt(recipients: Sequence[Recipient], plaintext: bytes, *, armor: bool = False) -> bytes:
    """Encrypt ``plaintext`` for ``recipients``; returns the (optionally armored) age file."""
    if not armor and len(plaintext) <= CHUNK_SIZE:
        file_key = os.urandom(FILE_KEY_SIZE)
        stanzas = _stanzas_for(recipients, file_key)
        return encrypt_bytes_from_parts(stanzas, file_key, os.urandom(NONCE_SIZE), plaintext)
    out = io.BytesIO()
    encrypt_stream(recipients, io.BytesIO(plaintext), out, armor=armor)
    return out.getvalue()


def _open_source(src: BinaryIO) -> Reader:
    """Detect armor: a binary file starts with the age magic, anything else must be armor."""
    raw = Reader(src)
    start = raw.peek(len(MAGIC_PREFIX))
    if not start or start == MAGIC_PREFIX:
        return raw
    return Reader(ArmorDecoder(raw))


def unwrap_file_key(identities: Sequence[Identity], stanzas: Sequence[Stanza]) -> bytes:
    """Check every stanza, then return the first file key an identity unwraps."""
    for stanza in stanzas:
        check_stanza(stanza)
    if len(stanzas) > 1 and any(s.type == SCRYPT_TYPE for s in stanzas):
        raise HeaderError("an scrypt stanza must be the only stanza in the header")
    for identity in identities:
        file_key = identity.unwrap(stanzas)
        if file_key is not None:
            if len(file_key) != FILE_KEY_SIZE:
                raise HeaderError("the unwrapped file key has the wrong length")
            return file_key
    raise NoMatchError(
        "no identity matched any of the file's recipients",
        hints=["check that you use the right identity file or passphrase"],
    )


def decrypt_stream(
    identities: Sequence[Identity],
    src: BinaryIO,
    dst: BinaryIO,
    *,
    read_ahead: bool | None = None,
) -> None:
    """Decrypt ``src`` (binary or armored) to ``dst`` with bounded memory.

    Plaintext is written one verified chunk at a time, so on a ``PayloadError``
    ``dst`` holds a prefix of the plaintext: callers that need all-or-nothing
    must discard ``dst`` on error (``decrypt`` and the CLI do).

    ``read_ahead``: read the payload on a second thread, 4 MiB ahead of the
    decryption (which stays on the calling thread). ``None`` (the default) does
    so when ``src`` is a binary age file that is a regular file of at least
    16 MiB; the thread has stopped by the time this returns or raises.
    """
    identities = list(identities)
    if not identities:
        raise AgeUsageError("at least one identity or passphrase is required")
    for ident in identities:
        if not isinstance(ident, Identity):
            raise AgeUsageError("identities must be keycourier.age Identity objects")
    reader = _open_source(src)
    header = read_header(reader)
    file_key = unwrap_file_key(identities, header.stanzas)
    if not verify_header_mac(file_key, header.mac_input, header.mac):
        raise HmacError("the age header MAC does not match: the header was changed")
    nonce = reader.read(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise HeaderError("the age file is truncated (no payload nonce)")
    decrypt_payload(payload_key(file_key, nonce), reader, dst.write, read_ahead=read_ahead)


def decrypt(identities: Sequence[Identity], data: bytes) -> bytes:
    """Decrypt a whole age file (binary or armored); all-or-nothing."""
    out = io.BytesIO()
    decrypt_stream(identities, io.BytesIO(data), out)
    return out.getvalue()
