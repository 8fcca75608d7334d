"""Cheap structured mutations of a valid sample, as a hypothesis strategy.

A mutated input is the sample with one to four edits applied: flip, set,
insert, delete, duplicate or truncate bytes, or swap/duplicate/drop whole
lines. Edits are biased towards the places parsers look at (line starts,
separators, base64 alphabet, whitespace) so that most inputs get past the
first check and into the deeper code.
"""

from __future__ import annotations

from hypothesis import strategies as st

INTERESTING = [
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"\t",
    b"=",
    b"-",
    b">",
    b"{",
    b"}",
    b'"',
    b":",
    b",",
    b"\\",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"A",
    b"/",
    b"+",
    b"0",
    b"-> ",
    b"--- ",
    b"\\u0000",
    b"1e9",
    b"-----END AGE ENCRYPTED FILE-----",
    b"-----BEGIN AGE ENCRYPTED FILE-----",
    b"age-encryption.org/v1\n",
]


@st.composite
def mutated(draw: st.DrawFn, sample: bytes, *, max_edits: int = 4) -> bytes:
    data = bytearray(sample)
    for _ in range(draw(st.integers(1, max_edits))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup", "cut", "line"]))
        n = len(data)
        pos = draw(st.integers(0, max(n - 1, 0)))
        if op == "flip" and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            piece = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=8))
            data[pos:pos] = piece
        elif op == "delete" and n:
            length = draw(st.integers(1, 16))
            del data[pos : pos + length]
        elif op == "dup" and n:
            length = draw(st.integers(1, 80))
            data[pos:pos] = data[pos : pos + length]
        elif op == "cut":
            del data[pos:]
        elif op == "line":
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            how = draw(st.sampled_from(["swap", "dup", "drop"]))
            if how == "swap":
                lines[i], lines[j] = lines[j], lines[i]
            elif how == "dup":
                lines.insert(j, lines[i])
            elif len(lines) > 1:
                del lines[i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)
