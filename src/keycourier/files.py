"""Writing files that hold secrets: atomic, mode 0600, never a partial file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    The data goes to a temporary file in the same directory (created 0600),
    is fsynced, then renamed over ``path``; on any failure the temporary file
    is removed and ``path`` is untouched.
    """
    import tempfile

    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
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
