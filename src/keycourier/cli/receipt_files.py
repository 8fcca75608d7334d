"""Receipts as files and as Vault metadata, for the commands that write or read one
(open, ingest, rotate, receipt)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from keycourier import receipt
from keycourier.bundle import parsing
from keycourier.cli.common import (
    info,
    warn,
)
from keycourier.errors import Error, UsageError
from keycourier.files import read_limited, write_private
from keycourier.ledger.checkpoints import prove_event
from keycourier.ledger.interface import Event
from keycourier.ledger.recorder import open_recorder
from keycourier.vault.kv import kv_write_custom_metadata

if TYPE_CHECKING:
    from keycourier.bundle.identity import KeycourierIdentity
    from keycourier.bundle.model import Manifest
    from keycourier.config import Settings
    from keycourier.receipt import IssuedVault


MAX_RECEIPT_FILE = 64 * 1024


def receipt_option(f: Any) -> Any:  # noqa: ANN401 - click decorator
    return click.option(
        "--receipt",
        "receipt_path",
        type=click.Path(dir_okay=False),
        help="Write a signed receipt here for the sender (docs/receipts.md).",
    )(f)


def check_receipt_target(path: str | None) -> None:
    """Refuse, before anything is opened, a receipt path that cannot be written."""
    if path is None:
        return
    parent = Path(path).parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--receipt: cannot write into {parent}: no such writable directory")


def write_receipt(
    settings: Settings,
    identity: KeycourierIdentity,
    *,
    bundle_text: bytes,
    manifest: Manifest,
    event: Event,
    seq: int,
    proved_seq: int | None = None,
    vault: IssuedVault | None = None,
) -> bytes | None:
    """Issue the receipt of ``event`` (recorded as ``seq``), with the inclusion proof of
    event ``proved_seq`` (default ``seq``; an ingest whose receipt must not show the Vault
    path proves its `opened` event, docs/receipts.md section 4); None, with a warning, when
    it cannot be made: the release already happened, so that is not a failed command."""

    try:
        with open_recorder(settings) as recorder:
            proof = prove_event(recorder, seq if proved_seq is None else proved_seq)
        return receipt.issue(
            identity=identity,
            manifest=manifest,
            manifest_bytes=parsing.parse(bundle_text).manifest_bytes,
            action=str(event.type),
            at=event.at,
            proof=proof,
            vault=vault,
        )
    except Error as exc:
        warn(
            f"bundle {manifest.bundle_id} is released and on record, but no receipt could be "
            f"made: {exc.message}"
        )
        return None


def save_receipt(path: str, text: bytes) -> None:

    try:
        write_private(path, text)
    except (Error, OSError) as exc:
        detail = exc.message if isinstance(exc, Error) else str(exc)
        warn(f"the receipt could not be written to {path}: {detail}")
        return
    info(f"receipt written to {path}: send it to the sender")


def store_receipt(
    client: Any,  # noqa: ANN401 - an hvac.Client (hvac is imported by the adapter only)
    mount: str,
    path: str,
    provenance: dict[str, str],
    receipt_text: bytes,
) -> None:
    """The receipt next to the credentials, in the path's custom_metadata (docs/receipts.md
    section 6): ``receipt_0`` ... in chunks of at most 512 characters (Vault's limit on a
    value), its line ends written as ``|``. A failure is a warning: the credentials are
    stored and the event recorded."""

    # Vault refuses a metadata value with a newline: lines are joined with "|", which
    # a receipt (version line, markers, base64) never holds
    text = receipt_text.decode("ascii").replace("\n", "|")
    chunks = {f"receipt_{i // 500}": text[i : i + 500] for i in range(0, len(text), 500)}
    receipt_id = receipt.parse(receipt_text).receipt.receipt_id
    try:
        kv_write_custom_metadata(
            client, mount, path, {**provenance, "receipt_id": receipt_id, **chunks}
        )
    except Error as exc:
        warn(f"the receipt could not be stored in the metadata of {mount}/{path}: {exc.message}")


def receipt_from_metadata(custom: Mapping[str, object]) -> bytes | None:
    """The receipt stored by ``store_receipt``, joined from its chunks (None when absent)."""
    parts: list[str] = []
    while isinstance(part := custom.get(f"receipt_{len(parts)}"), str) and len(parts) < 64:
        parts.append(part)
    if not parts:
        return None
    # anyone who may write the metadata can put other text there: the parser names it
    return "".join(parts).replace("|", "\n").encode("utf-8", "replace")


def read_receipt(path: str) -> bytes:

    if path == "-":
        import sys

        return read_limited(sys.stdin.buffer, "the receipt", MAX_RECEIPT_FILE)
    return read_limited(path, f"the receipt {path}", MAX_RECEIPT_FILE)
