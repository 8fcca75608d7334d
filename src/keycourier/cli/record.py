"""Recording provenance events from CLI commands, with honest status lines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keycourier.cli.common import info, warn

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.ledger.interface import Event, Recorder, RecordOutcome


def open_recorder(settings: Settings, *, require_vault: bool = False) -> Recorder:
    from keycourier.ledger.service import open_recorder as _open

    return _open(settings, require_vault=require_vault)


def report_outcome(event: Event, outcome: RecordOutcome) -> None:
    """Say where the event went; never claim Vault when it is not there."""
    from keycourier.ledger.interface import VaultStatus

    what = f"{event.type} event #{outcome.seq}"
    if outcome.vault_status == VaultStatus.RECORDED:
        info(f"{what} recorded in the local ledger and in Vault")
    elif outcome.vault_status == VaultStatus.PENDING:
        warn(
            f"{what} recorded in the local ledger only; Vault was not reached"
            f"{': ' + outcome.detail if outcome.detail else ''}. "
            "It is pending: run 'keycourier sync' when Vault is back"
        )
    else:
        info(f"{what} recorded in the local ledger (no Vault configured)")
