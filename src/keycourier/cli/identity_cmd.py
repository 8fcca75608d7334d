"""`keycourier identity`: create, show and export identities."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from keycourier.bundle import KeycourierIdentity, is_protected, read_public
from keycourier.bundle.identity import read_identity_file
from keycourier.cli.common import emit_json, get_passphrase, write_private
from keycourier.cli.identities import load_identity_for_cli
from keycourier.errors import UsageError

if TYPE_CHECKING:
    from keycourier.bundle import PublicIdentity


def _refuse_existing(path: str) -> None:
    if os.path.lexists(path):
        raise UsageError(f"{path} already exists; refusing to overwrite an identity")


@click.group()
def identity() -> None:
    """Create and show keycourier identities (age key + Ed25519 signing key).

    \b
    Example:
      keycourier identity new -o partner.kcid --passphrase-file pass.txt
      keycourier identity show partner.kcid
    """


@identity.command("new")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="File to create (0600)."
)
@click.option("--pq", is_flag=True, help="Use the post-quantum ML-KEM-768 + X25519 hybrid age key.")
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Read the protecting passphrase from FILE ('-' for stdin).",
)
@click.option(
    "--unprotected", is_flag=True, help="Store the keys without a passphrase (not recommended)."
)
@click.option(
    "--work-factor",
    type=click.IntRange(10, 22),
    default=18,
    show_default=True,
    help="scrypt work factor (log2 N) for the passphrase.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the public identity as JSON.")
def new(
    output: str,
    pq: bool,
    passphrase_file: str | None,
    unprotected: bool,
    work_factor: int,
    as_json: bool,
) -> None:
    """Create an identity file.

    \b
    Example:
      KEYCOURIER_PASSPHRASE=... keycourier identity new -o platform.kcid
    """

    _refuse_existing(output)
    if unprotected and passphrase_file:
        raise UsageError("--unprotected and --passphrase-file exclude each other")
    passphrase = (
        None
        if unprotected
        else get_passphrase(passphrase_file, confirm=True, what="new passphrase")
    )
    ident = KeycourierIdentity.generate(pq=pq)
    write_private(output, ident.to_file(passphrase, work_factor=work_factor))
    pub = ident.public()
    if as_json:
        emit_json(
            {
                "recipient": pub.recipient,
                "signing_key": pub.signing_key,
                "signing_fingerprint": pub.signing_fingerprint,
            }
        )
    else:
        click.echo(f"Public key: {pub.recipient}", err=True)
        click.echo(f"Signing key: {pub.signing_key}", err=True)
        click.echo(f"Signing fingerprint: {pub.signing_fingerprint}", err=True)


@identity.command("show")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--verify", is_flag=True, help="Decrypt the file and check that the header matches its keys."
)
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Passphrase for --verify.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(file: str, verify: bool, passphrase_file: str | None, as_json: bool) -> None:
    """Print an identity's public recipient and signing key fingerprint.

    \b
    Example:
      keycourier identity show platform.kcid
    """
    pub, verified = _public_of(file, passphrase_file, verify=verify)
    if as_json:
        emit_json(
            {
                "recipient": pub.recipient,
                "signing_key": pub.signing_key,
                "signing_fingerprint": pub.signing_fingerprint,
                "created_at": pub.created_at,
                "verified": verify,
            }
        )
        if verified:
            click.echo(f"keycourier: {verified}", err=True)
        return
    click.echo(f"recipient:           {pub.recipient}")
    click.echo(f"signing key:         {pub.signing_key}")
    click.echo(f"signing fingerprint: {pub.signing_fingerprint}")
    click.echo(f"created:             {pub.created_at}")
    if verified:
        click.echo(verified)
    else:
        click.echo("(header only; use --verify to check it against the keys)", err=True)


def _public_of(
    file: str, passphrase_file: str | None, *, verify: bool
) -> tuple[PublicIdentity, str]:
    """The identity's public half and, with ``verify``, what was verified: its header
    read alone, or the whole identity opened (asking for the passphrase if it has one)
    and its keys checked against the header."""

    if not verify:
        return read_public(read_identity_file(file)), ""
    protected = is_protected(read_identity_file(file))
    pub = load_identity_for_cli(file, passphrase_file).public()
    opened = "the passphrase opens the identity; " if protected else "no passphrase (unprotected); "
    return pub, (
        f"verified: {opened}its age key and signing key match the recipient, signing key "
        "and fingerprint in its header"
    )


@identity.command("export-age")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write the stock age identity here (0600).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Passphrase of the identity.",
)
@click.option("--reveal", is_flag=True, help="Allow printing the secret key to a terminal.")
def export_age(file: str, output: str | None, passphrase_file: str | None, reveal: bool) -> None:
    """Write the identity's age key as a stock AGE-SECRET-KEY-1... file.

    The stock `age` tool can then decrypt a bundle's payload
    (see `keycourier bundle extract-age`).

    \b
    Example:
      keycourier identity export-age platform.kcid -o platform.agekey
      keycourier bundle extract-age handover.kcb | age -d -i platform.agekey
    """
    ident = load_identity_for_cli(file, passphrase_file)
    data = ident.export_age().encode("ascii")
    if output:
        _refuse_existing(output)
        write_private(output, data)
        return
    if sys.stdout.isatty() and not reveal:
        raise UsageError(
            "refusing to print a secret key to the terminal",
            hints=["use -o FILE, pipe the output, or pass --reveal"],
        )
    sys.stdout.buffer.write(data)
