"""Verify: the hash chain and the signed tree heads, and with a Vault, both directions
between the ledger and its Vault records (pin, witnessed checkpoints, delivered events)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keycourier._record import field, record, replace
from keycourier.errors import (
    UsageError,
)
from keycourier.ledger.checkpoints import (
    check_exported,
    checkpoint_signed,
    read_checkpoint,
    witness_name,
)
from keycourier.redact import printable

if TYPE_CHECKING:
    from keycourier.ledger.recorder import LedgerRecorder
    from keycourier.ledger.sqlite import ChainReport
    from keycourier.vault.kv import KvVersion


@record
class VaultBreak:
    seq: int
    reason: str


@record
class AuditReport:
    chain: ChainReport
    vault_checked: bool = False
    vault_breaks: tuple[VaultBreak, ...] = ()
    vault_records_checked: int = 0
    foreign_records: int = 0
    pending: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    # (seq, reason) where the ledger contradicts an exported checkpoint (--since)
    since_breaks: tuple[tuple[int, str], ...] = ()

    @property
    def first_break(self) -> tuple[int, str] | None:
        candidates: list[tuple[int, str]] = []
        if self.chain.first_break is not None:
            candidates.append((self.chain.first_break.seq, self.chain.first_break.reason))
        candidates.extend((b.seq, "Vault: " + b.reason) for b in self.vault_breaks)
        candidates.extend(self.since_breaks)
        return min(candidates) if candidates else None

    @property
    def ok(self) -> bool:
        return self.first_break is None


def verify_ledger(
    recorder: LedgerRecorder, *, vault: bool = False, since: Path | None = None
) -> AuditReport:
    """The chain, and with ``vault`` its Vault records, and with ``since`` an exported
    checkpoint (``audit checkpoint``) that the ledger must still contain."""

    exported = None if since is None else read_checkpoint(since)
    recorder.flush()
    chain_report = recorder.ledger.verify()
    pending = recorder.ledger.pending_count()
    if not vault:
        report = AuditReport(chain=chain_report, pending=pending)
    elif recorder.mirror is None:
        raise UsageError("--vault needs a configured Vault", hints=["set VAULT_ADDR"])
    else:
        report = _cross_check(recorder, chain_report, pending)
    if exported is None or since is None:
        return report
    return replace(report, since_breaks=check_exported(recorder.ledger, exported, str(since)))


def _cross_check(recorder: LedgerRecorder, chain_report: ChainReport, pending: int) -> AuditReport:
    """Both directions: every delivered event is in Vault as recorded, and every Vault
    record of this ledger is in the local ledger, identical (a removed tail shows here)."""
    # lazy: threading and the Vault client, only when there is a Vault to talk to
    from keycourier.ledger.mirror import event_path_seq, record_for, same_record

    assert recorder.mirror is not None  # noqa: S101 - checked by the caller
    mirror = recorder.mirror
    ledger_id = recorder.ledger.ledger_id
    local_head = recorder.ledger.head()[0]
    breaks: list[VaultBreak] = []
    notes: list[str] = []
    _check_pin(recorder, breaks, notes)
    _check_witnessed(recorder, breaks, notes)
    by_path: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
    for seq, path, version, body, prev, digest in recorder.ledger.delivered():
        by_path.setdefault(path, []).append(
            (seq, version, record_for(ledger_id, seq, body, prev, digest))
        )
    shared, own = mirror.ledger_paths(ledger_id)
    checked = 0
    foreign = 0
    beyond: list[int] = []
    for path in sorted({*by_path, *shared, *own}):
        versions = mirror.versions(path)
        rows = by_path.get(path, [])
        name_seq = event_path_seq(path, ledger_id)
        if (
            not rows
            and name_seq is None
            and not any(v.data and v.data.get("ledger") == ledger_id for v in versions.values())
        ):
            continue  # another ledger's record: not this audit's business
        checked += len(versions)
        mine = _check_delivered(recorder, path, versions, rows, breaks)
        for number, found in sorted(versions.items()):
            if number in mine:
                continue
            data = found.data
            where = f"{path} version {number}"
            if data is None:
                if name_seq is not None:  # our own write-once record, gone
                    why = "destroyed" if found.destroyed else "deleted"
                    breaks.append(VaultBreak(name_seq, f"{where} was {why}"))
                continue
            if data.get("ledger") != ledger_id:
                foreign += 1
                continue
            seq_raw = data.get("seq")
            seq = seq_raw if isinstance(seq_raw, int) and not isinstance(seq_raw, bool) else 0
            if name_seq is not None and seq != name_seq:
                breaks.append(
                    VaultBreak(
                        min(seq, name_seq),
                        f"{where} holds event #{seq} under the name of event #{name_seq}",
                    )
                )
                continue
            row = recorder.ledger.event_row(seq)
            if row is None:
                if seq > local_head:
                    beyond.append(seq)
                    breaks.append(
                        VaultBreak(
                            seq,
                            f"{where} holds event #{seq} of this ledger, but the local "
                            f"ledger ends at #{local_head}: its tail is missing",
                        )
                    )
                else:
                    breaks.append(
                        VaultBreak(seq, f"{where} holds event #{seq}, absent from the ledger")
                    )
            elif not same_record(data, record_for(ledger_id, seq, *row)):
                breaks.append(
                    VaultBreak(seq, f"{where} claims event #{seq} with different content")
                )
            else:
                status, _, local_version = recorder.ledger.delivery_of(seq)
                if status == "recorded" and local_version != number:
                    notes.append(f"{where} duplicates event #{seq}")
    if beyond:
        notes.append(
            f"Vault holds {len(beyond)} event(s) of this ledger after the local head "
            f"#{local_head} (up to #{max(beyond)}): the ledger was truncated or replaced"
        )
    return AuditReport(
        chain=chain_report,
        vault_checked=True,
        vault_breaks=tuple(sorted(breaks, key=lambda b: b.seq)),
        vault_records_checked=checked,
        foreign_records=foreign,
        pending=pending,
        notes=tuple(notes),
    )


def _check_pin(recorder: LedgerRecorder, breaks: list[VaultBreak], notes: list[str]) -> None:
    """The checkpoint key in the ledger must be the one pinned in Vault."""
    assert recorder.mirror is not None  # noqa: S101 - checked by the caller
    ledger_id = recorder.ledger.ledger_id
    pinned = recorder.mirror.pinned_key(ledger_id)
    if pinned is None:
        notes.append(
            f"no checkpoint key is pinned in Vault for ledger {ledger_id} yet "
            "(the next recorded event or 'keycourier sync' pins it)"
        )
    elif pinned != recorder.ledger.public_key:
        breaks.append(
            VaultBreak(
                0,
                f"the ledger's checkpoint key differs from the one pinned in Vault for "
                f"ledger {ledger_id}: the ledger was rewritten with another key",
            )
        )


def _check_witnessed(recorder: LedgerRecorder, breaks: list[VaultBreak], notes: list[str]) -> None:
    """The ledger Vault has seen on this machine, and every checkpoint it witnessed,
    against the local ledger: another ID or key, a witnessed head beyond the local
    head (rolled back or truncated) or a different hash are breaks."""
    assert recorder.mirror is not None  # noqa: S101 - checked by the caller
    ledger_id = recorder.ledger.ledger_id
    name = witness_name(recorder.settings)
    seen = recorder.mirror.machine_record(name)
    if seen is not None and (
        seen.get("ledger") != ledger_id or seen.get("public_key") != recorder.ledger.public_key
    ):
        breaks.append(
            VaultBreak(
                0,
                f"Vault has seen ledger {printable(str(seen.get('ledger')))} with another "
                f"checkpoint key on this machine ({name}); the local ledger is {ledger_id}: "
                "the ledger file was replaced",
            )
        )
    local_head = recorder.ledger.head()[0]
    for path, found in recorder.mirror.checkpoints(ledger_id):
        data = found.data if found is not None else None
        if not data:
            breaks.append(VaultBreak(0, f"witnessed checkpoint {path} was deleted"))
            continue
        seq = data.get("seq")
        head_hash = data.get("head_hash")
        if not isinstance(seq, int) or not isinstance(head_hash, str):
            breaks.append(VaultBreak(0, f"witnessed checkpoint {path} is malformed"))
            continue
        if not checkpoint_signed(recorder.ledger.public_key, ledger_id, data):
            breaks.append(VaultBreak(seq, f"witnessed checkpoint {path} has no valid signature"))
            continue
        if seq > local_head:
            breaks.append(
                VaultBreak(
                    seq,
                    f"Vault witnessed checkpoint #{seq} of this ledger, but the local ledger "
                    f"ends at #{local_head}: it was rolled back or truncated",
                )
            )
            continue
        row = recorder.ledger.event_row(seq)
        if row is None or row[2] != head_hash:
            breaks.append(
                VaultBreak(
                    seq,
                    f"the local chain differs from checkpoint #{seq} witnessed in Vault "
                    f"(head hash {printable(head_hash[:16])}...)",
                )
            )
    pending = len(recorder.unwitnessed_checkpoints())
    if pending:
        notes.append(
            f"{pending} local checkpoint(s) not yet witnessed in Vault "
            "('keycourier sync' delivers them)"
        )


def _check_delivered(
    recorder: LedgerRecorder,
    path: str,
    versions: Mapping[int, KvVersion],
    rows: list[tuple[int, int, dict[str, Any]]],
    breaks: list[VaultBreak],
) -> dict[int, int]:
    """Check the locally recorded deliveries to one path; {Vault version: seq} matched."""
    # lazy: threading and the Vault client, only when there is a Vault to talk to
    from keycourier.ledger.mirror import SIGNATURE, same_record

    assert recorder.mirror is not None  # noqa: S101 - checked by the caller
    mine: dict[int, int] = {}
    for seq, version, expected in rows:
        found = versions.get(version)
        where = f"{path} version {version}"
        if found is None:
            breaks.append(VaultBreak(seq, f"{where} is missing"))
        elif found.data is None:
            why = "destroyed" if found.destroyed else "deleted"
            breaks.append(VaultBreak(seq, f"{where} was {why}"))
        elif not same_record(found.data, expected):
            breaks.append(VaultBreak(seq, f"{where} differs from the ledger"))
        elif recorder.mirror.transit_key:
            signature = found.data.get(SIGNATURE)
            if not isinstance(signature, str) or not recorder.mirror.verify_signature(
                str(expected["hash"]), signature
            ):
                breaks.append(VaultBreak(seq, f"{where} lacks a valid Transit signature"))
        mine[version] = seq
    return mine
