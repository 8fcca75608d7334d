"""Conceal injected secrets in a child's output, in every encoding we can predict.

For each secret ``s`` the masker looks for: ``s`` itself; its URL encodings
(``quote(s, safe="")``, ``quote_plus``, ``quote`` with ``/`` kept); its JSON
string escaping; its hex encoding in lower and upper case (which also catches
it inside a longer hex dump: its bytes start on a byte boundary); and its
base64 (standard and URL-safe alphabets) at each of the three byte
alignments, keeping only the characters that depend on ``s`` alone. The
alignment trick catches ``base64(client_id:secret)`` in a Basic
``Authorization`` header, and a token inside any base64 blob, without knowing
what surrounds it.

Not detected (a documented limit): base64 wrapped across lines (``base64``'s
76-column output, PEM), hex with separators (``xxd``, ``od``), any other
transformation (compression, encryption, reversal, a token cut in pieces).

Streaming: matches may be split across reads. ``feed()`` holds back the
longest suffix of (held-back tail + new chunk) that is a proper prefix of some
needle (and any match reaching into it, which might still grow into a longer
needle), and emits the rest with every match replaced. The held part waits
for more data or ``flush()``. Every match that could still
complete starts inside the held part, so no secret leaks through a split, and
ordinary output (a prompt, a progress line) is not delayed.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus

CONCEALED: Final = b"<concealed by keycourier>"
MIN_ENCODED_LEN: Final = 6  # shorter derived forms would conceal innocent text


def _b64_cores(secret: bytes) -> set[bytes]:
    cores: set[bytes] = set()
    for k in range(3):
        total_bits = 8 * (k + len(secret))
        start = -(-8 * k // 6)  # ceil(8k / 6): first char made of secret bits only
        end = total_bits // 6  # chars past this depend on what follows
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            core = enc(b"\0" * k + secret)[start:end]
            if len(core) >= MIN_ENCODED_LEN:
                cores.add(core)
    full = base64.b64encode(secret)
    cores.add(full)
    cores.add(full.rstrip(b"="))
    cores.add(base64.urlsafe_b64encode(secret).rstrip(b"="))
    return cores


def encodings(secret: str | bytes) -> set[bytes]:
    """Every predictable encoding of ``secret`` (as bytes), the raw value included."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw:
        return set()
    text = raw.decode("utf-8", errors="surrogateescape")
    forms = {raw}
    derived = {
        quote(text, safe="").encode(),
        quote(text, safe="/").encode(),
        quote_plus(text).encode(),
        quote(text, safe="").lower().encode() if "%" in quote(text, safe="") else raw,
        json.dumps(text)[1:-1].encode(),
        json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8", errors="surrogateescape"),
        raw.hex().encode(),
        raw.hex().upper().encode(),
    }
    derived |= _b64_cores(raw)
    forms |= {d for d in derived if len(d) >= MIN_ENCODED_LEN or d == raw}
    return forms


class StreamMasker:
    """Replace secrets in a byte stream, across chunk boundaries."""

    def __init__(self, secrets: Iterable[str | bytes], replacement: bytes = CONCEALED) -> None:
        needles: set[bytes] = set()
        for s in secrets:
            needles |= encodings(s)
        self._needles = sorted(needles, key=len, reverse=True)
        self._replacement = replacement
        self._keep = max((len(n) for n in self._needles), default=1) - 1
        self._pattern = (
            re.compile(b"|".join(re.escape(n) for n in self._needles)) if self._needles else None
        )
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if self._pattern is None:
            return chunk
        raw = self._pending + chunk
        cut = len(raw) - self._partial_suffix(raw)
        # A match that reaches into the held part might still grow into a
        # longer needle: hold it back whole.
        for m in self._pattern.finditer(raw):
            if m.end() > cut:
                cut = min(cut, m.start())
                break
        self._pending = raw[cut:]
        return self._pattern.sub(self._replacement, raw[:cut])

    def _partial_suffix(self, buf: bytes) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a needle."""
        best = 0
        window = buf[-self._keep :] if self._keep else b""
        for needle in self._needles:
            first = needle[:1]
            limit = min(len(needle) - 1, len(window))
            start = len(window) - limit
            pos = window.find(first, start)
            while pos != -1:
                k = len(window) - pos
                if k <= best:
                    break
                if needle.startswith(window[pos:]):
                    best = k
                    break
                pos = window.find(first, pos + 1)
        return best

    def flush(self) -> bytes:
        if self._pattern is None:
            return b""
        out = self._pattern.sub(self._replacement, self._pending)
        self._pending = b""
        return out
