"""`keycourier seal`, `inspect`, `open` and `bundle extract-age`."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from keycourier.cli.bundle_ops import read_bundle as read_bundle
from keycourier.cli.bundle_ops import show_inspection
from keycourier.cli.common import (
    emit_json,
    identity_option,
    info,
    receiver_trust_option,
    trust_option,
    warn,
    write_output,
)
from keycourier.cli.common import (
    trusted_senders as trusted_senders,
)
from keycourier.cli.identity_cmd import load_identity_for_cli
from keycourier.cli.main import settings_from
from keycourier.cli.policy_cmd import facts_from_options, handover_options
from keycourier.cli.receipt_cmd import (
    check_receipt_target,
    receipt_option,
    save_receipt,
    write_receipt,
)
from keycourier.cli.record import record_event, write_release
from keycourier.errors import IntegrityError, PolicyError, UsageError

if TYPE_CHECKING:
    from keycourier.bundle import CheckedBundle, KeycourierIdentity, Manifest, ReceiverPolicyError
    from keycourier.config import Settings
    from keycourier.ledger.interface import Event, Recorder, RecordOutcome
    from keycourier.ledger.service import BundleState

DEFAULT_LIFETIME_DAYS = 7
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _recipients(recipient: tuple[str, ...], recipients_file: tuple[str, ...]) -> list[str]:
    from keycourier import age

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


def _summary(manifest: Manifest) -> dict[str, Any]:
    d = manifest.to_dict()
    extra = {} if manifest.supersedes is None else {"supersedes": manifest.supersedes}
    return extra | {
        k: d[k]
        for k in (
            "bundle_id",
            "platform",
            "environment",
            "partner",
            "client_id_masked",
            "fingerprint",
            "created_at",
            "expires_at",
            "recipients",
        )
    }


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
    from keycourier import bundle
    from keycourier.cli.policy_cmd import denied_lookup, rejection_error, render_report
    from keycourier.ledger.interface import Event, EventType
    from keycourier.ledger.signed import sign_event
    from keycourier.policy import Verdict, evaluate, load_policy

    if as_json and (output is None or output == "-"):
        raise UsageError("--json prints a summary on stdout, so the bundle needs -o FILE")
    if supersedes is not None and not _UUID4.fullmatch(supersedes):
        raise UsageError(
            "--supersedes takes the bundle ID of the bundle being replaced (a UUID, as "
            "'keycourier inspect' shows it)"
        )
    policy_opt = options.pop("policy", None)
    settings = settings_from(ctx, policy_path=str(policy_opt) if policy_opt else None)
    probe = bool(options.pop("probe", False))
    recipients = _recipients(recipient, recipients_file)
    secret_on_stdin = options.get("client_secret_file") == "-"
    sender = load_identity_for_cli(identity_path, passphrase_file, stdin_busy=secret_on_stdin)
    facts = facts_from_options(options)
    lifetime = facts.lifetime or timedelta(days=DEFAULT_LIFETIME_DAYS)
    facts = dataclasses.replace(facts, lifetime=lifetime)
    policy = load_policy(settings.policy_path)
    now = datetime.now(UTC)
    report = evaluate(policy, facts, now=now, denied=denied_lookup(settings), probe=probe)
    actor = sender.public().signing_fingerprint
    if report.verdict == Verdict.REJECT:
        record_event(
            settings,
            Event(
                type=EventType.REJECTED,
                at=now,
                actor=actor,
                fingerprint=report.fingerprint,
                policy_digest=policy.digest,
                data={
                    "platform": report.platform,
                    "rules": list(report.rejected),
                    "client_id_masked": report.masked_client_id,
                    "partner": partner,
                },
            ),
            require_vault=False,
        )
        with contextlib.redirect_stdout(sys.stderr):
            render_report(report, as_json=False)
        raise rejection_error(report)
    if report.secret is None:  # pragma: no cover - evaluate always sets it unless rejected
        raise UsageError("the policy produced no normalised secret")
    for f in report.findings:
        if f.effect == Verdict.WARN:
            warn(f"{f.rule_id}: {f.message}")
    sealed = bundle.seal(
        bundle.Credentials(report.platform, facts.client_id, report.secret),
        sender=sender,
        recipients=recipients,
        policy=bundle.PolicyStamp(policy.digest, str(report.verdict), report.warned),
        lifetime=lifetime,
        environment=facts.environment or "unspecified",
        partner=partner,
        attestation=(
            bundle.Attestation(report.attested_by, report.attestation or "")
            if report.attested_by
            else None
        ),
        now=now,
        supersedes=supersedes,
    )
    m = sealed.manifest
    # signed like every event that another machine may act on (docs/provenance.md)
    event = sign_event(
        Event(
            type=EventType.SEALED,
            at=now,
            actor=actor,
            bundle_id=m.bundle_id,
            fingerprint=m.fingerprint,
            policy_digest=policy.digest,
            data={**_summary(m), "sender": m.sender_fingerprint, "verdict": str(report.verdict)},
        ),
        sender,
    )
    outcome = record_event(settings, event, require_vault=require_vault)
    if output is None or output == "-":
        write_output(None, sealed.text, private=True)
    else:
        write_release(settings, event, outcome, output, sealed.text)
    if as_json:
        emit_json(_summary(m))
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
    from keycourier import receipt
    from keycourier.bundle import parsing
    from keycourier.bundle.identity import MAX_IDENTITY_BYTES, read_public

    old_text = read_bundle(old_bundle)
    old = parsing.parse(old_text)
    if not parsing.verify_signature(old) or not parsing.payload_ok(old):
        raise IntegrityError(f"{old_bundle} does not verify: run 'keycourier inspect {old_bundle}'")
    # the identity's public header, read without its passphrase: 'seal' below loads the
    # identity and refuses a file whose header does not match its keys
    identity_path = str(options["identity_path"])
    try:
        with open(identity_path, "rb") as fh:
            me = read_public(fh.read(MAX_IDENTITY_BYTES + 1)).signing_fingerprint
    except OSError as exc:
        raise UsageError(f"cannot read identity {identity_path}: {exc.strerror}") from None
    m = old.manifest
    if m.sender_fingerprint != me:
        raise PolicyError(
            f"{old_bundle} was sealed by {m.sender_fingerprint}, not by this identity "
            f"({me}): only its sender rotates it"
        )
    if receipt_path:
        from keycourier.cli.receipt_cmd import read_receipt

        got = receipt.verify(
            read_receipt(receipt_path), old_text, trusted_senders(trust, trust_file)
        )
        stored = got.receipt.vault
        where = f" (Vault version {stored.kv_version})" if stored else ""
        info(f"the receiver {got.receipt.receiver} holds bundle {m.bundle_id}{where}")
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
    c = checked.credentials
    m = checked.manifest
    if as_json:
        import json

        data = (
            json.dumps(
                {
                    "bundle_id": m.bundle_id,
                    "platform": c.platform,
                    "client_id": c.client_id,
                    "client_secret": c.client_secret.reveal(),
                    "fingerprint": m.fingerprint,
                    "partner": m.partner,
                    "sealed_by": m.sender_fingerprint,
                    "sealed_at": m.to_dict()["created_at"],
                },
                indent=2,
                sort_keys=True,
            )
            + "\n"
        )
    else:
        data = (
            f"platform={c.platform}\nclient_id={c.client_id}\n"
            f"client_secret={c.client_secret.reveal()}\n"
        )
    if output:
        write_release(settings, event, outcome, output, data.encode("utf-8"))
        info(f"credentials of bundle {m.bundle_id} written to {output}")
    else:
        write_output(None, data.encode("utf-8"), private=True)
    if receipt_path:
        made = write_receipt(
            settings, ident, bundle_text=text, manifest=m, event=event, seq=outcome.seq
        )
        if made is not None:
            save_receipt(receipt_path, made)


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
    """Verify, re-check policy, check the ledger and record `opened` (shared by open/ingest);
    returns the opened bundle and the `opened` event as recorded."""
    from keycourier import bundle
    from keycourier.cli.policy_cmd import denied_lookup
    from keycourier.cli.record import recording, report_outcome
    from keycourier.ledger.interface import Event, EventType
    from keycourier.ledger.service import decision_lock
    from keycourier.policy import load_policy

    policy_obj = load_policy(settings.policy_path)
    now = datetime.now(UTC)
    me = ident.public().signing_fingerprint
    try:
        checked = bundle.open_bundle(
            text,
            identity=ident,
            trusted=trusted,
            policy=policy_obj,
            now=now,
            denied=denied_lookup(settings),
        )
    except bundle.ReceiverPolicyError as exc:  # not an expiry: that is not a policy verdict
        _record_open_rejection(settings, exc, actor=me, policy_digest=policy_obj.digest)
        raise
    except IntegrityError as exc:
        raise _with_signer_hint(exc, text, trusted) from None
    from keycourier.ledger.signed import sign_event

    # the check (not opened yet) and the `opened` event, one process at a time
    with decision_lock(settings), recording(settings, require_vault=require_vault) as recorder:
        state = _check_state(
            recorder,
            checked.manifest.bundle_id,
            me,
            allow_reopen=allow_reopen,
            allow_superseded=allow_superseded,
            trusted=[*trusted, checked.manifest.sender_key],
            own_key=ident.public().signing_key,
        )
        event = sign_event(
            Event(
                type=EventType.OPENED,
                at=now,
                actor=me,
                bundle_id=checked.manifest.bundle_id,
                fingerprint=checked.manifest.fingerprint,
                policy_digest=policy_obj.digest,
                data={
                    "sealed_by": checked.manifest.sender_fingerprint,
                    "opened_by": me,
                    **_reopen_data(state),
                },
            ),
            ident,
        )
        outcome = recorder.record(event)
    report_outcome(event, outcome)
    return checked, event, outcome


def _with_signer_hint(exc: IntegrityError, text: bytes, trusted: list[str]) -> IntegrityError:
    """The one integrity error, plus a hint when the bundle names a signer not pinned.

    The signer is public (``keycourier inspect`` shows it), so naming it tells
    an attacker nothing; the message stays the one message for every case.
    """
    from keycourier import bundle

    try:
        manifest = bundle.inspect(text).manifest
    except IntegrityError:
        return exc
    if manifest.sender_fingerprint in trusted or manifest.sender_key in trusted:
        return exc
    pinned = ", ".join(t for t in trusted if t.startswith("kc1:")) or ", ".join(trusted)
    return IntegrityError(
        exc.message,
        hints=[
            f"the bundle names its signer as {manifest.sender_fingerprint}, which is not "
            f"among the pinned senders ({pinned}); compare it with the fingerprint the "
            "sender gave you through a second channel",
            *exc.hints,
        ],
    )


def _record_open_rejection(
    settings: Settings, exc: ReceiverPolicyError, *, actor: str, policy_digest: str
) -> None:
    """Record `rejected` when the receiver's policy refuses a verified bundle."""
    from keycourier.ledger.interface import Event, EventType

    m = exc.manifest
    record_event(
        settings,
        Event(
            type=EventType.REJECTED,
            at=datetime.now(UTC),
            actor=actor,
            bundle_id=m.bundle_id,
            fingerprint=m.fingerprint,
            policy_digest=policy_digest,
            data={
                "stage": "open",
                "platform": m.platform,
                "rules": list(exc.rejected),
                "client_id_masked": m.client_id_masked,
                "partner": m.partner,
                "sealed_by": m.sender_fingerprint,
            },
        ),
        require_vault=False,
    )


def _check_state(
    recorder: Recorder,
    bundle_id: str,
    me: str,
    *,
    allow_reopen: bool,
    allow_superseded: bool,
    trusted: list[str],
    own_key: str,
) -> BundleState:
    from keycourier.ledger.service import bundle_state

    state = bundle_state(recorder, bundle_id, trusted=trusted, own_key=own_key)
    for message in state.ignored:
        warn(message)
    if state.revoked is not None:
        raise PolicyError(
            f"bundle {bundle_id} was revoked: {state.revoked}",
            hints=["ask the sender for a new bundle"],
        )
    if state.superseded_by is not None and not allow_superseded:
        raise PolicyError(
            f"bundle {bundle_id} was superseded by bundle {state.superseded_by}: its "
            "credentials were rotated",
            hints=["use the newer bundle, or pass --allow-superseded if you really mean this one"],
        )
    others = [who for who in state.opened_by if who != me]
    if others:
        warn(
            f"bundle {bundle_id} was already opened by another identity ({', '.join(others)}): "
            "possible interception; treat these credentials as compromised and ask for rotation"
        )
    if state.opened_by and not allow_reopen:
        raise PolicyError(
            f"bundle {bundle_id} was already opened",
            hints=["pass --allow-reopen if you really mean to open it again"],
        )
    return state


def _reopen_data(state: BundleState) -> dict[str, object]:
    """What an `opened` event adds when the bundle was opened before (``--allow-reopen``):
    ``reopen`` true and ``previous_opens``, the `opened` events that count (this ledger's,
    not voided, and trusted ones from Vault). A first open adds nothing."""
    if not state.opens:
        return {}
    return {"reopen": True, "previous_opens": state.opens}


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
    from keycourier import bundle as _bundle

    write_output(output, _bundle.extract_age(read_bundle(bundle_file)), private=False)
