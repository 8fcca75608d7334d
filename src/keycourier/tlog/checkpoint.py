"""C2SP tlog-checkpoint bodies: origin, tree size, base64 root hash, extension lines."""

from __future__ import annotations

import base64
import binascii
import re

from keycourier._record import record
from keycourier.tlog.merkle import HASH_SIZE

MAX_EXTENSIONS = 16
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")


class CheckpointError(ValueError):
    """A checkpoint body that is not a valid tlog-checkpoint."""


@record
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        if not self.origin or "\n" in self.origin:
            raise CheckpointError("a checkpoint origin is one non-empty line")
        if len(self.root_hash) != HASH_SIZE or self.size < 0:
            raise CheckpointError("a checkpoint has a 32-byte root hash and a size >= 0")
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        for ext in self.extensions:
            if not ext or "\n" in ext:
                raise CheckpointError("a checkpoint extension is one non-empty line")
            lines.append(ext)
        return "\n".join(lines) + "\n"


def parse(text: str) -> Checkpoint:
    """Parse a checkpoint body (the text of an opened note)."""
    if not text.endswith("\n"):
        raise CheckpointError("a checkpoint body ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or len(lines) > 3 + MAX_EXTENSIONS:
        raise CheckpointError("a checkpoint has an origin, a size, a root hash and few extensions")
    origin, size_text, root_text, *extensions = lines
    if not origin or any(not ext for ext in extensions):
        raise CheckpointError("a checkpoint has an empty line")
    if not _SIZE.fullmatch(size_text):
        raise CheckpointError("a checkpoint's tree size is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (ValueError, binascii.Error):
        raise CheckpointError("a checkpoint's root hash is not base64") from None
    if len(root) != HASH_SIZE or base64.b64encode(root).decode() != root_text:
        raise CheckpointError("a checkpoint's root hash is not 32 bytes of canonical base64")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))
