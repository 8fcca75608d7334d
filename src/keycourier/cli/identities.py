"""Loading a keycourier identity for a command, asking for its passphrase only when the
file has one."""

from __future__ import annotations

from pathlib import Path

from keycourier.bundle import KeycourierIdentity, is_protected, load_identity
from keycourier.bundle.identity import read_identity_file
from keycourier.cli.common import get_passphrase


def load_identity_for_cli(
    path: str, passphrase_file: str | None, *, stdin_busy: bool = False
) -> KeycourierIdentity:
    """Load a keycourier identity, asking for the passphrase only if the file needs one."""
    data = read_identity_file(path)
    passphrase = None
    if is_protected(data):
        passphrase = get_passphrase(
            passphrase_file, stdin_busy=stdin_busy, what=f"passphrase for {Path(path).name}"
        )
    return load_identity(data, passphrase)
