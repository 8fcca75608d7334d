"""`keycourier seal`, `inspect`, `open` and `bundle extract-age`."""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

import click

from keycourier import age, receipt
from keycourier import bundle as _bundle
from keycourier.bundle.identity import read_identity_file, read_public
from keycourier.cli.bundle_ops import read_bundle, show_inspection
from keycourier.cli.common import (
    emit_json,
    identity_option,
    info,
    receiver_trust_option,
    trust_option,
    trusted_senders,
    warn,
    write_output,
)
from keycourier.cli.handover_args import (
    denied_lookup,
    facts_from_options,
    handover_options,
    render_report,
)
from keycourier.cli.identities import load_identity_for_cli
from keycourier.cli.main import settings_from
from keycourier.cli.receipt_files import (
    check_receipt_target,
    read_receipt,
    receipt_option,
    save_receipt,
    write_receipt,
)
from keycourier.cli.record import recording, report_outcome, write_release
from keycourier.errors import UsageError
from keycourier.handover import opening, sealing
from keycourier.policy import load_policy

if TYPE_CHECKING:
    from keycourier.bundle import CheckedBundle, KeycourierIdentity
    from keycourier.config import Settings
    from keycourier.ledger.interface import Event, RecordOutcome


def _recipients(recipient: tuple[str, ...], recipients_file: tuple[str, ...]) -> list[str]:

    out = [age.parse_recipient(r).to_string() for r in recipient]
    for path in recipients_file:
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read(1024 * 1024)
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read recipients file {path}: {exc}") from None
        out.extend(r.to_string() for r in age.parse_recipients_file(text))
    if not out:
        raise UsageError("at least one recipient is required (-r age1... or -R FILE)")
    return out


# -- seal ---------------------------------------------------------------------------


def release_options(f: Any) -> Any:  # noqa: ANN401 - click decorator
    """Where a sealed bundle goes: -o, --require-vault, --json (seal and rotate)."""
    for option in reversed(
        [
            click.option(
                "-o",
                "--output",
                type=click.Path(dir_okay=False, allow_dash=True),
                help="Bundle file to write (default stdout).",
            ),
            click.option(
                "--require-vault",
                is_flag=True,
                help="Fail (exit 6) and release nothing unless the event reaches Vault.",
            ),
            click.option(
                "--json", "as_json", is_flag=True, help="Print a JSON summary (needs -o FILE)."
            ),
        ]
    ):
        f = option(f)
    return f


@click.command()
@handover_options
@identity_option
@click.option("-r", "--recipient", multiple=True, help="An age recipient (age1... or age1pq1...).")
@click.option(
    "-R",
    "--recipients-file",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="A file of age recipients.",
)
@click.option("--partner", help="Your organization's name, shown in the manifest.")
@release_options
@click.option(
    "--supersedes",
    default=None,
    metavar="BUNDLE_ID",
    help="The bundle these credentials replace (a rotation, docs/rotation.md).",
)
@click.pass_context
def seal(
    ctx: click.Context,
    /,
    identity_path: str,
    passphrase_file: str | None,
    recipient: tuple[str, ...],
    recipients_file: tuple[str, ...],
    partner: str | None,
    output: str | None,
    require_vault: bool,
    supersedes: str | None,
    as_json: bool,
    **options: object,
) -> None:
    """Check credentials against the handover policy and seal them into a bundle.

    The client secret is read from --client-secret-file (a file, or '-' for
    stdin); it is never accepted on the command line.

    \b
    Example:
      keycourier seal --platform quickbooks --client-id ABc...Z \\
        --client-secret-file secret.txt --environment production \\
        --attested-by "Jane Doe, CTO" \\
        --identity partner.kcid -r age1... --partner "Acme" -o handover.kcb
    """

    if as_json and (output is None or output == "-"):
        raise UsageError("--json prints a summary on stdout, so the bundle needs -o FILE")
    sealing.check_bundle_id(supersedes, what="--supersedes")
    policy_opt = options.pop("policy", None)
    settings = settings_from(ctx, policy_path=str(policy_opt) if policy_opt else None)
    request = _seal_request(
        settings,
        options,
        identity_path=identity_path,
        passphrase_file=passphrase_file,
        recipients=_recipients(recipient, recipients_file),
        partner=partner,
        supersedes=supersedes,
    )
    sealed = _run_seal(settings, request, require_vault=require_vault)
    _release_sealed(settings, sealed, output, as_json=as_json)


def _seal_request(
    settings: Settings,
    options: dict[str, object],
    *,
    identity_path: str,
    passphrase_file: str | None,
    recipients: list[str],
    partner: str | None,
    supersedes: str | None,
) -> sealing.SealRequest:
    """The request `seal` options describe: the identity (its passphrase asked for only
    when the secret is not on stdin), the facts and secret read, the policy in force."""

    probe = bool(options.pop("probe", False))
    secret_on_stdin = options.get("client_secret_file") == "-"
    sender = load_identity_for_cli(identity_path, passphrase_file, stdin_busy=secret_on_stdin)
    return sealing.SealRequest(
        facts=facts_from_options(options),
        sender=sender,
        recipients=recipients,
        policy=load_policy(settings.policy_path),
        partner=partner,
        supersedes=supersedes,
        probe=probe,
        denied=denied_lookup(settings),
    )


def _run_seal(
    settings: Settings, request: sealing.SealRequest, *, require_vault: bool
) -> sealing.Sealed:
    """``sealing.seal`` on this command's ledger; a rejection's report goes to stderr."""

    try:
        with recording(settings, require_vault=require_vault) as recorder:
            sealed = sealing.seal(request, recorder=recorder)
    except sealing.RejectedError as exc:
        report_outcome(exc.event, exc.outcome)
        with contextlib.redirect_stdout(sys.stderr):
            render_report(exc.report, as_json=False)
        raise
    for message in sealed.warnings:
        warn(message)
    report_outcome(sealed.event, sealed.outcome)
    return sealed


def _release_sealed(
    settings: Settings, sealed: sealing.Sealed, output: str | None, *, as_json: bool
) -> None:
    """Hand out a sealed bundle (stdout, or -o FILE with the release rules) and say so."""
    m = sealed.manifest
    if output is None or output == "-":
        write_output(None, sealed.text, private=True)
    else:
        write_release(settings, sealed.event, sealed.outcome, output, sealed.text)
    if as_json:
        emit_json(sealed.summary())
    else:
        info(f"sealed bundle {m.bundle_id} for {len(m.recipients)} recipient(s)")
        info(f"credential fingerprint {m.fingerprint}, expires {m.expires_at:%Y-%m-%d %H:%M} UTC")


# -- rotate ----------------------------------------------------------------------------


@click.command()
@click.argument("old_bundle", metavar="OLD_BUNDLE", type=click.Path(dir_okay=False))
@click.option("--client-id", required=True, help="The app's client ID (not secret).")
@click.option(
    "--client-secret-file",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="File holding the NEW client secret ('-' for stdin).",
)
@identity_option
@click.option("-r", "--recipient", multiple=True, help="Recipients (default: the old bundle's).")
@click.option(
    "-R",
    "--recipients-file",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="A file of age recipients (default: the old bundle's).",
)
@click.option("--environment", default=None, help="Declared environment (default: the old one).")
@click.option("--attested-by", default=None, help="Who attests that these are production keys.")
@click.option("--attestation", default=None, help="The attested statement.")
@click.option("--expires-in", default=None, help="Bundle lifetime, e.g. 7d or 36h.")
@click.option(
    "--policy",
    type=click.Path(dir_okay=False),
    default=None,
    help="Policy file (default: the shipped policy; env KEYCOURIER_POLICY).",
)
@click.option(
    "--receipt",
    "receipt_path",
    type=click.Path(dir_okay=False),
    help="The receiver's receipt of OLD_BUNDLE: checked first (needs --trust).",
)
@receiver_trust_option
@release_options
@click.pass_context
def rotate(
    ctx: click.Context,
    /,
    old_bundle: str,
    receipt_path: str | None,
    trust: tuple[str, ...],
    trust_file: str | None,
    recipient: tuple[str, ...],
    recipients_file: tuple[str, ...],
    environment: str | None,
    **options: object,
) -> None:
    """Seal new credentials that replace a bundle you sent (docs/rotation.md).

    Reads the platform, partner, environment and recipients from OLD_BUNDLE's
    public manifest (no key needed), and seals the new client secret with
    --supersedes set to OLD_BUNDLE's ID, under the same policy checks as
    'seal'. OLD_BUNDLE must be signed by the identity that rotates (exit 7
    otherwise). With --receipt and --trust, the receiver's receipt of
    OLD_BUNDLE is verified first, so you rotate what the receiver stored.

    \b
    Example:
      keycourier rotate handover.kcb --client-id ABxxxx... \\
        --client-secret-file new-secret.txt --attested-by "Jane Doe, CTO" \\
        --identity partner.kcid -o rotation.kcb
    """

    old_text = read_bundle(old_bundle)
    me = _signing_fingerprint(str(options["identity_path"]))
    m = sealing.rotation_source(old_text, sender=me, name=old_bundle)
    if receipt_path:
        _show_receiver(receipt_path, old_text, trusted_senders(trust, trust_file), m.bundle_id)
    chosen = recipient if recipient or recipients_file else m.recipients
    ctx.invoke(
        seal,
        platform=m.platform,
        partner=m.partner,
        environment=environment or m.environment,
        recipient=tuple(chosen),
        recipients_file=recipients_file,
        supersedes=m.bundle_id,
        **options,
    )


def _signing_fingerprint(identity_path: str) -> str:
    """The identity's signing fingerprint from its public header, read without its
    passphrase ('seal' loads the identity later and refuses a header that does not match
    its keys)."""

    return read_public(read_identity_file(identity_path)).signing_fingerprint


def _show_receiver(path: str, old_text: bytes, trusted: list[str], bundle_id: str) -> None:
    """Verify the receiver's receipt of the old bundle (exit 4 when it does not) and say
    what the receiver holds."""

    got = receipt.verify(read_receipt(path), old_text, trusted)
    stored = got.receipt.vault
    where = f" (Vault version {stored.kv_version})" if stored else ""
    info(f"the receiver {got.receipt.receiver} holds bundle {bundle_id}{where}")


# -- inspect -------------------------------------------------------------------------


@click.command()
@click.argument("bundle_file", metavar="BUNDLE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(bundle_file: str, as_json: bool) -> None:
    """Show a bundle's public manifest and whether its signature is valid.

    Needs no key and shows no secret. Exit 4, with what is wrong, when the
    input is not a bundle, a block is damaged (the line is named), the
    manifest is not readable, the payload has recipients the manifest does
    not show, or the signature or payload digest does not verify.

    \b
    Example:
      keycourier inspect handover.kcb
    """
    show_inspection(bundle_file, as_json=as_json)


# -- open ----------------------------------------------------------------------------


@click.command("open")
@click.argument("bundle_file", metavar="BUNDLE", type=click.Path(dir_okay=False, allow_dash=True))
@identity_option
@trust_option
@click.option(
    "--policy",
    type=click.Path(dir_okay=False, exists=True),
    help="Receiver's handover policy (env KEYCOURIER_POLICY).",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write the credentials here (0600)."
)
@click.option("--reveal", is_flag=True, help="Allow printing the credentials to a terminal.")
@click.option("--json", "as_json", is_flag=True, help="Output the credentials as JSON.")
@click.option(
    "--allow-reopen",
    is_flag=True,
    help="Open a bundle that was already opened (recorded as a reopen, see audit show).",
)
@click.option(
    "--require-vault",
    is_flag=True,
    help="Fail (exit 6) and release nothing unless the event reaches Vault.",
)
@click.option(
    "--allow-superseded",
    is_flag=True,
    help="Open a bundle that a later one replaced (docs/rotation.md).",
)
@receipt_option
@click.pass_context
def open_bundle(
    ctx: click.Context,
    /,
    bundle_file: str,
    identity_path: str,
    passphrase_file: str | None,
    trust: tuple[str, ...],
    trust_file: str | None,
    policy: str | None,
    output: str | None,
    reveal: bool,
    as_json: bool,
    allow_reopen: bool,
    require_vault: bool,
    allow_superseded: bool,
    receipt_path: str | None,
) -> None:
    """Verify a bundle from a pinned sender, decrypt it and release the credentials.

    Nothing is written or printed unless every check passed: signature by a
    trusted sender, payload digest, decryption, inner manifest binding,
    expiry, the receiver's policy, and the ledger (not revoked, not opened
    before). Credentials go to -o (0600) or to stdout when it is not a
    terminal (or with --reveal). With --receipt FILE, a signed receipt for
    the sender is written there (docs/receipts.md).

    \b
    Example:
      keycourier open handover.kcb --identity platform.kcid \\
        --trust kc1:0123... -o creds.json --json
    """
    if output is None and sys.stdout.isatty() and not reveal:
        raise UsageError(
            "refusing to print credentials to the terminal",
            hints=["use -o FILE, pipe the output, or pass --reveal"],
        )
    settings = settings_from(ctx, policy_path=policy)
    check_receipt_target(receipt_path)
    text = read_bundle(bundle_file)
    ident = load_identity_for_cli(identity_path, passphrase_file, stdin_busy=bundle_file == "-")
    checked, event, outcome = open_for_cli(
        settings,
        text,
        ident,
        trusted_senders(trust, trust_file),
        allow_reopen=allow_reopen,
        require_vault=require_vault,
        allow_superseded=allow_superseded,
    )
    data = _credentials_text(checked, as_json=as_json)
    if output:
        write_release(settings, event, outcome, output, data.encode("utf-8"))
        info(f"credentials of bundle {checked.manifest.bundle_id} written to {output}")
    else:
        write_output(None, data.encode("utf-8"), private=True)
    if receipt_path:
        made = write_receipt(
            settings,
            ident,
            bundle_text=text,
            manifest=checked.manifest,
            event=event,
            seq=outcome.seq,
        )
        if made is not None:
            save_receipt(receipt_path, made)


def _credentials_text(checked: CheckedBundle, *, as_json: bool) -> str:
    """What `open` releases: JSON with the bundle's public facts, or key=value lines."""
    c = checked.credentials
    m = checked.manifest
    if not as_json:
        return (
            f"platform={c.platform}\nclient_id={c.client_id}\n"
            f"client_secret={c.client_secret.reveal()}\n"
        )
    import json

    data = {
        "bundle_id": m.bundle_id,
        "platform": c.platform,
        "client_id": c.client_id,
        "client_secret": c.client_secret.reveal(),
        "fingerprint": m.fingerprint,
        "partner": m.partner,
        "sealed_by": m.sender_fingerprint,
        "sealed_at": m.to_dict()["created_at"],
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def open_for_cli(
    settings: Settings,
    text: bytes,
    ident: KeycourierIdentity,
    trusted: list[str],
    *,
    allow_reopen: bool,
    require_vault: bool,
    allow_superseded: bool = False,
) -> tuple[CheckedBundle, Event, RecordOutcome]:
    """``opening.open_bundle`` under this command's settings (shared by open and ingest):
    the opened bundle and the `opened` event as recorded, with the outcome reported."""

    request = opening.OpenRequest(
        text=text,
        identity=ident,
        trusted=trusted,
        policy=load_policy(settings.policy_path),
        allow_reopen=allow_reopen,
        allow_superseded=allow_superseded,
        denied=denied_lookup(settings),
    )
    with recording(settings, require_vault=require_vault) as recorder:
        opened = opening.open_bundle(request, recorder=recorder, warn=warn)
    report_outcome(opened.event, opened.outcome)
    return opened.bundle, opened.event, opened.outcome


# -- bundle extract-age -------------------------------------------------------------


@click.group()
def bundle() -> None:
    """Low-level bundle tools.

    \b
    Example:
      keycourier bundle extract-age handover.kcb -o payload.age
    """


@bundle.command("extract-age")
@click.argument("bundle_file", metavar="BUNDLE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write the armored age file here."
)
def extract_age(bundle_file: str, output: str | None) -> None:
    """Write a bundle's age payload (armored) for a stock age tool.

    This skips the sender signature, expiry and policy checks: it is a
    recovery path, not the normal way to open a bundle.

    \b
    Example:
      keycourier identity export-age platform.kcid -o platform.agekey
      keycourier bundle extract-age handover.kcb | age -d -i platform.agekey
    """

    write_output(output, _bundle.extract_age(read_bundle(bundle_file)), private=False)
