"""Read-ahead decryption: the same result as reading on the calling thread, and no thread left.

``decrypt_stream`` reads a large regular file's payload on a second thread
(``keycourier.age._readahead``). These tests shrink the block to one or two
chunks so that every block boundary case shows up in small files, compare the
outcome (plaintext, partial output and error message) with the single-thread
path over generated changes to the file, and check that the thread has stopped
whenever ``decrypt_stream`` returns or raises.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import BinaryIO, cast
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keycourier import age
from keycourier.age import _format, _readahead

CHUNK = _format.CHUNK_SIZE
ENC = _format.ENC_CHUNK_SIZE
IDENT = age.X25519Identity.generate()


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "keycourier-read-ahead"]


def _outcome(data: bytes, read_ahead: bool) -> tuple[bytes, str]:
    out = io.BytesIO()
    try:
        age.decrypt_stream([IDENT], io.BytesIO(data), out, read_ahead=read_ahead)
    except age.AgeError as exc:
        return out.getvalue(), f"{type(exc).__name__}: {exc}"
    return out.getvalue(), "ok"


def _encrypt(size: int) -> bytes:
    return age.encrypt([IDENT.recipient()], os.urandom(size))


# Plaintext sizes around chunk and block boundaries (a block is 1 or 2 chunks here).
sizes = st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5, 3 * CHUNK])
changes = st.one_of(
    st.tuples(st.just("none"), st.just(0), st.just(0)),
    st.tuples(st.just("truncate"), st.integers(0, 4 * ENC), st.just(0)),
    st.tuples(st.just("flip"), st.integers(0, 4 * ENC), st.integers(0, 7)),
    st.tuples(st.just("append"), st.integers(1, ENC + 1), st.just(0)),
    st.tuples(st.just("drop chunk"), st.integers(0, 3), st.just(0)),
)


def _change(data: bytes, kind: str, a: int, b: int) -> bytes:
    header_end = data.index(b"\n", data.index(b"\n---")) + 1 + _format.NONCE_SIZE
    payload = data[header_end:]
    if kind == "truncate":
        return data[: header_end + min(a, len(payload))]
    if kind == "flip":
        at = header_end + a % max(len(payload), 1)
        if at >= len(data):
            return data
        return data[:at] + bytes([data[at] ^ (1 << b)]) + data[at + 1 :]
    if kind == "append":
        return data + os.urandom(a)
    if kind == "drop chunk":
        start = a * ENC
        return data[:header_end] + payload[:start] + payload[start + ENC :]
    return data


@settings(max_examples=150, deadline=None)
@given(size=sizes, change=changes, block_chunks=st.sampled_from([1, 2]))
def test_read_ahead_gives_what_the_single_thread_path_gives(
    size: int, change: tuple[str, int, int], block_chunks: int
) -> None:
    data = _change(_encrypt(size), *change)
    alone = _outcome(data, read_ahead=False)
    with mock.patch.object(_format, "READ_AHEAD_CHUNKS", block_chunks):
        ahead = _outcome(data, read_ahead=True)
    assert ahead == alone
    if change[0] == "none":
        assert alone[1] == "ok"
        assert len(alone[0]) == size
    assert not _threads()


class FailingSource(io.RawIOBase):
    """A readable whose reads fail with EIO after ``good`` bytes."""

    def __init__(self, data: bytes, good: int) -> None:
        self._data, self._pos, self._good = data, 0, good

    def readable(self) -> bool:
        return True

    def readinto(self, view: memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._good:
            raise OSError(5, "Input/output error")
        n = min(len(view), len(self._data) - self._pos, self._good - self._pos)
        view[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_a_read_error_on_the_thread_reaches_the_caller_and_the_thread_ends() -> None:
    data = _encrypt(6 * CHUNK)
    failed = pytest.raises(OSError, match="Input/output")
    with mock.patch.object(_format, "READ_AHEAD_CHUNKS", 2), failed as info:
        age.decrypt_stream(
            [IDENT],
            cast(BinaryIO, FailingSource(data, len(data) // 2)),
            io.BytesIO(),
            read_ahead=True,
        )
    assert info.value.errno == 5
    assert not _threads()


def test_a_tampered_first_chunk_stops_the_thread_at_once() -> None:
    data = bytearray(_encrypt(12 * CHUNK))
    data[-(11 * ENC)] ^= 1  # inside the first chunk
    with mock.patch.object(_format, "READ_AHEAD_CHUNKS", 2), pytest.raises(age.PayloadError):
        age.decrypt_stream([IDENT], io.BytesIO(bytes(data)), io.BytesIO(), read_ahead=True)
    assert not _threads()


class Spy(_readahead.ReadAhead):
    made = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        Spy.made += 1
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> type[Spy]:
    Spy.made = 0
    monkeypatch.setattr(_readahead, "ReadAhead", Spy)
    monkeypatch.setattr(_format, "READ_AHEAD_MIN_FILE_SIZE", 3 * CHUNK)
    return Spy


def _decrypt_file(path: Path) -> bytes:
    out = io.BytesIO()
    with open(path, "rb") as src:
        age.decrypt_stream([IDENT], src, out)
    return out.getvalue()


def test_read_ahead_is_chosen_for_large_regular_files_only(tmp_path: Path, spy: type[Spy]) -> None:
    plaintext = os.urandom(4 * CHUNK)
    big, armored, small = tmp_path / "big.age", tmp_path / "armored.age", tmp_path / "small.age"
    big.write_bytes(age.encrypt([IDENT.recipient()], plaintext))
    armored.write_bytes(age.encrypt([IDENT.recipient()], plaintext, armor=True))
    small.write_bytes(age.encrypt([IDENT.recipient()], plaintext[: 2 * CHUNK]))

    assert _decrypt_file(big) == plaintext
    assert spy.made == 1
    assert _decrypt_file(armored) == plaintext  # armor: the decoder is no regular file
    assert _decrypt_file(small) == plaintext[: 2 * CHUNK]
    age.decrypt_stream([IDENT], io.BytesIO(big.read_bytes()), io.BytesIO())
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as pipe_in:
        writer = threading.Thread(target=_feed, args=(write_end, big.read_bytes()))
        writer.start()
        out = io.BytesIO()
        age.decrypt_stream([IDENT], pipe_in, out)
        writer.join()
    assert out.getvalue() == plaintext
    assert spy.made == 1
    assert not _threads()


def _feed(fd: int, data: bytes) -> None:
    with open(fd, "wb") as pipe_out:
        pipe_out.write(data)


def test_regular_file_size_of_sources(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1000)
    with open(path, "rb") as fh:
        assert _format.Reader(fh).regular_file_size() == 1000
    assert _format.Reader(io.BytesIO(b"x" * 1000)).regular_file_size() == 0
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as pipe_in, open(write_end, "wb"):
        assert _format.Reader(pipe_in).regular_file_size() == 0


class SimulatedInterruptError(Exception):
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise SimulatedInterruptError


def test_an_interrupted_close_still_waits_for_the_read_in_progress() -> None:
    """Ctrl-C while close() waits for the thread: the thread is still stopped before the
    interrupt goes on (it once kept reading the caller's file)."""
    import signal
    import time

    reading, returned = threading.Event(), threading.Event()

    def slow_readinto(view: memoryview) -> int:
        reading.set()
        time.sleep(0.6)
        returned.set()
        return 0

    blocks = _readahead.ReadAhead(slow_readinto, 16)
    assert reading.wait(5)
    previous = signal.signal(signal.SIGALRM, _interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(SimulatedInterruptError):
            blocks.close()
        assert returned.is_set()  # the read had ended before the interrupt went on
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    for thread in _threads():
        thread.join(5)
    assert not _threads()
