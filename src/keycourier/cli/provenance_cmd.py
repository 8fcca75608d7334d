"""Provenance commands: ingest, revoke, sync, audit (verify/show/export), doctor."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from keycourier.bundle.model import format_time
from keycourier.cli import timeline_view
from keycourier.cli.bundle_ops import read_bundle
from keycourier.cli.common import (
    default_actor,
    emit_json,
    identity_option,
    info,
    trust_option,
    trusted_senders,
    warn,
)
from keycourier.cli.handover_args import denied_lookup
from keycourier.cli.identities import load_identity_for_cli
from keycourier.cli.main import settings_from
from keycourier.cli.provenance_ops import verify_ledger
from keycourier.cli.receipt_files import (
    check_receipt_target,
    receipt_option,
    save_receipt,
    store_receipt,
    write_receipt,
)
from keycourier.cli.record import recording, report_outcome
from keycourier.errors import (
    AuthError,
    ConfigError,
    Error,
    ExitCode,
    IntegrityError,
    UnavailableError,
    UsageError,
)
from keycourier.handover import ingesting, revoking
from keycourier.ledger.checkpoints import export_checkpoint, ledger_verifier_key, read_checkpoint
from keycourier.ledger.export import export, timeline
from keycourier.ledger.recorder import open_recorder
from keycourier.ledger.state import stale, unconfirmed
from keycourier.policy import load_policy
from keycourier.policy.model import parse_duration
from keycourier.receipt import IssuedVault, Replaced
from keycourier.redact import printable
from keycourier.vault import doctor as vault_doctor
from keycourier.vault.client import connect, ping
from keycourier.vault.kv import VaultKv
from keycourier.vault.paths import check_ingest_path

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.handover.ingesting import Ingested, IngestRequest
    from keycourier.vault.kv import VaultKv

MAX_SHOW_KEY_CHARS = 512


def ledger_option(f: Any) -> Any:  # noqa: ANN401 - click decorator
    return click.option(
        "--ledger",
        "ledger_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Ledger file (env KEYCOURIER_LEDGER; default ~/.local/share/keycourier/ledger.db).",
    )(f)


def _fail(code: ExitCode, message: str) -> None:
    """Raise the keycourier error that carries ``code`` (the one place exits are rendered)."""
    if code == ExitCode.OK:
        return
    classes: dict[ExitCode, type[Error]] = {
        ExitCode.CONFIG: ConfigError,
        ExitCode.INTEGRITY: IntegrityError,
        ExitCode.AUTH: AuthError,
        ExitCode.UNAVAILABLE: UnavailableError,
    }
    raise classes.get(code, Error)(message)


# -- ingest ------------------------------------------------------------------------------


@click.command()
@click.argument("bundle_file", metavar="BUNDLE", type=click.Path(dir_okay=False, allow_dash=True))
@identity_option
@trust_option
@click.option(
    "--vault-path",
    required=True,
    help="KV v2 path for the credentials, under handed-over/ (e.g. handed-over/acme/quickbooks).",
)
@click.option(
    "--policy", type=click.Path(dir_okay=False, exists=True), help="Receiver's handover policy."
)
@click.option(
    "--allow-reopen",
    is_flag=True,
    help="Ingest a bundle that was already opened (recorded as a reopen, see audit show).",
)
@click.option(
    "--require-vault", is_flag=True, help="Fail (exit 6) unless the provenance events reach Vault."
)
@click.option(
    "--allow-superseded",
    is_flag=True,
    help="Ingest a bundle that a later one replaced (docs/rotation.md).",
)
@click.option(
    "--allow-overwrite",
    is_flag=True,
    help="Write over credentials at --vault-path that another sender, platform or partner "
    "stored, or that keycourier did not store (refused by default; docs/rotation.md).",
)
@receipt_option
@click.option(
    "--receipt-shows-path",
    is_flag=True,
    help="Name the Vault path in clear in the receipt (default: a keyed digest of it).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@ledger_option
@click.pass_context
def ingest(
    ctx: click.Context,
    bundle_file: str,
    identity_path: str,
    passphrase_file: str | None,
    trust: tuple[str, ...],
    trust_file: str | None,
    vault_path: str,
    policy: str | None,
    allow_reopen: bool,
    require_vault: bool,
    allow_superseded: bool,
    allow_overwrite: bool,
    receipt_path: str | None,
    receipt_shows_path: bool,
    as_json: bool,
    ledger_path: str | None,
) -> None:
    """Open a bundle and store its credentials in Vault KV v2 with provenance metadata.

    Verifies and re-checks the bundle exactly like 'open' (and records
    'opened'), writes the credentials to --vault-path with custom_metadata
    (bundle ID, fingerprint, sealed by, sealed at), then records 'ingested'
    with the KV version written. A signed receipt for the sender is stored
    in the path's metadata and, with --receipt FILE, written there
    (docs/receipts.md). Nothing is printed but the summary.

    \b
    Example:
      keycourier ingest handover.kcb --identity platform.kcid \\
        --trust kc1:0123... --vault-path handed-over/acme/quickbooks \\
        --receipt receipt.kcr
    """

    settings = settings_from(ctx, policy_path=policy, ledger_path=ledger_path)
    _check_ingest_target(settings, vault_path, receipt_path)
    trusted = trusted_senders(trust, trust_file)
    store = _connect_store(settings, vault_path)
    request = _ingest_request(
        settings,
        bundle_file,
        identity_path,
        passphrase_file,
        trusted,
        vault_path,
        allow_reopen=allow_reopen,
        allow_superseded=allow_superseded,
        allow_overwrite=allow_overwrite,
    )
    with recording(settings, require_vault=require_vault) as recorder:
        done = ingesting.ingest(request, recorder=recorder, store=store, warn=warn)
    _report_events(done)
    _issue_receipt(settings, store, done, request, receipt_path, shows_path=receipt_shows_path)
    _render_ingest(done, as_json=as_json)


def _check_ingest_target(settings: Settings, vault_path: str, receipt_path: str | None) -> None:
    """Refuse, before anything else, an ingest with no Vault, a path outside handed-over/
    or a receipt file that cannot be written."""
    if not settings.vault.addr:
        raise ConfigError(
            "ingest writes to Vault, but no Vault is configured", hints=["set VAULT_ADDR"]
        )
    check_ingest_path(vault_path)
    check_receipt_target(receipt_path)


def _connect_store(settings: Settings, vault_path: str) -> VaultKv:
    """The KV mount, reachable (exit 5/6 otherwise) and able to read ``vault_path``'s
    versions (for check-and-set), before anything is opened or recorded."""

    client = connect(settings)
    ping(client)
    store = VaultKv(client, settings.vault.mount)
    store.read_metadata(vault_path)
    return store


def _ingest_request(
    settings: Settings,
    bundle_file: str,
    identity_path: str,
    passphrase_file: str | None,
    trusted: list[str],
    vault_path: str,
    *,
    allow_reopen: bool,
    allow_superseded: bool,
    allow_overwrite: bool,
) -> IngestRequest:

    text = read_bundle(bundle_file)
    ident = load_identity_for_cli(identity_path, passphrase_file, stdin_busy=bundle_file == "-")
    return ingesting.IngestRequest(
        text=text,
        identity=ident,
        trusted=trusted,
        policy=load_policy(settings.policy_path),
        vault_path=vault_path,
        allow_reopen=allow_reopen,
        allow_superseded=allow_superseded,
        allow_overwrite=allow_overwrite,
        denied=denied_lookup(settings),
    )


def _report_events(done: Ingested) -> None:
    """Where each event of an ingest went."""

    for event, outcome in (
        (done.opened.event, done.opened.outcome),
        (done.event, done.outcome),
        *([done.superseded] if done.superseded else []),
    ):
        report_outcome(event, outcome)


def _render_ingest(done: Ingested, *, as_json: bool) -> None:
    """The summary: JSON on stdout, or a line on stderr."""
    if as_json:
        emit_json(
            {
                "bundle_id": done.event.bundle_id,
                "fingerprint": done.event.fingerprint,
                "vault_path": done.vault_path,
                "kv_version": done.kv_version,
                "ledger_seq": done.outcome.seq,
                "vault_status": str(done.outcome.vault_status),
            }
        )
    else:
        info(
            f"credentials of bundle {done.event.bundle_id} stored at {done.vault_path}"
            f" (version {done.kv_version})"
        )


def _issue_receipt(
    settings: Settings,
    store: VaultKv,
    done: Ingested,
    request: IngestRequest,
    receipt_path: str | None,
    *,
    shows_path: bool,
) -> None:
    """Sign the receipt of an ingest, keep it in the path's metadata and, when asked, in
    ``receipt_path`` (docs/receipts.md)."""

    rotation = done.claim.rotation
    receipt_text = write_receipt(
        settings,
        request.identity,
        bundle_text=request.text,
        manifest=done.opened.bundle.manifest,
        event=done.event,
        seq=done.outcome.seq,
        proved_seq=done.outcome.seq if shows_path else done.opened.outcome.seq,
        vault=IssuedVault(
            done.vault_path,
            done.kv_version,
            show_path=shows_path,
            supersedes=(
                None
                if rotation is None
                else Replaced(rotation.bundle_id, rotation.replaced_kv_version)
            ),
        ),
    )
    if receipt_text is not None:
        store_receipt(
            store.client, store.mount, request.vault_path, dict(done.provenance), receipt_text
        )
        if receipt_path:
            save_receipt(receipt_path, receipt_text)


# -- revoke ------------------------------------------------------------------------------


@click.command()
@click.argument("bundle_id")
@click.option("--reason", required=True, help="Why the bundle is revoked (recorded, not secret).")
@click.option("--actor", default=None, help="Who revokes (default: the identity, else user@host).")
@click.option(
    "--identity",
    "identity_path",
    type=click.Path(dir_okay=False, exists=True),
    help="Sign the revocation with this identity (the bundle's sender, so receivers honour it).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Passphrase of the identity file (else KEYCOURIER_PASSPHRASE or a prompt).",
)
@click.option("--require-vault", is_flag=True, help="Fail (exit 6) unless the event reaches Vault.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable outcome on stdout.")
@ledger_option
@click.pass_context
def revoke(
    ctx: click.Context,
    bundle_id: str,
    reason: str,
    actor: str | None,
    identity_path: str | None,
    passphrase_file: str | None,
    require_vault: bool,
    as_json: bool,
    ledger_path: str | None,
) -> None:
    """Record that a bundle is revoked; open and ingest then refuse it.

    Other machines act on a revocation they find in Vault only when it is
    signed by the bundle's sender key (or a key they trust): sign it with
    --identity. Without it the revocation binds this ledger only.

    \b
    Example:
      keycourier revoke 01J9Z8... --reason "sent to the wrong address" \\
        --identity partner.kcid
    """

    revoking.check_revocation(bundle_id, reason)
    settings = settings_from(ctx, ledger_path=ledger_path)
    ident = None
    if identity_path:
        ident = load_identity_for_cli(identity_path, passphrase_file, stdin_busy=False)
    who = actor or (ident.public().signing_fingerprint if ident else default_actor())
    request = revoking.RevokeRequest(bundle_id, reason, who, ident)
    with recording(settings, require_vault=require_vault) as recorder:
        done = revoking.revoke(request, recorder=recorder)
    for message in done.warnings:
        warn(message)
    report_outcome(done.event, done.outcome)
    if as_json:
        emit_json(
            {
                "bundle_id": bundle_id,
                "seq": done.outcome.seq,
                "vault_status": str(done.outcome.vault_status),
            }
        )


# -- sync --------------------------------------------------------------------------------


@click.command()
@click.option(
    "--workers", type=click.IntRange(1, 32), default=8, show_default=True, help="Parallel records."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@ledger_option
@click.pass_context
def sync(ctx: click.Context, workers: int, as_json: bool, ledger_path: str | None) -> None:
    """Deliver pending ledger events to Vault, idempotently.

    An identical record already in Vault counts as delivered; a different
    one is an integrity alarm (exit 4) that names the bundle. Exit 6 when
    Vault is still unreachable (the events stay pending).

    \b
    Example:
      keycourier sync && keycourier audit verify --vault
    """

    settings = settings_from(ctx, ledger_path=ledger_path)
    if not settings.vault.addr:
        raise ConfigError("no Vault configured: nothing to sync to", hints=["set VAULT_ADDR"])
    with open_recorder(settings) as recorder:
        report = recorder.sync(workers=workers)
    if as_json:
        emit_json(
            {
                "attempted": report.attempted,
                "delivered": report.delivered,
                "already_present": report.already_present,
                "remaining": report.remaining,
                "conflicts": [
                    {"seq": c.seq, "bundle_id": c.bundle_id, "path": c.path}
                    for c in report.conflicts
                ],
                "unavailable": report.unavailable or None,
            }
        )
    else:
        info(
            f"delivered {report.delivered} of {report.attempted} pending event(s) to Vault"
            f" ({report.already_present} were already there); {report.remaining} still pending"
        )
    if report.conflicts:
        first = report.conflicts[0]
        raise IntegrityError(
            first.message,
            hints=[
                f"{len(report.conflicts)} conflicting record(s); the first is event #{first.seq}"
            ],
        )
    if report.unavailable:
        raise UnavailableError(
            f"Vault is unavailable: {report.unavailable};"
            f" {report.remaining} event(s) still pending",
            hints=["run 'keycourier sync' again when Vault is back"],
        )


# -- audit -------------------------------------------------------------------------------


@click.group()
def audit() -> None:
    """Verify, show and export the provenance ledger and its checkpoints.

    \b
    Example:
      keycourier audit verify --vault
      keycourier audit checkpoint -o ledger.checkpoint
      keycourier audit show 01J9Z8...
      keycourier audit export --format csv --since 2026-01-01 > ledger.csv
    """


@audit.command("verify")
@click.option("--vault", "with_vault", is_flag=True, help="Also cross-check every record in Vault.")
@click.option(
    "--since",
    "since",
    type=click.Path(dir_okay=False),
    default=None,
    help="A checkpoint exported earlier with 'audit checkpoint': the ledger must still hold it.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@ledger_option
@click.pass_context
def audit_verify(
    ctx: click.Context, with_vault: bool, since: str | None, as_json: bool, ledger_path: str | None
) -> None:
    """Check every hash link and checkpoint signature (and Vault with --vault); exit 4 on a break.

    A ledger whose checkpoint key file is missing or is not its own, or whose
    last checkpoint is more than the checkpoint interval behind the head, is
    broken too. With --since, the ledger must still hold the events a
    checkpoint exported earlier signed, with the same key: a rollback to an
    older copy, a truncation or a rewrite after it is exit 4.

    \b
    Example:
      keycourier audit verify --vault --json
      keycourier audit verify --since ledger-checkpoint.txt
    """
    verify_ledger(
        settings_from(ctx, ledger_path=ledger_path),
        with_vault=with_vault,
        as_json=as_json,
        since=since,
    )


@audit.command("checkpoint")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of stdout."
)
@ledger_option
@click.pass_context
def audit_checkpoint(ctx: click.Context, output: str | None, ledger_path: str | None) -> None:
    """Export the latest signed checkpoint (signing the head first if it is unsigned).

    The checkpoint is a short signed text (ledger ID, number of events, head
    hash, Ed25519 signature). Keep it where the ledger's users cannot write;
    'audit verify --since FILE' later proves that the ledger still holds those
    events with the same key. The ledger is verified first (exit 4 if broken).

    \b
    Example:
      keycourier audit checkpoint -o ledger-2026-12-03.checkpoint
    """

    settings = settings_from(ctx, ledger_path=ledger_path)
    if not settings.ledger_path.exists():
        raise ConfigError(f"no ledger at {settings.ledger_path}")
    with open_recorder(settings) as recorder:
        exported = export_checkpoint(recorder)
    if output is None or output == "-":
        sys.stdout.write(exported.text)
        return
    try:
        with open(output, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(exported.text)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    info(
        f"checkpoint of ledger {exported.ledger_id} at {exported.events} event(s) written to "
        f"{output}"
    )


@audit.command("key")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@ledger_option
@click.pass_context
def audit_key(ctx: click.Context, as_json: bool, ledger_path: str | None) -> None:
    """Print the ledger's checkpoint verifier key; exit 4 if its key file is not its own.

    The line is '<name>+<key ID>+<base64 key>' (the C2SP signed-note form).
    Keep a copy elsewhere: a ledger rewritten with a new key shows a
    different line.

    \b
    Example:
      keycourier audit key
    """

    settings = settings_from(ctx, ledger_path=ledger_path)
    if not settings.ledger_path.exists():
        raise ConfigError(f"no ledger at {settings.ledger_path}")
    with open_recorder(settings) as recorder:
        vkey = ledger_verifier_key(recorder)
        ledger_id = recorder.ledger.ledger_id
        public = recorder.ledger.public_key
    if as_json:
        emit_json({"ledger_id": ledger_id, "public_key": public, "verifier_key": vkey})
    else:
        click.echo(vkey)


@audit.command("show")
@click.argument("key", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable timeline on stdout.")
@ledger_option
@click.pass_context
def audit_show(ctx: click.Context, key: str, as_json: bool, ledger_path: str | None) -> None:
    """Show the timeline of a bundle, a credential fingerprint, a connection or an entity.

    ID is a bundle ID, a credential fingerprint, a connection ID or an
    entity/organization ID. Each event gets a line with its time, what
    happened (an open made with --allow-reopen shows as 'reopened') and who
    did it, then where the record comes from (this ledger, or Vault: another
    ledger's record, or one missing from this ledger) and its details,
    wrapped to the terminal (at most 100 columns). Bundles are also looked
    up in Vault when one is configured. Exit 2 when nothing matches.

    \b
    Example:
      keycourier audit show 01J9Z8...
      keycourier audit show 01J9Z8... --json
    """

    if not key or len(key) > MAX_SHOW_KEY_CHARS:
        raise UsageError(f"ID must be 1-{MAX_SHOW_KEY_CHARS} characters")
    settings = settings_from(ctx, ledger_path=ledger_path)
    with open_recorder(settings) as recorder:
        rows = timeline(recorder, key)
    if not rows:
        raise UsageError(
            f"nothing recorded for {printable(key)}",
            hints=[
                "audit show takes a bundle ID, a credential fingerprint, a connection ID or an "
                "entity/organization ID recorded in this ledger (bundles: or in Vault)"
            ],
        )
    if as_json:
        emit_json(timeline_view.json_rows(rows))
        return
    for line in timeline_view.render(key, rows, timeline_view.terminal_width()):
        click.echo(line)


@audit.command("unconfirmed")
@click.option(
    "--older-than",
    default="2d",
    show_default=True,
    help="Only bundles sealed at least this long ago (14d, 36h, 90m, 0m).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list on stdout.")
@ledger_option
@click.pass_context
def audit_unconfirmed(
    ctx: click.Context, older_than: str, as_json: bool, ledger_path: str | None
) -> None:
    """List the bundles you sealed that no verified receipt confirms yet.

    For follow-up with the receiver: each row is a bundle sealed in this
    ledger with no 'receipt_verified' event (see 'keycourier receipt
    verify'); a revoked or expired bundle is listed as such. Exit 0 whether
    or not something is listed.

    \b
    Example:
      keycourier audit unconfirmed --older-than 2d
      keycourier audit unconfirmed --older-than 0m --json
    """

    age_limit = _age_limit(older_than)
    settings = settings_from(ctx, ledger_path=ledger_path)
    with open_recorder(settings) as recorder:
        rows = unconfirmed(recorder.ledger.iter_all(), now=datetime.now(UTC), older_than=age_limit)
    if as_json:
        emit_json([row.to_json() for row in rows])
        return
    if not rows:
        click.echo(f"every bundle sealed more than {older_than} ago has a verified receipt")
        return
    click.echo(f"{'SEALED':<20}  {'BUNDLE':<36}  {'STATE':<16}  PARTNER / PLATFORM")
    for row in rows:
        sealed = format_time(row.sealed_at)
        who = " / ".join(x for x in (row.partner, row.platform) if x) or "-"
        click.echo(f"{sealed:<20}  {row.bundle_id:<36}  {row.state:<16}  {who}")


@audit.command("stale")
@click.option(
    "--older-than",
    default="365d",
    show_default=True,
    help="Credentials whose current version is at least this old (365d, 90d, 36h, 0m).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list for a scheduler.")
@ledger_option
@click.pass_context
def audit_stale(
    ctx: click.Context, older_than: str, as_json: bool, ledger_path: str | None
) -> None:
    """List credentials due for rotation: the current version at each Vault path.

    For every Vault path this ledger ingested to, the latest 'ingested'
    event is the version in use; it is listed (by credential fingerprint and
    path) when it is at least --older-than old. Exit 0 whether or not
    something is listed. See docs/rotation.md for what to do next.

    \b
    Example:
      keycourier audit stale --older-than 365d
      keycourier audit stale --older-than 90d --json
    """

    age_limit = _age_limit(older_than)
    now = datetime.now(UTC)
    settings = settings_from(ctx, ledger_path=ledger_path)
    with open_recorder(settings) as recorder:
        rows = stale(recorder.ledger.iter_all(), now=now, older_than=age_limit)
    if as_json:
        emit_json([row.to_json(now) for row in rows])
        return
    if not rows:
        click.echo(f"no credentials in Vault are older than {older_than}")
        return
    click.echo(f"{'INGESTED':<20}  {'AGE':>5}  {'FINGERPRINT':<36}  VAULT PATH (VERSION)")
    for row in rows:
        when = format_time(row.ingested_at)
        age = f"{(now - row.ingested_at).days}d"
        click.echo(
            f"{when:<20}  {age:>5}  {row.fingerprint or '-':<36}  {row.vault_path}"
            f" (v{row.kv_version})"
        )


def _age_limit(value: str) -> timedelta:
    """--older-than: 14d, 36h, 90m, or 0 (everything)."""

    if value.strip() in {"0", "0d", "0h", "0m", "0s"}:
        return timedelta(0)
    try:
        return parse_duration(value, what="--older-than")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            "--since must be an ISO date, e.g. 2026-01-31 or 2026-01-31T12:00Z"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@audit.command("export")
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--since", default=None, help="Only events at or after this ISO date/time (UTC if no zone)."
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of stdout."
)
@ledger_option
@click.pass_context
def audit_export(
    ctx: click.Context, fmt: str, since: str | None, output: str | None, ledger_path: str | None
) -> None:
    """Export the ledger (no secrets are ever in it) as JSON lines or CSV.

    \b
    Example:
      keycourier audit export --format csv --since 2026-01-01 -o ledger.csv
    """

    settings = settings_from(ctx, ledger_path=ledger_path)
    start = _parse_since(since)
    with open_recorder(settings) as recorder:
        lines = export(recorder.ledger.iter_all(), fmt, since=start)
        if output is None or output == "-":
            for line in lines:
                sys.stdout.write(line)
        else:
            try:
                with open(output, "w", encoding="utf-8", newline="") as fh:
                    fh.writelines(lines)
            except OSError as exc:
                raise UsageError(f"cannot write {output}: {exc.strerror}") from None


def _ledger_must_exist(settings: Settings) -> None:
    if not settings.ledger_path.exists():
        raise ConfigError(f"no ledger at {settings.ledger_path}")


@audit.command("prove")
@click.argument("bundle_id", required=False, metavar="[BUNDLE_ID]")
@click.option("--seq", type=click.IntRange(min=1), default=None, help="Prove event N instead.")
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Prove against this exported checkpoint (default: the latest signed one).",
)
@click.option("--json", "as_json", is_flag=True, help="Rekor-shaped proofs on stdout.")
@ledger_option
@click.pass_context
def audit_prove(
    ctx: click.Context,
    bundle_id: str | None,
    seq: int | None,
    checkpoint_file: str | None,
    as_json: bool,
    ledger_path: str | None,
) -> None:
    """Prove that a bundle's events (or event N) are in the ledger's signed Merkle tree.

    Each proof is an RFC 6962 audit path against a signed checkpoint, checked
    before it is printed. --json prints one object per event: logIndex,
    treeSize, rootHash, hashes (leaf to root), checkpoint, body
    (docs/audit.md).

    \b
    Example:
      keycourier audit prove --seq 1 --json
    """

    settings = settings_from(ctx, ledger_path=ledger_path)
    _ledger_must_exist(settings)
    text = None if checkpoint_file is None else read_checkpoint(Path(checkpoint_file))
    with open_recorder(settings) as recorder:
        # lazy: the evidence pack's zipfile, only for these commands
        from keycourier.audit.evidence import proofs_for, proofs_json

        proofs = proofs_for(recorder, bundle_id=bundle_id, seq=seq, checkpoint=text)
    if as_json:
        sys.stdout.write(proofs_json(proofs))
        return
    for p in proofs:
        click.echo(
            f"event #{p.log_index + 1}: included in the tree of {p.tree_size} event(s) "
            f"(root {p.root_hash.hex()[:16]}...), audit path of {len(p.hashes)} hash(es), verified"
        )


@audit.command("pack")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="The pack to write."
)
@click.option("--bundle", "bundles", multiple=True, help="Only this bundle's events (repeatable).")
@click.option("--partner", default=None, help="Only the events of this partner's bundles.")
@click.option(
    "--since", default=None, help="Only events at or after this ISO date/time (UTC if no zone)."
)
@ledger_option
@click.pass_context
def audit_pack(
    ctx: click.Context,
    output: str,
    bundles: tuple[str, ...],
    partner: str | None,
    since: str | None,
    ledger_path: str | None,
) -> None:
    """Write an evidence pack: the chosen events, their proof and the signed checkpoint.

    The pack (a zip file) verifies offline with 'audit verify-pack' and the
    ledger's verifier key, without the ledger or Vault. It never holds a
    secret. With no filter it holds every event.

    \b
    Example:
      keycourier audit pack -o evidence.zip --since 2026-01-01
    """

    settings = settings_from(ctx, ledger_path=ledger_path)
    _ledger_must_exist(settings)
    start = _parse_since(since)
    with open_recorder(settings) as recorder:
        # lazy: the evidence pack's zipfile, only for these commands
        from keycourier.audit.evidence import build_pack

        data, count = build_pack(
            recorder, bundles=bundles, partner=partner, since=start, now=datetime.now(UTC)
        )
    try:
        with open(output, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    info(f"evidence pack of {count} event(s) written to {output}")


@audit.command("verify-pack")
@click.argument("pack_file", type=click.Path(dir_okay=False, exists=True), metavar="FILE")
@click.option(
    "--key",
    default=None,
    help="The ledger's verifier key, pinned out of band (else the pack's own copy).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
@click.pass_context
def audit_verify_pack(ctx: click.Context, pack_file: str, key: str | None, as_json: bool) -> None:
    """Verify an evidence pack offline: exit 0, or 4 naming the first thing that fails.

    \b
    Example:
      keycourier audit verify-pack evidence.zip --key "$(cat ledger.vkey)"
    """

    # lazy: the evidence pack's zipfile, only for these commands
    from keycourier.audit.evidence import verify_pack

    result = verify_pack(Path(pack_file), key=key)
    if as_json:
        emit_json(
            {
                "ok": True,
                "origin": result.origin,
                "tree_size": result.tree_size,
                "events": result.events,
                "policies": result.policies,
                "policies_missing": list(result.policies_missing),
                "key_pinned": result.key_pinned,
            }
        )
        return
    click.echo(f"log:          {result.origin} (tree of {result.tree_size} events)")
    click.echo(f"events:       {result.events} proved included")
    click.echo(f"policies:     {result.policies} verified by digest")
    for digest in result.policies_missing:
        warn(f"policy {digest} is named by an event but its text was not kept by the ledger")
    if not result.key_pinned:
        warn("no --key given: the pack's own key copy was used; pin the ledger's key out of band")
    click.echo("result:       OK")


@audit.command("report")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="The HTML file."
)
@click.option(
    "--since", default=None, help="Only events at or after this ISO date/time (UTC if no zone)."
)
@click.option("--partner", default=None, help="Only this partner's credentials.")
@click.option("--vault", "with_vault", is_flag=True, help="Also cross-check Vault first.")
@ledger_option
@click.pass_context
def audit_report(
    ctx: click.Context,
    output: str,
    since: str | None,
    partner: str | None,
    with_vault: bool,
    ledger_path: str | None,
) -> None:
    """Write a self-contained HTML report: verification, timelines, states, a chart.

    It loads nothing from the network and runs no script; print it to PDF for
    the file. The ledger is verified first and the result is stated at the
    top (the report is written either way; exit 4 if it did not verify).

    \b
    Example:
      keycourier audit report -o report.html
    """

    settings = settings_from(ctx, ledger_path=ledger_path)
    _ledger_must_exist(settings)
    start = _parse_since(since)
    with open_recorder(settings) as recorder:
        # lazy: jinja2, only for the report
        from keycourier.audit.report import report_html

        page, verification = report_html(
            recorder, vault=with_vault, since=start, partner=partner, now=datetime.now(UTC)
        )
    try:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(page)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    info(f"report written to {output}")
    if not verification.ok:
        raise IntegrityError(verification.summary)


# -- doctor ------------------------------------------------------------------------------


@click.command()
@click.option(
    "--role",
    type=click.Choice(["sender", "receiver", "auditor", "token-helper"]),
    default=None,
    help="Check that the token's policies allow what this role needs.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report on stdout.")
@click.pass_context
def doctor(ctx: click.Context, role: str | None, as_json: bool) -> None:
    """Check Vault: reachability, seal status, KV v2 mount, audit device, token capabilities.

    Exit 6 when Vault is unreachable or sealed, 5 when the token is refused
    or lacks a capability, 3 when the mount is not KV v2.

    \b
    Example:
      VAULT_ADDR=https://vault:8200 keycourier doctor --role receiver
    """
    settings = settings_from(ctx)
    report = vault_doctor.run(settings, vault_doctor.Role(role) if role else None)
    if as_json:
        emit_json(
            {
                "addr": report.addr,
                "exit_code": int(report.exit_code),
                "checks": [
                    {"name": c.name, "status": str(c.status), "detail": c.detail}
                    for c in report.checks
                ],
            }
        )
    else:
        for c in report.checks:
            click.echo(f"[{c.status.upper():<4}] {c.name:<14} {c.detail}")
    failed = [c for c in report.checks if c.status == vault_doctor.Status.FAIL]
    if failed:
        _fail(report.exit_code, f"doctor: {failed[0].name}: {failed[0].detail}")
