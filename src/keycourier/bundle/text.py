"""The bundle's text form: writing it, and reading it back after transport.

docs/bundle-format.md section 1 is normative. A writer emits lines of at most
64 characters. A reader undoes what mail clients, editors and ticket systems
do (section 1.1: a BOM, line ends, trailing whitespace, a shared indent or
``>`` quote prefix, text around the bundle, re-wrapped base64) and nothing
else; every other deviation is a StructureError that names the input line.
The blocks it returns are the canonical bytes the signature and the manifest
cover, so normalisation never changes what is verified.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from keycourier.bundle.model import FORMAT, FORMAT_V1, FORMATS, StructureError

MAX_BUNDLE_BYTES: Final = 1024 * 1024
MAX_MANIFEST_BYTES: Final = 16 * 1024
MAX_PAYLOAD_BYTES: Final = 64 * 1024
LINE_WIDTH: Final = 64
# The base64 of the largest bundle is about 110,000 characters: 64 Ki words allow it to be
# re-wrapped down to 2 characters a line, and bound the memory a hostile input can take.
MAX_WORDS: Final = 64 * 1024

BEGIN_M: Final = "-----BEGIN KEYCOURIER MANIFEST-----"
END_M: Final = "-----END KEYCOURIER MANIFEST-----"
BEGIN_S: Final = "-----BEGIN KEYCOURIER SIGNATURE-----"
END_S: Final = "-----END KEYCOURIER SIGNATURE-----"
BEGIN_A: Final = "-----BEGIN AGE ENCRYPTED FILE-----"
END_A: Final = "-----END AGE ENCRYPTED FILE-----"

_BOM: Final = b"\xef\xbb\xbf"
_LINE_END: Final = re.compile(r"\r\n|\r|\n")
_START: Final = re.compile(r"([ \t>]*)keycourier-bundle/")
_VERSION_WORD: Final = re.compile(r"keycourier-bundle/[\x21-\x7e]{0,40}")
_WORD_SEP: Final = re.compile(r"[ \t]+")
_WORD: Final = re.compile(r"[^ \t]+")
_LINE_CHARS: Final = re.compile(r"[\x20-\x7e\t]*")
_PRINTABLE: Final = re.compile(r"[\x21-\x7e]*")
_B64_CHARS: Final = re.compile(r"[A-Za-z0-9+/=]+")
_SIG_V1: Final = re.compile(r"[A-Za-z0-9+/]{86}==")
_END_A_WORDS: Final = tuple(END_A.split(" "))
T = TypeVar("T")
_HINT_FRESH: Final = ("ask the sender for a fresh bundle, sent as an attachment if possible",)


@dataclass(frozen=True, slots=True)
class Blocks:
    """The decoded blocks of one bundle (their bytes are what is signed and digested)."""

    version: str
    manifest: bytes
    signature: bytes
    payload: bytes  # the binary age file
    manifest_line: int  # where the manifest block starts, for error messages


def write(manifest: bytes, signature: bytes, payload: bytes) -> bytes:
    """The version-2 text of a bundle: LF line ends, no line longer than 64 characters."""
    return b"".join(
        (
            f"{FORMAT}\n{BEGIN_M}\n".encode("ascii"),
            wrap64(manifest),
            f"{END_M}\n{BEGIN_S}\n".encode("ascii"),
            wrap64(signature),
            f"{END_S}\n{BEGIN_A}\n".encode("ascii"),
            wrap64(payload),
            f"{END_A}\n".encode("ascii"),
        )
    )


def wrap64(data: bytes) -> bytes:
    """Padded base64 in 64-column lines, each ending in a newline (48 bytes per line)."""
    return b"".join([binascii.b2a_base64(data[i : i + 48]) for i in range(0, len(data), 48)])


def damaged(line: int, why: str, noun: str = "bundle") -> StructureError:
    hints = _HINT_FRESH if noun == "bundle" else (f"ask the sender for the {noun} again",)
    return StructureError(f"the {noun} is damaged at line {line}: {why}", line=line, hints=hints)


# -- reading -----------------------------------------------------------------------


def read(text: bytes) -> Blocks:
    """Undo transport (section 1.1) and return the bundle's blocks; StructureError otherwise."""
    if len(text) > MAX_BUNDLE_BYTES:
        raise StructureError(
            "the input is larger than a bundle can be (1 MiB)", hints=("is this the right file?",)
        )
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    # latin-1 maps every byte to one character, so prose around the bundle may hold
    # anything; the bundle itself is checked to be printable ASCII word by word.
    lines = [line.rstrip(" \t") for line in _LINE_END.split(text.decode("latin-1"))]
    start, prefix = _find_start(lines, 0, _START)
    if start is None:
        raise _not_a_bundle(text, lines)
    first = lines[start][len(prefix) :]
    version = _WORD_SEP.split(first, maxsplit=1)[0]
    if version not in FORMATS:
        shown = m.group(0) if (m := _VERSION_WORD.match(version)) else "keycourier-bundle/?"
        raise StructureError(
            f"unsupported bundle format version '{shown}' "
            f"(this keycourier reads {FORMAT_V1} and {FORMAT})",
            line=start + 1,
            hints=("upgrade keycourier, or ask the sender which version sealed it",),
        )
    body = _Body(lines, start, prefix)
    blocks = _read_v1(body) if version == FORMAT_V1 else _read_v2(body)
    again, _ = _find_start(lines, body.end + 1, _START)
    if again is not None:
        raise StructureError(
            f"the input holds more than one bundle (another one starts at line {again + 1})",
            line=again + 1,
            hints=("send or open one bundle per file",),
        )
    return blocks


@dataclass(frozen=True, slots=True)
class DocumentKind:
    """Another keycourier document in the bundle's text form (a receipt): its first word
    starts with ``magic``, it ends at the line ``last``, and it is read with the same
    transport normalisation (docs/bundle-format.md section 1.1)."""

    noun: str  # "receipt": what error messages call it
    magic: str  # "keycourier-receipt/"
    formats: tuple[str, ...]  # the versions this reader knows
    last: str  # the marker line that ends it
    max_bytes: int


def read_document(text: bytes, kind: DocumentKind, parse: Callable[[Cursor], T]) -> tuple[str, T]:
    """Undo transport as :func:`read` does and hand the document's words, after its version
    word, to ``parse`` (which must consume them all: ``cursor.finish()``); the version and
    what ``parse`` returned. StructureError, naming the line, for anything else."""
    if len(text) > kind.max_bytes:
        raise StructureError(
            f"the input is larger than a {kind.noun} can be ({kind.max_bytes // 1024} KiB)",
            hints=("is this the right file?",),
        )
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    lines = [line.rstrip(" \t") for line in _LINE_END.split(text.decode("latin-1"))]
    start_re = re.compile(r"([ \t>]*)" + re.escape(kind.magic))
    start, prefix = _find_start(lines, 0, start_re)
    if start is None:
        if not text.strip():
            raise StructureError(f"not a keycourier {kind.noun}: the input is empty")
        what = describe(lines)
        raise StructureError(
            f"not a keycourier {kind.noun}" + (f": this is {what}" if what else ""),
            hints=(() if what else (f"a {kind.noun} starts with the line '{kind.formats[-1]}'",)),
        )
    version = _WORD_SEP.split(lines[start][len(prefix) :], maxsplit=1)[0]
    if version not in kind.formats:
        shown = version[:48] if _PRINTABLE.fullmatch(version[:48]) else kind.magic + "?"
        raise StructureError(
            f"unsupported {kind.noun} format version '{shown}' "
            f"(this keycourier reads {', '.join(kind.formats)})",
            line=start + 1,
            hints=("upgrade keycourier",),
        )
    body = _Body(lines, start, prefix, noun=kind.noun, last=kind.last)
    cursor = Cursor(body.words(), body)
    cursor.marker(version)
    result = parse(cursor)
    cursor.finish()
    again, _ = _find_start(lines, body.end + 1, start_re)
    if again is not None:
        raise StructureError(
            f"the input holds more than one {kind.noun} (another one starts at line {again + 1})",
            line=again + 1,
            hints=(f"send one {kind.noun} per file",),
        )
    return version, result


def _find_start(lines: list[str], begin: int, start: re.Pattern[str]) -> tuple[int | None, str]:
    for i in range(begin, len(lines)):
        m = start.match(lines[i])
        if m:
            return i, m.group(1)
    return None, ""


class _Body:
    """The lines of one document (a bundle, a receipt) without their shared prefix, read as
    lines or as words up to its last marker line (``last``)."""

    __slots__ = ("end", "last", "lines", "next", "noun", "prefix", "start")

    def __init__(
        self, lines: list[str], start: int, prefix: str, *, noun: str = "bundle", last: str = END_A
    ) -> None:
        self.lines, self.start, self.prefix = lines, start, prefix
        self.noun, self.last = noun, last
        self.next = start  # the next input line (index) to read
        self.end = start  # the document's last line (index), once known

    def line(self) -> tuple[str, int]:
        """The next line without its prefix, and its number (counted from 1)."""
        i = self.next
        if i >= len(self.lines):
            raise damaged(len(self.lines), f"the {self.noun} ends before '{self.last}'", self.noun)
        self.next += 1
        raw = self.lines[i]
        if i == self.start or raw.startswith(self.prefix):
            return raw[len(self.prefix) :], i + 1
        if not raw or raw == self.prefix.rstrip(" \t"):
            return "", i + 1  # an empty line, quoted or not (CR CR LF makes them too)
        raise damaged(
            i + 1,
            f"the line does not start with {self.prefix!r} like the {self.noun}'s first line",
            self.noun,
        )

    def words(self) -> list[tuple[str, int]]:
        """The remaining words up to and including the last marker line (the age END line of
        a bundle); that line must end there."""
        out: list[tuple[str, int]] = []
        last = tuple(self.last.split(" "))
        n = len(last)
        while True:
            text, number = self.line()
            before = len(out)
            if not _LINE_CHARS.fullmatch(text):
                raise damaged(number, "a character that is not printable ASCII", self.noun)
            for match in _WORD.finditer(text):
                if len(out) == MAX_WORDS:
                    raise damaged(
                        number, f"more than {MAX_WORDS} words: this is not a {self.noun}", self.noun
                    )
                out.append((match.group(0), number))
            if last[-1] not in text:
                continue  # the last marker line cannot end on this line
            for k in range(max(0, before - n + 1), len(out) - n + 1):
                if tuple(w for w, _ in out[k : k + n]) == last:
                    if k + n != len(out):
                        raise damaged(
                            number, f"text after '{self.last}' on the same line", self.noun
                        )
                    self.end = number - 1
                    return out


def _read_v2(body: _Body) -> Blocks:
    words = body.words()
    cursor = Cursor(words, body)
    cursor.marker(FORMAT)
    cursor.marker(BEGIN_M)
    manifest, manifest_line = cursor.base64("manifest", MAX_MANIFEST_BYTES)
    cursor.marker(END_M)
    cursor.marker(BEGIN_S)
    signature, sig_line = cursor.base64("signature", 64)
    if len(signature) != 64:
        raise damaged(sig_line, "the signature block does not hold a 64-byte signature")
    cursor.marker(END_S)
    cursor.marker(BEGIN_A)
    payload, _ = cursor.base64("age", MAX_PAYLOAD_BYTES)
    cursor.marker(END_A)
    cursor.finish()
    return Blocks(FORMAT, manifest, signature, payload, manifest_line)


def _read_v1(body: _Body) -> Blocks:
    """Version 1: the first seven lines are read whole, the age block as words."""
    expected: list[str | Callable[[str], bool]] = [
        FORMAT_V1,
        BEGIN_M,
        lambda s: 0 < len(s) <= MAX_MANIFEST_BYTES and _PRINTABLE_LINE.fullmatch(s) is not None,
        END_M,
        BEGIN_S,
        lambda s: _SIG_V1.fullmatch(s) is not None,
        END_S,
    ]
    got: list[tuple[str, int]] = []
    for want in expected:
        text, number = body.line()
        if isinstance(want, str) and text != want:
            raise damaged(number, f"expected '{want}'")
        if not isinstance(want, str) and not want(text):
            what = "manifest" if len(got) == 2 else "signature"
            raise damaged(number, f"the {what} line is not one line of printable ASCII")
        got.append((text, number))
    cursor = Cursor(body.words(), body)
    cursor.marker(BEGIN_A)
    payload, _ = cursor.base64("age", MAX_PAYLOAD_BYTES)
    cursor.marker(END_A)
    cursor.finish()
    signature = binascii.a2b_base64(got[5][0])
    if binascii.b2a_base64(signature, newline=False).decode("ascii") != got[5][0]:
        raise damaged(got[5][1], "non-canonical base64 in the signature line")
    return Blocks(FORMAT_V1, got[2][0].encode("ascii"), signature, payload, got[2][1])


_PRINTABLE_LINE: Final = re.compile(r"[\x20-\x7e]+")


class Cursor:
    """The words of one document, consumed in order: markers and base64 blocks."""

    __slots__ = ("body", "pos", "words")

    def __init__(self, words: list[tuple[str, int]], body: _Body) -> None:
        self.words, self.pos, self.body = words, 0, body

    def _line_here(self) -> int:
        if self.pos < len(self.words):
            return self.words[self.pos][1]
        return self.words[-1][1] if self.words else self.body.start + 1

    def finish(self) -> None:
        if self.pos != len(self.words):
            raise self._damaged(self._line_here(), f"unexpected text before '{self.body.last}'")

    def _damaged(self, line: int, why: str) -> StructureError:
        return damaged(line, why, self.body.noun)

    def marker(self, text: str) -> None:
        want = text.split(" ")
        got = [w for w, _ in self.words[self.pos : self.pos + len(want)]]
        if got != want:
            raise self._damaged(self._line_here(), f"expected '{text}'")
        self.pos += len(want)

    def base64(self, name: str, limit: int) -> tuple[bytes, int]:
        """Concatenate the block's words and decode them as canonical padded base64."""
        first = self._line_here()
        begin = self.pos
        total = 0
        encoded_limit = 4 * -(-limit // 3)
        while self.pos < len(self.words) and not self.words[self.pos][0].startswith("-----"):
            word, number = self.words[self.pos]
            if not _B64_CHARS.fullmatch(word):
                raise self._damaged(number, f"a character that is not base64 in the {name} block")
            total += len(word)
            if total > encoded_limit:
                raise StructureError(
                    f"the {self.body.noun}'s {name} block is larger than its limit of "
                    f"{limit} bytes",
                    line=number,
                    hints=_HINT_FRESH if self.body.noun == "bundle" else (),
                )
            self.pos += 1
        block = self.words[begin : self.pos]
        if not block:
            raise self._damaged(first, f"the {name} block is empty")
        joined = "".join(w for w, _ in block)
        pad = joined.find("=")
        if 0 <= pad < len(joined) - 2 or (pad >= 0 and joined[pad:] not in ("=", "==")):
            offset = 0
            for word, number in block:  # the line that holds the misplaced "="
                offset += len(word)
                if offset > pad:
                    raise self._damaged(number, f"base64 padding inside the {name} block")
        last = block[-1][1]
        if len(joined) % 4:
            raise self._damaged(
                last, f"the {name} block's base64 is cut short or has extra characters"
            )
        try:
            data = binascii.a2b_base64(joined, strict_mode=True)
        except binascii.Error:
            raise self._damaged(last, f"invalid base64 in the {name} block") from None
        if binascii.b2a_base64(data, newline=False).decode("ascii") != joined:
            raise self._damaged(last, f"non-canonical base64 at the end of the {name} block")
        return data, first


# -- what else the input may be ----------------------------------------------------

# (a line pattern, what the input then is): checked in order when no bundle was found.
# A new keycourier file kind such as a signed receipt (first line "keycourier-receipt/v1")
# is named by the generic "keycourier-<kind>/" entry; give it a row here for a better name.
FOREIGN_FORMATS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"# keycourier identity v\d+"), "a keycourier identity file"),
    (re.compile(r"keycourier-identity/v\d+"), "a keycourier identity file"),
    (
        re.compile(r"keycourier-receipt/v\d+"),
        "a keycourier receipt (use `keycourier receipt inspect` or `receipt verify`)",
    ),
    (re.compile(r"keycourier-credentials/v\d+"), "keycourier credentials (an opened bundle)"),
    (
        re.compile(r"age-encryption\.org/v\d+|-----BEGIN AGE ENCRYPTED FILE-----"),
        "an age file (use `keycourier age decrypt`)",
    ),
    (
        re.compile(r"AGE-SECRET-KEY-(?:PQ-)?1[0-9A-Z]+"),
        "an age identity (a secret key: keep it private)",
    ),
    (re.compile(r"keycourier-([a-z][a-z0-9-]{0,30})/v\d+"), "a keycourier {0} file"),
)


def _not_a_bundle(text: bytes, lines: list[str]) -> StructureError:
    if not text.strip():
        return StructureError("not a keycourier bundle: the input is empty")
    what = describe(lines)
    return StructureError(
        "not a keycourier bundle" + (f": this is {what}" if what else ""),
        hints=(() if what else ("a bundle starts with the line 'keycourier-bundle/v2' (or v1)",)),
    )


def describe(lines: list[str]) -> str | None:
    """What a non-bundle input is, when it is something keycourier knows."""
    for pattern, what in FOREIGN_FORMATS:
        for line in lines[:200]:
            m = pattern.search(line)
            if m:
                return what.format(*m.groups())
    return None
