"""What ``keycourier age encrypt`` and ``age decrypt`` do, without click.

The click commands in ``age_cmd`` and the console script's fast path
(``keycourier.cli.entry``) both call ``encrypt_files`` and ``decrypt_files``,
so the two ways in share one implementation. Start-up matters here: keep
click, tempfile, pathlib, json and keycourier.cli.common (which imports them)
off this module's import path. Output files are written to a temporary file
and renamed only on success, so a failed decryption never leaves partial
plaintext behind.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

from keycourier.errors import UsageError
from keycourier.files import read_limited

if TYPE_CHECKING:
    from keycourier.age import Identity, Recipient
    from keycourier.redact import Secret

MAX_KEY_FILE_BYTES = 1024 * 1024


def _read_key_file(path: str, what: str) -> str:
    data = read_limited(path, f"the {what} file {path}", MAX_KEY_FILE_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the {what} file {path} is not UTF-8 text") from None


def _std(name: str) -> BinaryIO:
    """sys.stdin/stdout's binary layer; a usage error when the process was started
    with that descriptor closed (Python then sets it to None)."""
    stream = getattr(sys, name)
    if stream is None:
        raise UsageError(f"standard {name.removeprefix('std')}put is closed", hints=[
            "give a file: INPUT, or -o FILE"
        ])  # fmt: skip
    buffer: BinaryIO = stream.buffer
    return buffer


@contextlib.contextmanager
def _input(path: str | None) -> Iterator[BinaryIO]:
    if path is None or path == "-":
        yield _std("stdin")
        return
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        yield fh


def _umask() -> int:
    current = os.umask(0o077)
    os.umask(current)
    return current


@contextlib.contextmanager
def _output(path: str | None, *, private: bool) -> Iterator[BinaryIO]:
    """stdout, or a temp file next to ``path`` renamed into place only on success (a
    device or FIFO is written in place)."""
    if path is None or path == "-":
        out = _std("stdout")
        yield out
        out.flush()
        return
    from keycourier.files import open_in_place

    try:
        in_place = open_in_place(path)  # /dev/null, /dev/stdout, a FIFO: never renamed over
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    if in_place is not None:
        with os.fdopen(in_place, "wb") as out:
            yield out
        return
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600 if private else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if private:
                os.fsync(fh.fileno())  # plaintext: make it durable before it appears
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _is_stdin(path: str | None) -> bool:
    return path is None or path == "-"


def _passphrase(passphrase_file: str | None, *, confirm: bool, input_path: str | None) -> Secret:
    from keycourier.cli.common import get_passphrase

    return get_passphrase(passphrase_file, confirm=confirm, stdin_busy=_is_stdin(input_path))


def encrypt_files(
    *,
    recipients: Sequence[str] = (),
    recipient_files: Sequence[str] = (),
    use_passphrase: bool = False,
    passphrase_file: str | None = None,
    work_factor: int = 18,
    armor: bool = False,
    output: str | None = None,
    input_path: str | None = None,
) -> None:
    """``keycourier age encrypt``: INPUT (default stdin) to OUTPUT (default stdout)."""
    from keycourier import age as agelib

    use_passphrase = use_passphrase or passphrase_file is not None
    if use_passphrase and (recipients or recipient_files):
        raise UsageError("a passphrase cannot be combined with -r/-R recipients")
    if not use_passphrase and not (recipients or recipient_files):
        raise UsageError(
            "no recipients given",
            hints=["use -r age1..., -R recipients.txt, or --passphrase"],
        )
    if (output is None or output == "-") and not armor and _std("stdout").isatty():
        raise UsageError(
            "refusing to write binary ciphertext to a terminal",
            hints=["use -a/--armor, or -o FILE, or redirect stdout"],
        )
    targets: list[Recipient] = [agelib.parse_recipient(r) for r in recipients]
    for path in recipient_files:
        targets.extend(agelib.parse_recipients_file(_read_key_file(path, "recipients")))
    if use_passphrase:
        secret = _passphrase(passphrase_file, confirm=True, input_path=input_path)
        targets = [agelib.ScryptRecipient(secret, work_factor)]
    with _input(input_path) as src, _output(output, private=False) as dst:
        agelib.encrypt_stream(targets, src, dst, armor=armor)


def decrypt_files(
    *,
    identity_files: Sequence[str] = (),
    passphrase_file: str | None = None,
    output: str | None = None,
    input_path: str | None = None,
) -> None:
    """``keycourier age decrypt``: INPUT (default stdin) to OUTPUT (default stdout)."""
    from keycourier import age as agelib

    identities: list[Identity] = []
    for path in identity_files:
        identities.extend(agelib.parse_identities_file(_read_key_file(path, "identity")))
    if passphrase_file is not None or not identity_files:
        secret = _passphrase(passphrase_file, confirm=False, input_path=input_path)
        identities.append(agelib.ScryptIdentity(secret))
    with _input(input_path) as src, _output(output, private=True) as dst:
        agelib.decrypt_stream(identities, src, dst)
