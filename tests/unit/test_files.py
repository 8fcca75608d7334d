from __future__ import annotations

import os
import stat
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
