"""Secret handling helpers: the ``Secret`` wrapper, masking and fingerprints.

Nothing in this module ever returns a secret except ``Secret.reveal()``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final, NoReturn

_MASK: Final = "****"


class Secret:
    """A secret value whose ``repr`` and ``str`` never show it.

    Use ``reveal()`` at the one place the value is really needed. Equality is
    constant-time (``hmac.compare_digest``). Python cannot reliably wipe
    memory, so this is about not leaking through logs and tracebacks, not
    about memory hygiene.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        self._value: bytes = value.encode("utf-8") if isinstance(value, str) else bytes(value)

    def reveal(self) -> str:
        return self._value.decode("utf-8")

    def reveal_bytes(self) -> bytes:
        return self._value

    def equals(self, other: Secret | str | bytes) -> bool:
        if isinstance(other, Secret):
            other_bytes = other._value
        elif isinstance(other, str):
            other_bytes = other.encode("utf-8")
        else:
            other_bytes = bytes(other)
        return hmac.compare_digest(self._value, other_bytes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.equals(other)

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({_MASK})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret values cannot be pickled")


def mask(value: str, *, keep: int = 4) -> str:
    """Mask an identifier for display: ``AB12…wxyz``; short values become ``****``.

    Only for identifiers (client IDs). Never call it on a secret: even a
    masked secret leaks some of its characters.
    """
    if len(value) <= keep * 3:
        return _MASK
    return f"{value[:keep]}…{value[-keep:]}"


def fingerprint(label: str, *parts: bytes) -> str:
    """A stable, domain-separated SHA-256 fingerprint, as ``kc1:<32 hex>``.

    ``label`` separates uses (credential, token, sample value). Each part is
    length-prefixed so that (a, bc) and (ab, c) never collide. Only use it on
    high-entropy values or values the policy has already accepted as
    high-entropy: an unkeyed hash of a guessable secret can be brute-forced.
    """
    h = hashlib.sha256()
    h.update(b"keycourier/fingerprint/v1\x00" + label.encode() + b"\x00")
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return "kc1:" + h.hexdigest()[:32]


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


# Letters Unicode counts as printable that show as nothing: Hangul fillers, the braille blank.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def _shown(ch: str) -> str:
    return ch if ch.isprintable() and ch not in _INVISIBLE else _escape(ch)


def printable(text: str, limit: int = 512, *, scrub: tuple[str, ...] = ()) -> str:
    """Text from outside (a platform's reply, a Vault record, a file) made safe to show.

    Each non-empty value in ``scrub`` (a secret the text may echo back) becomes
    ``****`` first. Then every character a terminal could act on (controls, ANSI
    escapes, bidi overrides and other format characters, line and paragraph
    separators, unassigned code points, letters that show as nothing) becomes a visible
    ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN`` escape: nothing is interpreted. A
    backslash is shown as it is, so the function can be applied twice (a record sanitised
    when read, then when shown); text that spells an escape therefore reads like one.
    Text longer than ``limit`` characters is cut there and ends with ``…``.
    """
    for value in scrub:
        if value:
            text = text.replace(value, _MASK)
    plain = text.isprintable() and _INVISIBLE.isdisjoint(text)
    if plain and len(text) <= limit:
        return text
    out = "".join(_shown(ch) for ch in text[:limit])
    return out + ("…" if len(text) > limit else "")
