"""Streaming keeps memory bounded, whatever the size of the file."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from collections.abc import Callable
from typing import BinaryIO, cast

import pytest

from keycourier import age

SIZE = 8 * 1024 * 1024  # 128 chunks


class ZeroSource:
    """A readable that produces ``size`` deterministic bytes without holding them."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return b"\x5a" * n


class Sink:
    """A writable that hashes and counts instead of storing."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def _peak(fn: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _io(obj: object) -> BinaryIO:
    return cast(BinaryIO, obj)


@pytest.mark.parametrize("armor", [False, True])
def test_decrypt_stream_uses_bounded_memory(armor: bool) -> None:
    ident = age.X25519Identity.generate()
    encrypted = io.BytesIO()
    age.encrypt_stream([ident.recipient()], _io(ZeroSource(SIZE)), encrypted, armor=armor)
    encrypted.seek(0)
    out = Sink()

    def run() -> None:
        age.decrypt_stream([ident], encrypted, _io(out))

    peak = _peak(run)
    assert out.size == SIZE
    assert out.hash.hexdigest() == hashlib.sha256(b"\x5a" * SIZE).hexdigest()
    assert peak < 1024 * 1024, peak


@pytest.mark.parametrize("armor", [False, True])
def test_encrypt_stream_uses_bounded_memory(armor: bool) -> None:
    ident = age.X25519Identity.generate()
    out = Sink()

    def run() -> None:
        age.encrypt_stream([ident.recipient()], _io(ZeroSource(SIZE)), _io(out), armor=armor)

    peak = _peak(run)
    assert out.size > SIZE
    assert peak < 1024 * 1024, peak
