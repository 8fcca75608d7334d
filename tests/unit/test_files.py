from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from keycourier import files


def test_writes_0600_atomically_and_replaces(tmp_path: Path) -> None:
    tmp_path = tmp_path / "w"
    tmp_path.mkdir()
    target = tmp_path / "creds.json"
    target.write_text("old")
    target.chmod(0o644)
    files.write_private(target, b"new secret")
    assert target.read_bytes() == b"new secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["creds.json"]


def test_fallback_path_without_o_tmpfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    tmp_path = tmp_path / "w"
    tmp_path.mkdir()
    target = tmp_path / "x"
    files.write_private(target, b"data")
    assert target.read_bytes() == b"data"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_failed_write_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "x"
    with pytest.raises(FileNotFoundError):
        files.write_private(target, b"data")
    assert not target.exists()


def test_o_tmpfile_path_is_the_one_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard: on Linux the unnamed-file path must work (a silent fallback would hide a bug)."""
    calls: list[str] = []
    real = files._write_named_temp

    def spy(*args: object) -> None:
        calls.append("fallback")
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(files, "_write_named_temp", spy)
    files.write_private(tmp_path / "y", b"data")
    assert (tmp_path / "y").read_bytes() == b"data"
    assert calls == []


def _read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def run() -> None:
        with open(path, "rb") as fh:
            into.append(fh.read())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_fifo_or_a_device_is_written_in_place_not_replaced(tmp_path: Path) -> None:
    """write_private renames a new file over its target; over /dev/null that replaced the
    device node with a regular file (as root, for the whole machine: it happened here).
    A FIFO, and a symlink to /dev/null (so that a regression cannot damage the real one),
    must be written through and stay what they are."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _read_fifo(fifo, got)
    files.write_private(fifo, b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)

    null = tmp_path / "null"
    null.symlink_to(os.devnull)
    files.write_private(null, b"discarded")
    assert null.is_symlink()
    assert stat.S_ISCHR(os.stat(null).st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
