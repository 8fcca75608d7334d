"""What ``keycourier audit verify`` does, without click.

The click command in ``provenance_cmd`` and the console script's fast path
(``keycourier.cli.entry``) both call ``verify_ledger``, so the two ways in
share one implementation. An auditor's or a CI job's ``audit verify`` of a
small ledger is mostly start-up: keep click, sqlite_utils and
keycourier.cli.common (which imports click) off this module's import path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from keycourier.cli.outcome import say
from keycourier.config import Settings
from keycourier.errors import ConfigError, IntegrityError
from keycourier.ledger.recorder import open_recorder
from keycourier.redact import printable


def _echo(line: str) -> None:
    """As click.echo: the line, then a flush (so stdout and stderr keep their order)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def verify_ledger(
    settings: Settings, *, with_vault: bool, as_json: bool, since: str | None = None
) -> None:
    """Check every hash link and checkpoint signature (and Vault with ``with_vault``, an
    exported checkpoint with ``since``), print the report; IntegrityError (exit 4) on a
    break."""
    if not settings.ledger_path.exists():
        raise ConfigError(f"no ledger at {settings.ledger_path}")
    with open_recorder(settings) as recorder:
        report = recorder.verify(vault=with_vault, since=None if since is None else Path(since))
        ledger_id = recorder.ledger.ledger_id
    c = report.chain
    first = report.first_break
    if as_json:
        doc = {
            "ok": report.ok,
            "ledger_id": ledger_id,
            "events": c.events,
            "checkpoints": c.checkpoints,
            "head_seq": c.head_seq,
            "head_hash": c.head_hash,
            "public_key": c.public_key,
            "unsigned_tail": c.unsigned_tail,
            "checkpoint_interval": c.interval,
            "since_checked": since is not None,
            "pending": report.pending,
            "vault_checked": report.vault_checked,
            "vault_records_checked": report.vault_records_checked,
            "foreign_records": report.foreign_records,
            "first_break": None if first is None else {"seq": first[0], "reason": first[1]},
            "vault_breaks": [{"seq": b.seq, "reason": b.reason} for b in report.vault_breaks],
            "since_breaks": [{"seq": q, "reason": r} for q, r in report.since_breaks],
            "notes": list(report.notes),
        }
        _echo(json.dumps(doc, indent=2, sort_keys=True))  # as cli.common.emit_json
    else:
        _echo(f"ledger:       {settings.ledger_path} (ID {ledger_id})")
        _echo(f"public key:   ed25519:{c.public_key}")
        _echo(f"events:       {c.events} (head #{c.head_seq} {c.head_hash[:16]}...)")
        within = "within" if c.unsigned_tail <= c.interval else "MORE than"
        _echo(
            f"checkpoints:  {c.checkpoints} ({c.unsigned_tail} event(s) after the last one, "
            f"{within} the checkpoint interval of {c.interval})"
        )
        _echo(f"pending:      {report.pending} event(s) not yet in Vault")
        if report.vault_checked:
            _echo(
                f"vault:        {report.vault_records_checked} record version(s) cross-checked, "
                f"{report.foreign_records} from other ledgers"
            )
        if since is not None:
            _echo(
                f"exported:     {printable(since)}: "
                + ("still held" if not report.since_breaks else "CONTRADICTED")
            )
        for note in report.notes:
            say("warning", printable(note))
        for _, reason in report.since_breaks:
            say("warning", printable(reason))
        for b in report.vault_breaks[:10]:
            say("warning", f"Vault: event #{b.seq}: {printable(b.reason)}")
        if len(report.vault_breaks) > 10:
            say(
                "warning",
                f"... and {len(report.vault_breaks) - 10} more Vault break(s) (see --json)",
            )
        _echo("result:       OK" if first is None else f"result:       BROKEN at event #{first[0]}")
    if first is not None:
        raise IntegrityError(
            f"the ledger is broken at event #{first[0]}: {printable(first[1])}",
            hints=["keep a copy of the ledger file and the Vault records for investigation"],
        )
