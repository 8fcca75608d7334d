"""`keycourier age`: standard age v1 files, shaped like the age tool.

Thin layer: parse options and call ``age_ops`` (the same functions the
console script's click-free fast path calls, see ``keycourier.cli.entry``).
"""

from __future__ import annotations

import sys
from datetime import datetime

import click

from keycourier import age as agelib
from keycourier.cli.age_ops import decrypt_files, encrypt_files
from keycourier.errors import UsageError
from keycourier.files import create_private


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

    ident: agelib.Identity = (
        agelib.HybridIdentity.generate() if pq else agelib.X25519Identity.generate()
    )
    public = ident.recipient().to_string()
    created = datetime.now().astimezone().replace(microsecond=0).isoformat()
    text = f"# created: {created}\n# public key: {public}\n{ident.to_string()}\n".encode()
    if output is None or output == "-":
        sys.stdout.buffer.write(text)
        sys.stdout.buffer.flush()
    else:
        try:
            create_private(output, text)
        except FileExistsError:
            raise UsageError(f"{output} already exists; refusing to overwrite a key file") from None
        except OSError as exc:
            raise UsageError(f"cannot create {output}: {exc.strerror}") from None
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
    encrypt_files(
        recipients=recipients,
        recipient_files=recipient_files,
        use_passphrase=use_passphrase,
        passphrase_file=passphrase_file,
        work_factor=work_factor,
        armor=armor,
        output=output,
        input_path=input_path,
    )


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
    decrypt_files(
        identity_files=identity_files,
        passphrase_file=passphrase_file,
        output=output,
        input_path=input_path,
    )
