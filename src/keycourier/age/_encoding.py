"""Strict encodings used by age: canonical unpadded base64 and Bech32.

Internal module: functions raise ``ValueError``; callers turn it into the
error class of their layer.
"""

from __future__ import annotations

import binascii
from typing import Final

_B64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64encode(data: bytes) -> bytes:
    """Unpadded standard base64 (always canonical)."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=")


def b64decode(text: bytes) -> bytes:
    """Decode unpadded base64, rejecting padding, stray bytes and non-canonical input."""
    if text.translate(None, _B64_ALPHABET):
        raise ValueError("invalid base64 character")
    if len(text) % 4 == 1:
        raise ValueError("invalid base64 length")
    data = binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    if b64encode(data) != text:
        raise ValueError("non-canonical base64")
    return data


def b64decode_padded(text: bytes) -> bytes:
    """Decode padded base64 (armor), rejecting missing padding and non-canonical input."""
    if len(text) % 4 != 0:
        raise ValueError("invalid padded base64 length")
    stripped = text.rstrip(b"=")
    if len(text) - len(stripped) > 2 or stripped.translate(None, _B64_ALPHABET):
        raise ValueError("invalid base64 character")
    data = binascii.a2b_base64(text)
    if binascii.b2a_base64(data, newline=False) != text:
        raise ValueError("non-canonical base64")
    return data


# -- Bech32 (BIP 173, not Bech32m), without the 90-character limit ----------------

_CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARMAP: Final = {c: i for i, c in enumerate(_CHARSET)}
_GEN: Final = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(data: bytes | list[int], src: int, dst: int, *, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    mask = (1 << dst) - 1
    for value in data:
        acc = (acc << src) | value
        bits += src
        while bits >= dst:
            bits -= dst
            out.append((acc >> bits) & mask)
    if pad:
        if bits:
            out.append((acc << (dst - bits)) & mask)
    elif bits >= src or (acc << (dst - bits)) & mask:
        raise ValueError("invalid Bech32 padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Encode as lowercase Bech32; the caller upper-cases when needed."""
    hrp = hrp.lower()
    values = _regroup(data, 8, 5, pad=True)
    poly = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Decode Bech32; returns the HRP in the case it was written in, and the data."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed-case Bech32")
    if any(not 33 <= ord(c) <= 126 for c in text):
        raise ValueError("invalid Bech32 character")
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("invalid Bech32 separator position")
    hrp = text[:pos]
    try:
        values = [_CHARMAP[c] for c in text[pos + 1 :].lower()]
    except KeyError:
        raise ValueError("invalid Bech32 data character") from None
    if _polymod([*_hrp_expand(hrp.lower()), *values]) != 1:
        raise ValueError("invalid Bech32 checksum")
    return hrp, bytes(_regroup(values[:-6], 5, 8, pad=False))
