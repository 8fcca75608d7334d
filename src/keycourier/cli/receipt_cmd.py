"""`keycourier receipt verify|inspect`, and the receipt that `open`/`ingest` write."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from keycourier import receipt as _receipt
from keycourier.bundle.model import format_time
from keycourier.cli.bundle_ops import read_bundle
from keycourier.cli.common import (
    default_actor,
    emit_json,
    info,
    receiver_trust_option,
    trusted_senders,
    write_output,
)
from keycourier.cli.main import settings_from
from keycourier.cli.receipt_files import read_receipt, receipt_from_metadata
from keycourier.cli.record import recording, report_outcome
from keycourier.errors import ConfigError, IntegrityError, UsageError
from keycourier.ledger.interface import Event, EventType
from keycourier.ledger.recorder import decision_lock
from keycourier.receipt import check_ledger_key
from keycourier.vault.client import connect
from keycourier.vault.kv import kv_read_metadata
from keycourier.vault.paths import check_ingest_path

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.receipt import Receipt


@click.group()
def receipt() -> None:
    """Signed receipts: the receiver's word that a bundle arrived (docs/receipts.md).

    \b
    Example:
      keycourier receipt verify receipt.kcr --bundle handover.kcb --trust kc1:0123...
    """


@receipt.command("verify")
@click.argument("receipt_file", metavar="RECEIPT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--bundle",
    "bundle_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="The bundle you sealed and sent.",
)
@receiver_trust_option
@click.option(
    "--ledger-key",
    metavar="VKEY",
    help="The receiver ledger's verifier key ('keycourier audit key' on their side), when "
    "pinned; else the key of the receiver's first verified receipt is expected.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option(
    "--ledger",
    "ledger_path",
    type=click.Path(dir_okay=False),
    help="Ledger file (env KEYCOURIER_LEDGER; default ~/.local/share/keycourier/ledger.db).",
)
@click.pass_context
def verify(
    ctx: click.Context,
    receipt_file: str,
    bundle_file: str,
    trust: tuple[str, ...],
    trust_file: str | None,
    ledger_key: str | None,
    as_json: bool,
    ledger_path: str | None,
) -> None:
    """Check a receiver's receipt against the bundle you sent, and record it.

    --trust pins the RECEIVER's signing fingerprint (ask for it through a
    second channel: 'keycourier identity show' on their side). Exit 0 when
    the receipt verifies (recorded as 'receipt_verified' once), 4 when
    something does not verify (named), 7 when it is for another bundle or
    signed by a key you did not pin. The receiver's ledger key must be the
    one its earlier receipts used (or --ledger-key).

    \b
    Example:
      keycourier receipt verify receipt.kcr --bundle handover.kcb --trust kc1:0123...
    """

    settings = settings_from(ctx, ledger_path=ledger_path)
    data = read_receipt(receipt_file)
    verified = _receipt.verify(data, read_bundle(bundle_file), trusted_senders(trust, trust_file))
    if ledger_key is not None and len(ledger_key) > 1024:
        raise UsageError("--ledger-key is not a verifier key")
    seq, fresh = _record_verified(settings, verified.receipt, ledger_key)
    r = verified.receipt
    if as_json:
        emit_json({**_summary(r), "ledger_seq": seq, "newly_recorded": fresh})
        return
    what = "stored" if r.action == "ingested" else "opened"
    info(f"receipt {r.receipt_id} verifies: bundle {r.bundle.bundle_id} was {what} by {r.receiver}")
    info(f"at {r.at:%Y-%m-%d %H:%M:%S} UTC" + _vault_words(r))
    if not fresh:
        info(f"already recorded as event #{seq}: nothing new recorded")


def _record_verified(settings: Settings, r: Receipt, pinned: str | None) -> tuple[int, bool]:
    """Record ``receipt_verified`` unless this receipt is already on record: (seq, new?).
    The receiver's ledger key is checked against its earlier receipts first."""

    with decision_lock(settings), recording(settings) as recorder:
        seen = [
            str(s.event.data["receiver_ledger"].get("verifier_key"))
            for s in recorder.history_by_data("receiver", r.receiver)
            if s.event.type == EventType.RECEIPT_VERIFIED
            and isinstance(s.event.data.get("receiver_ledger"), dict)
        ]
        check_ledger_key(r, seen=seen, pinned=pinned)
        for stored in recorder.history(bundle_id=r.bundle.bundle_id):
            e = stored.event
            if e.type == EventType.RECEIPT_VERIFIED and e.data.get("receipt_id") == r.receipt_id:
                return stored.seq, False
        event = Event(
            type=EventType.RECEIPT_VERIFIED,
            at=datetime.now(UTC),
            actor=default_actor(),
            bundle_id=r.bundle.bundle_id,
            fingerprint=r.bundle.fingerprint,
            data=_summary(r),
        )
        outcome = recorder.record(event)
    report_outcome(event, outcome)
    return outcome.seq, True


def _summary(r: Receipt) -> dict[str, Any]:

    v = r.vault
    return {
        "receipt_id": r.receipt_id,
        "bundle_id": r.bundle.bundle_id,
        "action": r.action,
        "receiver": r.receiver,
        "received_at": format_time(r.at),
        "kv_version": v.kv_version if v else None,
        "vault_path_hmac": v.path_hmac if v else None,
        "vault_path": v.path if v else None,
        "supersedes": (
            {"bundle_id": v.supersedes.bundle_id, "kv_version": v.supersedes.kv_version}
            if v and v.supersedes
            else None
        ),
        "receiver_ledger": {
            "log_index": r.ledger.log_index,
            "tree_size": r.ledger.tree_size,
            "verifier_key": r.ledger.verifier_key,
        },
    }


def _vault_words(r: Receipt) -> str:
    v = r.vault
    if v is None:
        return ""
    where = v.path or "a Vault path it keeps private"
    words = f", in {where}, version {v.kv_version}"
    if v.supersedes:
        words += f" (replacing version {v.supersedes.kv_version}, bundle {v.supersedes.bundle_id})"
    return words


@receipt.command("inspect")
@click.argument("receipt_file", metavar="RECEIPT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_receipt(receipt_file: str, as_json: bool) -> None:
    """Show what a receipt says, without any key or pin.

    Checks the signature under the key the receipt names and its ledger
    proof; who the receiver is, only 'receipt verify --trust' tells. Exit 4,
    with what is wrong, when the input is not a receipt or is damaged.

    \b
    Example:
      keycourier receipt inspect receipt.kcr
    """

    seen = _receipt.inspect(read_receipt(receipt_file))
    r = seen.receipt
    if as_json:
        emit_json(
            {
                "receipt": r.to_dict(),
                "signature_valid": seen.signature_valid,
                "ledger_proof_valid": seen.proof_error is None,
                "ledger_proof_error": seen.proof_error,
            }
        )
    else:
        what = {"ingested": "ingested into Vault", "opened": "opened"}[r.action]
        rows = [
            ("receipt", r.receipt_id),
            ("bundle", r.bundle.bundle_id),
            ("what", f"{what} at {r.at:%Y-%m-%d %H:%M:%S} UTC{_vault_words(r)}"),
            ("receiver", r.receiver),
            ("sender", r.bundle.sender),
            ("credential", r.bundle.fingerprint),
            ("manifest", f"sha256:{r.bundle.manifest_sha256}"),
            ("signature", "valid (under the key it names)" if seen.signature_valid else "INVALID"),
            (
                "ledger proof",
                f"event #{r.ledger.log_index + 1} of {r.ledger.tree_size} in the receiver's "
                "ledger, valid"
                if seen.proof_error is None
                else f"INVALID: {seen.proof_error}",
            ),
        ]
        for name, value in rows:
            click.echo(f"{name + ':':<14}{value}")
    if not seen.signature_valid or seen.proof_error is not None:
        raise IntegrityError(
            "the receipt does not verify: "
            + ("its signature is invalid" if not seen.signature_valid else str(seen.proof_error))
        )


@receipt.command("get")
@click.option(
    "--vault-path",
    required=True,
    help="The KV v2 path the bundle was ingested to (e.g. handed-over/acme/quickbooks).",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write the receipt here (0600)."
)
@click.pass_context
def get_receipt(ctx: click.Context, vault_path: str, output: str | None) -> None:
    """Fetch the receipt 'ingest' kept next to the credentials in Vault.

    Reads the path's KV metadata (no secret is read), joins the receipt
    stored there and checks its structure; send it to the sender, who
    verifies it. Exit 2 when the path holds no receipt.

    \b
    Example:
      keycourier receipt get --vault-path handed-over/acme/quickbooks -o receipt.kcr
    """

    settings = settings_from(ctx)
    if not settings.vault.addr:
        raise ConfigError("the receipt is kept in Vault, but no Vault is configured")
    check_ingest_path(vault_path)
    client = connect(settings)
    meta = kv_read_metadata(client, settings.vault.mount, vault_path)
    text = receipt_from_metadata(meta.custom_metadata) if meta is not None else None
    if text is None:
        raise UsageError(
            f"{settings.vault.mount}/{vault_path} holds no receipt",
            hints=["receipts are kept by 'keycourier ingest' at the path it wrote"],
        )
    parsed = _receipt.parse(text)
    write_output(output, text, private=True)
    if output:
        info(f"receipt {parsed.receipt.receipt_id} of bundle {parsed.receipt.bundle.bundle_id}")
