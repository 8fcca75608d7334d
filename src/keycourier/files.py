"""Writing files that hold secrets: atomic, mode 0600, never a partial file.

The exception is a target that is a device or a pipe (``/dev/null``, a
terminal, a FIFO, ``/dev/stdout``): that is written in place, like stdout.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import TYPE_CHECKING, BinaryIO

from keycourier.errors import Error, UsageError

if TYPE_CHECKING:
    from pathlib import Path


def read_limited(
    source: str | os.PathLike[str] | BinaryIO,
    what: str,
    limit: int,
    *,
    error: type[Error] = UsageError,
    refuse_larger: bool = True,
) -> bytes:
    """The bytes of a file (a path) or an open binary stream, reading at most ``limit + 1``.

    Unreadable is ``error("cannot read {what}: <reason>")``; more than ``limit``
    bytes is ``error("{what} is larger than {limit} bytes")``. With
    ``refuse_larger=False`` the ``limit + 1`` bytes are returned instead, for a
    parser that reports an oversized input in its own terms.
    """
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as fh:
                data = fh.read(limit + 1)
        else:
            data = source.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror or exc}") from None
    if refuse_larger and len(data) > limit:
        raise error(f"{what} is larger than {limit} bytes")
    return data


class PartialWriteError(OSError):
    """Writing in place (a device or pipe) failed after part of the data went out."""


def open_in_place(path: str | os.PathLike[str]) -> int | None:
    """A descriptor to write ``path`` in place, or ``None``: write it the atomic way.

    In place: this process's own stdout or stderr named through a link
    (``-o /dev/stdout``, ``/proc/self/fd/1``: a duplicate of fd 1 or 2, so
    ``>>`` still appends), or, when it is a pipe, socket or terminal, by any
    name; an existing character device or a FIFO owned by this user or root
    (``/dev/null``, your terminal, your named pipe). Renaming a new file over
    such a name would replace the device node or the symlink itself, which as
    root breaks ``/dev/null`` for the whole machine. A regular file (a plain
    name, or a symlink to one), a directory or a missing path gives ``None``:
    the caller renames a new file over the name, which never follows a
    symlink. Anything else (a device or FIFO of another user, which anyone
    could plant where a secret is about to be written; a block device; a
    socket) is refused with a usage error.

    The target is first opened with ``O_PATH``, which has no side effects (it
    neither blocks on a FIFO nor breaks a lease), and checked with ``fstat``;
    the very inode checked is then reopened for writing through
    ``/proc/self/fd`` (without ``/proc``: by name, and it must be the same
    inode), so a symlink swapped in meanwhile changes nothing.
    """
    own = {}
    for std in (2, 1):  # before opening anything: a closed 1 or 2 would be reused
        with contextlib.suppress(OSError):
            info = os.fstat(std)
            own[(info.st_dev, info.st_ino)] = std
    linked = os.path.islink(path)
    try:
        probe = os.open(path, _PROBE_FLAGS)
    except OSError:
        with contextlib.suppress(OSError):
            _refuse_special(path, os.stat(path))  # e.g. a socket, without O_PATH
        return None  # missing, or a path the atomic way will report
    try:
        info = os.fstat(probe)
        mine = own.get((info.st_dev, info.st_ino))
        if mine is not None and (linked or not stat.S_ISREG(info.st_mode)):
            return os.dup(mine)
        if stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
            return None  # a directory: the atomic way says it is one
        _refuse_special(path, info)
        return _reopen_for_writing(probe, path, info)
    finally:
        os.close(probe)


_PROBE_FLAGS = getattr(os, "O_PATH", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY) | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC


def _refuse_special(path: str | os.PathLike[str], info: os.stat_result) -> None:
    """Refuse a target that is neither a regular file, a directory, nor a character device
    or FIFO owned by this user or root."""
    mode = info.st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        raise UsageError(
            f"refusing to write to {path}: not a regular file, a character device or a pipe"
        )
    if info.st_uid not in (os.geteuid(), 0):
        kind = "named pipe" if stat.S_ISFIFO(mode) else "device"
        raise UsageError(
            f"refusing to write to {path}: a {kind} owned by another user (uid {info.st_uid})"
        )


def _reopen_for_writing(probe: int, path: str | os.PathLike[str], info: os.stat_result) -> int:
    try:
        return os.open(f"/proc/self/fd/{probe}", _WRITE_FLAGS)
    except FileNotFoundError:  # no /proc: by name, and it must still be what was checked
        fd = os.open(path, _WRITE_FLAGS)
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            os.close(fd)
            raise UsageError(
                f"refusing to write to {path}: it changed while being checked"
            ) from None
        return fd


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``; a failure after the first byte is a
    ``PartialWriteError`` (part of the data went out)."""
    view = memoryview(data)
    done = 0
    try:
        while done < len(view):
            done += os.write(fd, view[done:])
    except OSError as exc:
        if done:
            raise PartialWriteError(
                exc.errno, f"{exc.strerror} after {done} of {len(view)} bytes"
            ) from None
        raise


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    On Linux the data goes to an unnamed ``O_TMPFILE`` in the target's
    directory, is fsynced, and only then gets a name (linked, then renamed
    over ``path``): if the process dies before that, even by SIGKILL, the
    kernel discards the unnamed file and nothing is left behind. Where
    ``O_TMPFILE`` is not available it falls back to a named 0600 temporary
    file that is removed on any error it can see. A device, a FIFO or this
    process's own stdout (see ``open_in_place``) is written in place instead:
    there a failure can be partial (``PartialWriteError``) and the mode is the
    device's own.
    """
    from pathlib import Path  # here: `keycourier age -o` imports this module too

    target = Path(path)
    in_place = open_in_place(target)
    if in_place is not None:
        try:
            write_all(in_place, data)
        finally:
            os.close(in_place)
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
            write_all(fd, data)
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


def create_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Create ``path`` (mode 0600) holding ``data``, fsynced; FileExistsError when it
    exists (a key file is never overwritten). A failure after the file was created removes
    it, so no partial key is left behind."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


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


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """Create the directory ``path``, and each missing parent, with mode 0700.

    Every directory this creates is 0700 whatever the umask (a umask of 022
    would otherwise leave 0755, listable by every local user). A directory
    that already exists is left exactly as it is: its owner chose its mode.
    """
    target = os.path.abspath(os.fspath(path))
    missing: list[str] = []
    current = target
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue  # made meanwhile by someone else: theirs, left alone
        # the umask may have taken bits away (never added any): set 0700 on the very
        # directory just made, without following a symlink swapped in since
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
