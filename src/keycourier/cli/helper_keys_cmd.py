"""CLI for the token helper's client keys: ``helper client add|list|revoke``.

Apart from ``helper_cmd`` (``token``, ``exec``, ``serve``) so that a token command never
imports the client store.
"""

from __future__ import annotations

import click

from keycourier.cli.common import emit_json, info, write_private
from keycourier.cli.main import settings_from
from keycourier.helper.clients import ClientStore, as_mapping, default_store_path


@click.group()
def helper() -> None:
    """Manage the token helper's client keys.

    \b
    Example:
      keycourier helper client add ci-runner --profile ci --key-file ci.key
    """


@helper.group()
def client() -> None:
    """Add, list and revoke client keys (stored hashed, 0600, under the XDG data dir).

    \b
    Example:
      keycourier helper client list --json
    """


@client.command("add")
@click.argument("name")
@click.option(
    "--profile",
    "-p",
    "profiles",
    multiple=True,
    required=True,
    help="Profile the client may use ('*': all).",
)
@click.option(
    "--rate",
    type=float,
    default=50.0,
    show_default=True,
    help="Requests per second allowed (burst 2x).",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the key to this file (0600).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def client_add(
    ctx: click.Context,
    name: str,
    profiles: tuple[str, ...],
    rate: float,
    key_file: str | None,
    as_json: bool,
) -> None:
    """Create a client key for NAME; it is shown once and stored only as a hash.

    \b
    Example:
      keycourier helper client add ci-runner --profile ci --key-file ci.key
    """

    settings = settings_from(ctx)
    record, key = ClientStore(default_store_path(settings)).add(name, profiles, rate=rate)
    if key_file is not None:
        write_private(key_file, (key.reveal() + "\n").encode())
        info(f"client {record.name} ({record.id}) added; key written to {key_file} (0600)")
        if as_json:
            emit_json(record.public())
        return
    if as_json:
        emit_json({**record.public(), "key": key.reveal()})
    else:
        click.echo(key.reveal())
    info(f"client {record.name} ({record.id}) added; the key above is shown only once")


@client.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def client_list(ctx: click.Context, as_json: bool) -> None:
    """List client keys (names, IDs, scopes, state; never the keys).

    \b
    Example:
      keycourier helper client list
    """

    clients = ClientStore(default_store_path(settings_from(ctx))).clients()
    if as_json:
        emit_json(as_mapping(clients))
        return
    for c in clients:
        state = f"revoked {c.revoked_at}" if c.revoked_at else "active"
        click.echo(f"{c.name}\t{c.id}\t{','.join(c.profiles)}\t{c.rate:g}/s\t{state}")


@client.command("revoke")
@click.argument("name")
@click.pass_context
def client_revoke(ctx: click.Context, name: str) -> None:
    """Revoke the client NAME (or ID); a running helper refuses it within a second.

    \b
    Example:
      keycourier helper client revoke ci-runner
    """

    record = ClientStore(default_store_path(settings_from(ctx))).revoke(name)
    info(f"client {record.name} ({record.id}) revoked at {record.revoked_at}")
