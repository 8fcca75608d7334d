"""Writing files that hold secrets: atomic, mode 0600, never a partial file."""

from __future__ import annotations

import contextlib
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def is_special(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` exists and is a device, FIFO or socket (after symlinks).

    Such a target (``/dev/null``, ``/dev/stdout``, a named pipe) must be written
    in place: renaming a new file over it would replace the device node or the
    symlink itself, which as root breaks ``/dev/null`` for the whole machine.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_in_place(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to an existing special file (see ``is_special``); no rename, no fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    On Linux the data goes to an unnamed ``O_TMPFILE`` in the target's
    directory, is fsynced, and only then gets a name (linked, then renamed
    over ``path``): if the process dies before that, even by SIGKILL, the
    kernel discards the unnamed file and nothing is left behind. Where
    ``O_TMPFILE`` is not available it falls back to a named 0600 temporary
    file that is removed on any error it can see. A device, FIFO or socket
    (``/dev/null``, ``/dev/stdout``) is written in place instead.
    """
    from pathlib import Path  # here: `keycourier age -o` imports this module for is_special

    target = Path(path)
    if is_special(target):
        write_in_place(target, data)
        return
    directory = target.parent if str(target.parent) else Path(".")
    flag = getattr(os, "O_TMPFILE", None)
    fd = -1
    if flag is not None:
        with contextlib.suppress(OSError):
            fd = os.open(directory, flag | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    if fd >= 0 and Path("/proc/self/fd").is_dir():
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, data)
            os.fsync(fd)
            tmp = directory / f".{target.name}.{os.urandom(6).hex()}.tmp"
            # Give it a name: linkat(/proc/self/fd, "<fd>", ..., AT_SYMLINK_FOLLOW). CPython
            # only uses linkat (not link) when a dir fd is passed.
            proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(str(fd), tmp, src_dir_fd=proc_fd, follow_symlinks=True)
            finally:
                os.close(proc_fd)
            try:
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        finally:
            os.close(fd)
        return
    if fd >= 0:
        os.close(fd)
    _write_named_temp(target, directory, data)


def _write_named_temp(target: Path, directory: Path, data: bytes) -> None:
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
