"""The age v1 wire format: header, ASCII armor and the STREAM payload.

Everything here works on streams with bounded buffers: the header is capped
at ``MAX_HEADER_BYTES`` and the payload is processed one 64 KiB chunk at a
time, so memory does not grow with the size of the file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hmac import HMAC

from keycourier.age._encoding import b64decode_padded, b64encode
from keycourier.age._header import CHUNK_SIZE as CHUNK_SIZE
from keycourier.age._header import MAGIC_PREFIX as MAGIC_PREFIX
from keycourier.age._header import MAX_HEADER_BYTES as MAX_HEADER_BYTES
from keycourier.age._header import VERSION_LINE as VERSION_LINE
from keycourier.age._header import Header as Header
from keycourier.age._header import Reader as Reader
from keycourier.age._header import Stanza as Stanza
from keycourier.age._header import read_header as read_header
from keycourier.age.errors import ArmorError, PayloadError

if TYPE_CHECKING:
    from keycourier.age._header import _Readable

FILE_KEY_SIZE: Final = 16
NONCE_SIZE: Final = 16
TAG_SIZE: Final = 16
ENC_CHUNK_SIZE: Final = CHUNK_SIZE + TAG_SIZE
_MAX_CHUNKS: Final = 1 << 88

ARMOR_BEGIN: Final = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END: Final = b"-----END AGE ENCRYPTED FILE-----"
_ARMOR_WS: Final = b" \t\r\n"
_ARMOR_MAX_WS: Final = 1024
_ARMOR_LINE: Final = 64
_ARMOR_BYTES_PER_LINE: Final = 48


_SHA256: Final = hashes.SHA256()


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-256 (RFC 5869) with a 32-byte output: Extract, then one Expand block.

    Written with HMAC directly because age only ever needs one output block,
    and building an ``HKDF`` object costs about as much again as the HMACs.
    An empty salt is HashLen zero bytes, as RFC 5869 says.
    """
    extract = HMAC(salt or bytes(32), _SHA256)
    extract.update(ikm)
    expand = HMAC(extract.finalize(), _SHA256)
    expand.update(info + b"\x01")
    return expand.finalize()


def _header_hmac(file_key: bytes, mac_input: bytes) -> HMAC:
    h = HMAC(hkdf(file_key, b"", b"header"), _SHA256)
    h.update(mac_input)
    return h


def header_mac(file_key: bytes, mac_input: bytes) -> bytes:
    return _header_hmac(file_key, mac_input).finalize()


def verify_header_mac(file_key: bytes, mac_input: bytes, mac: bytes) -> bool:
    """Constant-time check of the header MAC."""
    try:
        _header_hmac(file_key, mac_input).verify(mac)
    except InvalidSignature:
        return False
    return True


def encode_header(stanzas: list[Stanza], file_key: bytes) -> bytes:
    if not stanzas:
        raise ValueError("at least one stanza is needed")
    mac_input = VERSION_LINE + b"".join([s.encode() for s in stanzas]) + b"---"
    return mac_input + b" " + b64encode(_header_hmac(file_key, mac_input).finalize()) + b"\n"


# -- armor -------------------------------------------------------------------------


class ArmorDecoder:
    """Strict streaming PEM decoder; ``read(n)`` yields the binary age file."""

    __slots__ = ("_done", "_last_seen", "_pending", "_reader")

    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self._pending = bytearray()
        self._done = False
        self._last_seen = False
        skipped = 0
        while True:
            b = reader.peek(1)
            if not b or b not in _ARMOR_WS:
                break
            reader.read(1)
            skipped += 1
            if skipped > _ARMOR_MAX_WS:
                raise ArmorError("too much whitespace before the armor")
        begin = reader.readline(len(ARMOR_BEGIN) + 2)
        if begin not in (ARMOR_BEGIN + b"\n", ARMOR_BEGIN + b"\r\n"):
            raise ArmorError("not an age file: no age header and no age armor")

    def _next_line(self) -> None:
        raw = self._reader.readline(_ARMOR_LINE + 2)
        if raw.endswith(b"\r\n"):
            content, eol = raw[:-2], True
        elif raw.endswith(b"\n"):
            content, eol = raw[:-1], True
        else:
            content, eol = raw, False
        if content == ARMOR_END:
            rest = self._reader.read(_ARMOR_MAX_WS + 1)
            if rest and (not eol or rest.strip(_ARMOR_WS) or len(rest) > _ARMOR_MAX_WS):
                raise ArmorError("unexpected data after the armor")
            self._done = True
            return
        if self._last_seen:
            raise ArmorError("armor data after the last line, or a missing end line")
        if not eol:
            raise ArmorError("the armor is truncated (no end line)")
        if not content or len(content) > _ARMOR_LINE:
            raise ArmorError("armor lines must be 1 to 64 characters")
        if len(content) < _ARMOR_LINE or content.endswith(b"="):
            self._last_seen = True
        try:
            self._pending += b64decode_padded(content)
        except ValueError:
            raise ArmorError("invalid base64 in the armor") from None

    def read(self, n: int = -1, /) -> bytes:
        while len(self._pending) < n and not self._done:
            self._next_line()
        out = bytes(self._pending[:n])
        del self._pending[:n]
        return out


class ArmorEncoder:
    """Write-side armor: 64-column padded base64 between the BEGIN and END lines."""

    __slots__ = ("_dst", "_rest")

    def __init__(self, dst: BinaryIO) -> None:
        self._dst = dst
        self._rest = b""
        dst.write(ARMOR_BEGIN + b"\n")

    def write(self, data: bytes) -> None:
        import binascii

        data = self._rest + data
        full = len(data) - len(data) % _ARMOR_BYTES_PER_LINE
        out = bytearray()
        for i in range(0, full, _ARMOR_BYTES_PER_LINE):
            out += binascii.b2a_base64(data[i : i + _ARMOR_BYTES_PER_LINE])
        self._rest = data[full:]
        if out:
            self._dst.write(bytes(out))

    def close(self) -> None:
        import binascii

        if self._rest:
            self._dst.write(binascii.b2a_base64(self._rest))
        self._dst.write(ARMOR_END + b"\n")


# -- STREAM ------------------------------------------------------------------------


def _nonce(counter: int, last: bool) -> bytes:
    if counter >= _MAX_CHUNKS:
        raise PayloadError("the payload has too many chunks")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def payload_key(file_key: bytes, nonce: bytes) -> bytes:
    return hkdf(file_key, nonce, b"payload")


def read_exact(src: _Readable, n: int) -> bytes:
    out = src.read(n)
    if len(out) == n or not out:
        return out
    parts = bytearray(out)
    while len(parts) < n:
        more = src.read(n - len(parts))
        if not more:
            break
        parts += more
    return bytes(parts)


def encrypt_one_chunk(key: bytes, data: bytes) -> bytes:
    """The whole STREAM payload of at most one chunk: a single final chunk (counter 0).

    The same bytes ``encrypt_payload`` writes for such input, without the
    reader and writer machinery (sealing a bundle encrypts a few hundred bytes).
    """
    if len(data) > CHUNK_SIZE:
        raise ValueError("more than one chunk of plaintext")
    return ChaCha20Poly1305(key).encrypt(_FIRST_AND_LAST, data, None)


_FIRST_AND_LAST: Final = bytes(11) + b"\x01"


def encrypt_payload(key: bytes, src: _Readable, write: Callable[[bytes], object]) -> None:
    """Encrypt ``src`` chunk by chunk; a full final chunk is allowed, as in age."""
    aead = ChaCha20Poly1305(key)
    counter = 0
    chunk = read_exact(src, CHUNK_SIZE)
    while True:
        following = read_exact(src, CHUNK_SIZE) if len(chunk) == CHUNK_SIZE else b""
        last = not following
        write(aead.encrypt(_nonce(counter, last), chunk, None))
        if last:
            return
        chunk = following
        counter += 1


def decrypt_payload(
    key: bytes,
    reader: Reader,
    write: Callable[[memoryview], object],
    *,
    read_ahead: bool | None = None,
) -> None:
    """Decrypt and release one verified chunk at a time; raise on any STREAM violation.

    The input comes in blocks of whole chunks, each block full unless the
    input ended: one chunk at a time from a reused buffer, or, with
    ``read_ahead``, 64 chunks at a time filled by a second thread
    (``_readahead``; ``None`` picks it for regular files of at least 16 MiB).
    A full-size chunk may be final or not: like the reference implementation,
    try the non-final nonce first, then the final one, and then insist on what
    must follow (more chunks, or the end of the input). One output buffer is
    reused for every chunk, so memory stays flat. ``write`` gets a view that is
    only valid during the call (as with ``io`` writers).
    """
    if read_ahead is None:
        read_ahead = reader.regular_file_size() >= READ_AHEAD_MIN_FILE_SIZE
    if not read_ahead:
        buf = memoryview(bytearray(ENC_CHUNK_SIZE))
        readinto = reader.readinto
        _decrypt_blocks(key, lambda: buf[: readinto(buf)], ENC_CHUNK_SIZE, write)
        return
    # lazy: threading and queue cost about 1.4 ms of every `age` start-up.
    from keycourier.age import _readahead

    size = READ_AHEAD_CHUNKS * ENC_CHUNK_SIZE
    with _readahead.ReadAhead(reader.readinto, size) as blocks:
        _decrypt_blocks(key, blocks.next_block, size, write)


READ_AHEAD_MIN_FILE_SIZE = 16 * 1024 * 1024  # smaller files: one thread reads and decrypts
READ_AHEAD_CHUNKS = 64  # a 4 MiB block: fewer hand-overs between the threads


def _decrypt_blocks(
    key: bytes,
    next_block: Callable[[], memoryview],
    capacity: int,
    write: Callable[[memoryview], object],
) -> None:
    """``decrypt_payload`` over blocks of ``capacity`` bytes (a multiple of the chunk size).

    A block shorter than ``capacity`` is the end of the input. A view from
    ``next_block`` is valid until its next call.
    """
    decrypt_into = ChaCha20Poly1305(key).decrypt_into
    outbuf = memoryview(bytearray(CHUNK_SIZE))

    def opened(nonce: bytes, data: memoryview, out: memoryview) -> bool:
        try:
            decrypt_into(nonce, data, None, out)
        except InvalidTag:
            return False
        return True

    counter = 0
    block = next_block()
    if not block:
        raise PayloadError("the payload has no chunks")
    while True:
        n, off = len(block), 0
        while off < n:
            if counter >= _MAX_CHUNKS:
                raise PayloadError("the payload has too many chunks")
            prefix = counter.to_bytes(11, "big")
            end = off + ENC_CHUNK_SIZE
            if end <= n and opened(prefix + b"\x00", block[off:end], outbuf):
                write(outbuf)
                counter += 1
                off = end
                continue
            # Not a valid non-final chunk, so it must be the final one.
            end = min(end, n)
            size = end - off
            if size < TAG_SIZE:
                raise PayloadError("the payload is truncated")
            if not opened(prefix + b"\x01", block[off:end], outbuf[: size - TAG_SIZE]):
                raise PayloadError("the payload was changed or truncated")
            if size == TAG_SIZE and counter > 0:
                raise PayloadError("the final payload chunk is empty")
            write(outbuf[: size - TAG_SIZE])
            if end < n or (n == capacity and next_block()):
                raise PayloadError("unexpected data after the final payload chunk")
            return
        # Every chunk of the block was non-final: a final one must follow.
        block = next_block() if n == capacity else memoryview(b"")
        if not block:
            raise PayloadError("the payload is truncated (no final chunk)")
