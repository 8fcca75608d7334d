"""The age v1 header: the buffered reader, stanzas and the strict header parser.

Structure only, no cryptography: a bundle's parser checks its payload's
stanzas against the signed recipients with this module (``keycourier
inspect`` decrypts nothing, so it loads no crypto library). The header MAC
and everything else that needs a key are in ``_format``.
"""

from __future__ import annotations

import os
import re
import stat
from typing import TYPE_CHECKING, Final

from keycourier.age._encoding import b64decode, b64encode
from keycourier.age.errors import HeaderError

VERSION_LINE: Final = b"age-encryption.org/v1\n"
MAGIC_PREFIX: Final = b"age-encryption.org/"
MAX_HEADER_BYTES: Final = 4 * 1024 * 1024
CHUNK_SIZE: Final = 64 * 1024  # of the payload; the reader reads at least this much
# the stanza types keycourier writes (recipients.py)
X25519_TYPE: Final = "X25519"
HYBRID_TYPE: Final = "mlkem768x25519"


# -- reading ---------------------------------------------------------------------


if TYPE_CHECKING:
    from typing import Protocol

    class _Readable(Protocol):
        def read(self, n: int = -1, /) -> bytes: ...


class Reader:
    """A small buffered reader over anything with ``read(n)``: lines, exact reads, peeks."""

    __slots__ = ("_buf", "_eof", "_src")

    def __init__(self, src: _Readable) -> None:
        self._src = src
        self._buf = bytearray()
        self._eof = False

    def _fill(self, want: int) -> None:
        while len(self._buf) < want and not self._eof:
            data = self._src.read(max(want - len(self._buf), CHUNK_SIZE))
            if not data:
                self._eof = True
            else:
                self._buf += data

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return bytes(self._buf[:n])

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes; fewer only at end of input."""
        if n < 0:
            raise ValueError("Reader.read needs a size")
        if not self._buf and n >= CHUNK_SIZE and not self._eof:
            # Fast path for the payload: hand over the source's buffer directly.
            out = bytearray()
            while len(out) < n:
                data = self._src.read(n - len(out))
                if not data:
                    self._eof = True
                    break
                out += data
            return bytes(out)
        self._fill(n)
        out_b = bytes(self._buf[:n])
        del self._buf[:n]
        return out_b

    def regular_file_size(self) -> int:
        """The source's size if it is a regular file; 0 for pipes, terminals, buffers, armor."""
        fileno = getattr(self._src, "fileno", None)
        if fileno is None:
            return 0
        try:
            info = os.fstat(fileno())
        except (OSError, ValueError):  # io.UnsupportedOperation is both
            return 0
        return info.st_size if stat.S_ISREG(info.st_mode) else 0

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` as far as the input allows; returns the number of bytes."""
        filled = 0
        if self._buf:
            filled = min(len(self._buf), len(view))
            view[:filled] = self._buf[:filled]
            del self._buf[:filled]
        readinto = getattr(self._src, "readinto", None)
        want = len(view)
        if not filled and readinto is not None and not self._eof:
            # Fast path: one call usually fills the view (regular files, pipes at EOF).
            filled = readinto(view) or 0
            if not filled:
                self._eof = True
        while filled < want and not self._eof:
            if readinto is not None:
                got = readinto(view[filled:])
            else:
                data = self._src.read(len(view) - filled)
                got = len(data)
                view[filled : filled + got] = data
            if not got:
                self._eof = True
                break
            filled += got
        return filled

    def readline(self, limit: int) -> bytes:
        """A line including its LF, at most ``limit`` bytes (then possibly without LF)."""
        start = 0
        while True:
            idx = self._buf.find(b"\n", start)
            if idx >= 0 and idx < limit:
                line = bytes(self._buf[: idx + 1])
                del self._buf[: idx + 1]
                return line
            if len(self._buf) >= limit or self._eof:
                line = bytes(self._buf[:limit])
                del self._buf[:limit]
                return line
            start = len(self._buf)
            self._fill(len(self._buf) + 1)


# -- header ------------------------------------------------------------------------


class _Frozen:
    """A small immutable value class.

    Not a dataclass on purpose: creating dataclasses costs start-up time on the
    ``keycourier age encrypt`` path, which has a start-up budget.
    """

    __slots__ = ()

    def _names(self) -> tuple[str, ...]:
        names: tuple[str, ...] = type(self).__slots__
        return names

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._names())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._names())
        return f"{type(self).__name__}({fields})"


class Stanza(_Frozen):
    """One recipient stanza: its type, its other arguments and its raw body."""

    __slots__ = ("args", "body", "type")
    type: str
    args: tuple[str, ...]
    body: bytes

    def __init__(self, type: str, args: tuple[str, ...], body: bytes) -> None:
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "body", bytes(body))

    def encode(self) -> bytes:
        words = (self.type, *self.args)
        for word in words:
            # Non-empty, ASCII, printable and no space: exactly the bytes 0x21-0x7E.
            if not _VCHARS.fullmatch(word):
                raise ValueError("stanza arguments must be non-empty printable ASCII")
        encoded = b64encode(self.body)
        # 64-column lines; the final line is shorter, and empty when the body fills the last.
        lines = [encoded[i : i + 64] for i in range(0, len(encoded) + 1, 64)]
        return b"-> " + " ".join(words).encode("ascii") + b"\n" + b"\n".join(lines) + b"\n"


class Header(_Frozen):
    """A parsed header; ``mac_input`` is the exact bytes from the version line through "---"."""

    __slots__ = ("mac", "mac_input", "stanzas")
    stanzas: tuple[Stanza, ...]
    mac: bytes
    mac_input: bytes

    def __init__(self, stanzas: tuple[Stanza, ...], mac: bytes, mac_input: bytes) -> None:
        object.__setattr__(self, "stanzas", stanzas)
        object.__setattr__(self, "mac", mac)
        object.__setattr__(self, "mac_input", mac_input)


_VCHARS: Final = re.compile("[\x21-\x7e]+")


def _is_vchar_arg(arg: bytes) -> bool:
    return bool(arg) and all(0x21 <= b <= 0x7E for b in arg)


def read_header(reader: Reader) -> Header:
    """Parse an age header strictly, from the version line through the MAC line."""
    raw = bytearray()

    def line() -> bytes:
        remaining = MAX_HEADER_BYTES - len(raw)
        if remaining <= 0:
            raise HeaderError("the age header is too large")
        got = reader.readline(remaining)
        if not got.endswith(b"\n"):
            if len(got) >= remaining:
                raise HeaderError("the age header is too large")
            raise HeaderError("the age header is truncated")
        return got

    first = line()
    if first != VERSION_LINE:
        if first.startswith(MAGIC_PREFIX):
            raise HeaderError("unsupported age format version")
        raise HeaderError("not an age file (bad version line)")
    raw += first
    stanzas: list[Stanza] = []
    current = line()
    while True:
        if current.startswith(b"--- "):
            mac_text = current[4:-1]
            if len(mac_text) != 43:
                raise HeaderError("malformed header MAC line")
            try:
                mac = b64decode(mac_text)
            except ValueError:
                raise HeaderError("malformed header MAC line") from None
            raw += b"---"
            if not stanzas:
                raise HeaderError("the age header has no recipient stanza")
            return Header(tuple(stanzas), mac, bytes(raw))
        if not current.startswith(b"-> "):
            raise HeaderError("malformed age header line")
        raw += current
        words = current[3:-1].split(b" ")
        if not all(_is_vchar_arg(w) for w in words):
            raise HeaderError("malformed recipient stanza arguments")
        body = bytearray()
        while True:
            body_line = line()
            raw += body_line
            text = body_line[:-1]
            if len(text) > 64:
                raise HeaderError("stanza body line is too long")
            try:
                body += b64decode(text)
            except ValueError:
                raise HeaderError("malformed stanza body encoding") from None
            if len(text) < 64:
                break
        decoded = [w.decode("ascii") for w in words]
        stanzas.append(Stanza(decoded[0], tuple(decoded[1:]), bytes(body)))
        current = line()
