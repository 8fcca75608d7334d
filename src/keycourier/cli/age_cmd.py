"""`keycourier age`: standard age v1 files, shaped like the age tool.

Thin layer: parse options, call ``keycourier.age``, render. Output files are
written to a temporary file and renamed only on success, so a failed
decryption never leaves partial plaintext behind.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

import click

from keycourier.errors import UsageError

if TYPE_CHECKING:
    from keycourier.age import Identity, Recipient
    from keycourier.redact import Secret

# Start-up matters for `keycourier age encrypt`: keep tempfile, pathlib, json
# and keycourier.cli.common (which imports them) out of the common path.

MAX_KEY_FILE_BYTES = 1024 * 1024


def _read_key_file(path: str, what: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise UsageError(f"the {what} file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the {what} file {path} is not UTF-8 text") from None


@contextlib.contextmanager
def _input(path: str | None) -> Iterator[BinaryIO]:
    if path is None or path == "-":
        yield sys.stdin.buffer
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
    """stdout, or a temp file next to ``path`` renamed into place only on success."""
    if path is None or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
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


@click.group(name="age")
def age() -> None:
    """Encrypt and decrypt standard age v1 files (interoperable with age and rage).

    \b
    Example:
      keycourier age keygen -o key.txt
      keycourier age encrypt -r age1... -o secret.age secret.txt
      keycourier age decrypt -i key.txt -o secret.txt secret.age
    """


@age.command()
@click.option("--pq", is_flag=True, help="Generate a post-quantum ML-KEM-768 + X25519 hybrid key.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Create FILE (mode 0600; never overwritten) instead of writing to stdout.",
)
def keygen(pq: bool, output: str | None) -> None:
    """Generate an age identity, like age-keygen.

    The public key is also printed on stderr.

    \b
    Example:
      keycourier age keygen -o key.txt
      keycourier age keygen --pq -o pq-key.txt
    """
    from keycourier import age as agelib

    ident: agelib.Identity = (
        agelib.HybridIdentity.generate() if pq else agelib.X25519Identity.generate()
    )
    public = ident.recipient().to_string()
    from datetime import datetime

    created = datetime.now().astimezone().replace(microsecond=0).isoformat()
    text = f"# created: {created}\n# public key: {public}\n{ident.to_string()}\n".encode()
    if output is None or output == "-":
        sys.stdout.buffer.write(text)
        sys.stdout.buffer.flush()
    else:
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise UsageError(f"{output} already exists; refusing to overwrite a key file") from None
        except OSError as exc:
            raise UsageError(f"cannot create {output}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(output)
            raise
    click.echo(f"Public key: {public}", err=True)


@age.command()
@click.option(
    "-r", "--recipient", "recipients", multiple=True, metavar="RECIPIENT",
    help="Encrypt to RECIPIENT (age1... or age1pq1...). Repeatable.",
)  # fmt: skip
@click.option(
    "-R", "--recipients-file", "recipient_files", multiple=True,
    type=click.Path(dir_okay=False), help="Encrypt to the recipients listed in FILE. Repeatable.",
)  # fmt: skip
@click.option(
    "-p", "--passphrase", "use_passphrase", is_flag=True,
    help="Encrypt with a passphrase (from --passphrase-file, KEYCOURIER_PASSPHRASE or a prompt).",
)  # fmt: skip
@click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, allow_dash=True),
    help="Read the passphrase from FILE ('-' for stdin); implies --passphrase.",
)  # fmt: skip
@click.option(
    "--work-factor", type=click.IntRange(1, 22), default=18, show_default=True,
    help="scrypt work factor (log2 N) for --passphrase.",
)  # fmt: skip
@click.option("-a", "--armor", is_flag=True, help="Write PEM-style ASCII armor.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
    help="Write to FILE (replaced only on success) instead of stdout.",
)  # fmt: skip
@click.argument("input_path", metavar="[INPUT]", required=False)
def encrypt(
    recipients: tuple[str, ...],
    recipient_files: tuple[str, ...],
    use_passphrase: bool,
    passphrase_file: str | None,
    work_factor: int,
    armor: bool,
    output: str | None,
    input_path: str | None,
) -> None:
    """Encrypt INPUT (default stdin) to an age file.

    \b
    Example:
      keycourier age encrypt -r age1... -a -o creds.age creds.json
      keycourier age encrypt -R team.txt < creds.json > creds.age
      keycourier age encrypt --passphrase-file pass.txt -o creds.age creds.json
    """
    from keycourier import age as agelib

    use_passphrase = use_passphrase or passphrase_file is not None
    if use_passphrase and (recipients or recipient_files):
        raise UsageError("a passphrase cannot be combined with -r/-R recipients")
    if not use_passphrase and not (recipients or recipient_files):
        raise UsageError(
            "no recipients given",
            hints=["use -r age1..., -R recipients.txt, or --passphrase"],
        )
    if (output is None or output == "-") and not armor and sys.stdout.isatty():
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


@age.command()
@click.option(
    "-i", "--identity", "identity_files", multiple=True, type=click.Path(dir_okay=False),
    help="Decrypt with the identities in FILE (AGE-SECRET-KEY-...). Repeatable.",
)  # fmt: skip
@click.option(
    "--passphrase-file", type=click.Path(dir_okay=False, allow_dash=True),
    help="Read the passphrase from FILE ('-' for stdin). Without -i, the passphrase comes "
    "from this, KEYCOURIER_PASSPHRASE or a prompt.",
)  # fmt: skip
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
    help="Write to FILE (0600, created only on success) instead of stdout.",
)  # fmt: skip
@click.argument("input_path", metavar="[INPUT]", required=False)
def decrypt(
    identity_files: tuple[str, ...],
    passphrase_file: str | None,
    output: str | None,
    input_path: str | None,
) -> None:
    """Decrypt an age file (binary or armored; detected automatically).

    Exits 0 only when the whole file decrypted and verified; 4 on any
    integrity failure (wrong key, tampering, truncation).

    \b
    Example:
      keycourier age decrypt -i key.txt -o creds.json creds.age
      keycourier age decrypt --passphrase-file pass.txt creds.age > creds.json
    """
    from keycourier import age as agelib

    identities: list[Identity] = []
    for path in identity_files:
        identities.extend(agelib.parse_identities_file(_read_key_file(path, "identity")))
    if passphrase_file is not None or not identity_files:
        secret = _passphrase(passphrase_file, confirm=False, input_path=input_path)
        identities.append(agelib.ScryptIdentity(secret))
    with _input(input_path) as src, _output(output, private=True) as dst:
        agelib.decrypt_stream(identities, src, dst)
