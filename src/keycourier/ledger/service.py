"""The recorder facade (local ledger first, then Vault), sync, audit and bundle state.

``import keycourier.ledger.service`` stays cheap: sqlite_utils, hvac and
PyNaCl are imported only when a recorder is opened.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from keycourier.errors import (
    AuthError,
    ConfigError,
    Error,
    IntegrityError,
    UnavailableError,
    UsageError,
)
from keycourier.ledger.interface import (
    Event,
    EventType,
    Recorder,
    RecordOutcome,
    StoredEvent,
    VaultStatus,
)

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.ledger.sqlite import ChainReport, Delivery, SqliteLedger
    from keycourier.ledger.vault import VaultMirror

DEFAULT_SYNC_WORKERS = 8


@dataclass(frozen=True, slots=True)
class BundleState:
    """What the ledger and Vault know about one bundle."""

    bundle_id: str
    opened_by: tuple[str, ...] = ()
    revoked: str | None = None  # the recorded reason, when revoked
    sealed_by: str | None = None
    ingested_to: tuple[str, ...] = ()
    vault_checked: bool = False
    vault_detail: str = ""  # why Vault was not consulted, if it was not
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class SyncConflict:
    seq: int
    path: str
    bundle_id: str | None
    message: str


@dataclass(frozen=True, slots=True)
class SyncReport:
    attempted: int
    delivered: int
    already_present: int
    remaining: int
    conflicts: tuple[SyncConflict, ...] = ()
    unavailable: str = ""


@dataclass(frozen=True, slots=True)
class VaultBreak:
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    chain: ChainReport
    vault_checked: bool = False
    vault_breaks: tuple[VaultBreak, ...] = ()
    vault_records_checked: int = 0
    foreign_records: int = 0
    pending: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def first_break(self) -> tuple[int, str] | None:
        candidates: list[tuple[int, str]] = []
        if self.chain.first_break is not None:
            candidates.append((self.chain.first_break.seq, self.chain.first_break.reason))
        candidates.extend((b.seq, "Vault: " + b.reason) for b in self.vault_breaks)
        return min(candidates) if candidates else None

    @property
    def ok(self) -> bool:
        return self.first_break is None


class LedgerRecorder:
    """The SQLite ledger plus (when configured) the Vault mirror."""

    def __init__(self, settings: Settings, ledger: SqliteLedger, *, require_vault: bool) -> None:
        self.settings = settings
        self.ledger = ledger
        self.require_vault = require_vault
        self.mirror: VaultMirror | None = None
        self._vault_error: Error | None = None
        self._unmarked: list[tuple[int, int]] = []
        self._unmarked_paths: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        if settings.vault.addr:
            from keycourier.ledger.vault import VaultMirror

            self.mirror = VaultMirror(settings)

    def __enter__(self) -> LedgerRecorder:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- Recorder protocol -------------------------------------------------------------

    def record(self, event: Event) -> RecordOutcome:
        """Append locally (always, first), then deliver to Vault when configured."""
        from keycourier.ledger.vault import path_for, record_for

        ledger_id = self.ledger.ledger_id
        if self.mirror is None:
            stored = self.ledger.append(event, VaultStatus.DISABLED, None)
            return RecordOutcome(stored.seq, VaultStatus.DISABLED, "no Vault configured")

        def where(seq: int) -> str:
            return path_for(event, ledger_id=ledger_id, seq=seq)

        stored, body, path = self.ledger.append_full(event, VaultStatus.PENDING, where)
        assert path is not None  # noqa: S101 - where() always names a path
        try:
            if self._vault_error is not None:
                raise self._vault_error
            known, pending_before = self.ledger.path_state(path, stored.seq)
            # events delivered in this session but not yet marked are not really pending
            if pending_before > self._unmarked_paths.get(path, 0):
                report = self.sync(paths={path}, workers=1)
                if report.conflicts:
                    raise IntegrityError(report.conflicts[0].message)
                if report.unavailable:
                    raise UnavailableError(report.unavailable)
            else:
                known = max(known or 0, self._versions.get(path, 0)) or None
                record = record_for(
                    ledger_id, stored.seq, body, stored.prev_hash, stored.hash, str(event.type)
                )
                version, _ = self.mirror.deliver(path, record, known_version=known, event=event)
                self._mark(stored.seq, path, version)
        except (UnavailableError, AuthError, ConfigError) as exc:
            # nothing lost: the event is in the ledger; say why Vault did not take it
            self._vault_error = exc
            detail = exc.message
            self.ledger.mark_detail(stored.seq, detail)
            if self.require_vault:
                raise type(exc)(
                    f"{exc.message}; event #{stored.seq} is kept in the local ledger as pending",
                    hints=[*exc.hints, "run 'keycourier sync' when Vault is back"],
                ) from None
            return RecordOutcome(stored.seq, VaultStatus.PENDING, detail)
        return RecordOutcome(stored.seq, VaultStatus.RECORDED)

    # Delivery marks are batched: an event written to Vault but not yet marked is
    # re-offered by the next sync, which finds the identical record and counts it.
    MARK_BATCH = 256

    def _mark(self, seq: int, path: str, version: int) -> None:
        self._unmarked.append((seq, version))
        self._unmarked_paths[path] = self._unmarked_paths.get(path, 0) + 1
        self._versions[path] = max(version, self._versions.get(path, 0))
        if len(self._unmarked) >= self.MARK_BATCH:
            self.flush()

    def flush(self) -> None:
        """Write batched delivery marks to the ledger."""
        if self._unmarked:
            self.ledger.mark_delivered(self._unmarked)
            self._unmarked = []
            self._unmarked_paths = {}

    def _row(self, seq: int) -> tuple[str, str, str]:
        row = self.ledger.event_row(seq)
        if row is None:  # pragma: no cover - just appended
            raise IntegrityError(f"ledger event #{seq} vanished")
        return row

    def history(
        self, *, bundle_id: str | None = None, fingerprint: str | None = None
    ) -> Sequence[StoredEvent]:
        self.flush()
        return self.ledger.history(bundle_id=bundle_id, fingerprint=fingerprint)

    def close(self) -> None:
        try:
            self.flush()
            if self.ledger.appended_since_checkpoint:
                self.ledger.checkpoint()
        finally:
            if self.mirror is not None:
                self.mirror.close()
            self.ledger.close()

    # -- sync --------------------------------------------------------------------------

    def sync(
        self, *, paths: set[str] | None = None, workers: int = DEFAULT_SYNC_WORKERS
    ) -> SyncReport:
        """Deliver pending events, per record path in ledger order, several paths in parallel."""
        from concurrent.futures import ThreadPoolExecutor

        from keycourier.ledger.vault import record_for

        pending = [
            d for d in self.ledger.pending() if d.path and (paths is None or d.path in paths)
        ]
        if not pending:
            return SyncReport(0, 0, 0, self.ledger.pending_count())
        if self.mirror is None:
            raise UsageError(
                f"{len(pending)} event(s) are pending but no Vault is configured",
                hints=["set VAULT_ADDR (and a token) to deliver them"],
            )
        mirror = self.mirror
        try:
            mirror.fast()  # log in once, before the threads start
        except (UnavailableError, AuthError) as exc:
            return SyncReport(
                len(pending), 0, 0, self.ledger.pending_count(), unavailable=exc.message
            )
        groups: dict[str, list[Delivery]] = {}
        for d in pending:
            groups.setdefault(str(d.path), []).append(d)
        known = {path: self.ledger.known_version(path) for path in groups}
        ledger_id = self.ledger.ledger_id

        def run(path: str) -> tuple[list[tuple[int, int]], int, SyncConflict | None, str]:
            done: list[tuple[int, int]] = []
            reused = 0
            version = known[path]
            for d in groups[path]:
                seq = d.stored.seq
                s = d.stored
                record = record_for(ledger_id, seq, d.body, s.prev_hash, s.hash, str(s.event.type))
                try:
                    version, again = mirror.deliver(
                        path, record, known_version=version, event=d.stored.event
                    )
                except IntegrityError as exc:
                    return (
                        done,
                        reused,
                        SyncConflict(seq, path, d.stored.event.bundle_id, exc.message),
                        "",
                    )
                except (UnavailableError, AuthError) as exc:
                    return done, reused, None, exc.message
                done.append((seq, version))
                reused += int(again)
            return done, reused, None, ""

        delivered: list[tuple[int, int]] = []
        reused_total = 0
        conflicts: list[SyncConflict] = []
        unavailable = ""
        n = max(1, min(workers, len(groups)))
        if n == 1:
            results: Iterator[tuple[list[tuple[int, int]], int, SyncConflict | None, str]] = map(
                run, groups
            )
            outcomes = list(results)
        else:
            with ThreadPoolExecutor(max_workers=n, thread_name_prefix="kc-sync") as pool:
                outcomes = list(pool.map(run, groups))
        for done, reused, conflict, why in outcomes:
            delivered.extend(done)
            reused_total += reused
            if conflict is not None:
                conflicts.append(conflict)
            if why and not unavailable:
                unavailable = why
        self.ledger.mark_delivered(delivered)
        return SyncReport(
            attempted=len(pending),
            delivered=len(delivered),
            already_present=reused_total,
            remaining=self.ledger.pending_count(),
            conflicts=tuple(sorted(conflicts, key=lambda c: c.seq)),
            unavailable=unavailable,
        )

    # -- audit -------------------------------------------------------------------------

    def verify(self, *, vault: bool = False) -> AuditReport:
        self.flush()
        chain_report = self.ledger.verify()
        pending = self.ledger.pending_count()
        if not vault:
            return AuditReport(chain=chain_report, pending=pending)
        if self.mirror is None:
            raise UsageError("--vault needs a configured Vault", hints=["set VAULT_ADDR"])
        return self._cross_check(chain_report, pending)

    def _cross_check(self, chain_report: ChainReport, pending: int) -> AuditReport:
        from keycourier.ledger.vault import SIGNATURE, record_for, same_record

        assert self.mirror is not None  # noqa: S101 - checked by the caller
        ledger_id = self.ledger.ledger_id
        breaks: list[VaultBreak] = []
        by_path: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
        for seq, path, version, body, prev, digest in self.ledger.delivered():
            by_path.setdefault(path, []).append(
                (seq, version, record_for(ledger_id, seq, body, prev, digest))
            )
        checked = 0
        foreign = 0
        notes: list[str] = []
        for path, rows in by_path.items():
            versions = self.mirror.versions(path)
            checked += len(versions)
            mine: dict[int, int] = {}
            for seq, version, expected in rows:
                found = versions.get(version)
                if found is None:
                    breaks.append(VaultBreak(seq, f"{path} version {version} is missing"))
                elif found.data is None:
                    why = "destroyed" if found.destroyed else "deleted"
                    breaks.append(VaultBreak(seq, f"{path} version {version} was {why}"))
                elif not same_record(found.data, expected):
                    breaks.append(
                        VaultBreak(seq, f"{path} version {version} differs from the ledger")
                    )
                elif self.mirror.transit_key:
                    signature = found.data.get(SIGNATURE)
                    if not isinstance(signature, str) or not self.mirror.verify_signature(
                        str(expected["hash"]), signature
                    ):
                        breaks.append(
                            VaultBreak(
                                seq, f"{path} version {version} lacks a valid Transit signature"
                            )
                        )
                mine[version] = seq
            for number, found in versions.items():
                data = found.data
                if data is None or number in mine:
                    continue
                if data.get("ledger") != ledger_id:
                    foreign += 1
                    continue
                seq_raw = data.get("seq")
                seq = seq_raw if isinstance(seq_raw, int) else 0
                row = self.ledger.event_row(seq)
                if row is None:
                    breaks.append(
                        VaultBreak(
                            seq,
                            f"{path} version {number} holds event #{seq}, absent from the ledger",
                        )
                    )
                elif not same_record(data, record_for(ledger_id, seq, *row)):
                    breaks.append(
                        VaultBreak(
                            seq,
                            f"{path} version {number} claims event #{seq} with different content",
                        )
                    )
                else:
                    status, _, local_version = self.ledger.delivery_of(seq)
                    if status == "recorded" and local_version != number:
                        notes.append(f"{path} version {number} duplicates event #{seq}")
        return AuditReport(
            chain=chain_report,
            vault_checked=True,
            vault_breaks=tuple(sorted(breaks, key=lambda b: b.seq)),
            vault_records_checked=checked,
            foreign_records=foreign,
            pending=pending,
            notes=tuple(notes),
        )

    # -- bundle state ------------------------------------------------------------------

    def vault_bundle_events(self, bundle_id: str) -> list[Event]:
        """Events of this bundle that Vault holds from other ledgers (ours are local already)."""
        if self.mirror is None:
            return []
        mine = self.ledger.ledger_id
        return [e for ledger, _, e in self.mirror.bundle_events(bundle_id) if ledger != mine]


def open_recorder(settings: Settings, *, require_vault: bool = False) -> LedgerRecorder:
    """The ledger at ``settings.ledger_path`` (created on first use) plus the Vault mirror."""
    from keycourier.ledger.sqlite import SqliteLedger

    return LedgerRecorder(settings, SqliteLedger(settings.ledger_path), require_vault=require_vault)


def bundle_state(recorder: Recorder, bundle_id: str) -> BundleState:
    """Opened / revoked / sealed facts from the local ledger and, when reachable, Vault."""
    events = [s.event for s in recorder.history(bundle_id=bundle_id)]
    vault_checked = False
    detail = ""
    if isinstance(recorder, LedgerRecorder) and recorder.mirror is not None:
        try:
            events.extend(recorder.vault_bundle_events(bundle_id))
            vault_checked = True
        except (UnavailableError, AuthError) as exc:
            detail = exc.message
    else:
        detail = "no Vault configured"
    events.sort(key=lambda e: e.at)
    opened: list[str] = []
    revoked: str | None = None
    sealed_by: str | None = None
    ingested: list[str] = []
    for e in events:
        if e.type == EventType.OPENED and e.actor not in opened:
            opened.append(e.actor)
        elif e.type == EventType.REVOKED and revoked is None:
            revoked = str(e.data.get("reason") or "no reason recorded")
        elif e.type == EventType.SEALED and sealed_by is None:
            sealed_by = e.actor
        elif e.type == EventType.INGESTED:
            ingested.append(str(e.data.get("vault_path", "")))
    return BundleState(
        bundle_id=bundle_id,
        opened_by=tuple(opened),
        revoked=revoked,
        sealed_by=sealed_by,
        ingested_to=tuple(ingested),
        vault_checked=vault_checked,
        vault_detail=detail,
        events=tuple(events),
    )


# -- export ----------------------------------------------------------------------------

EXPORT_FIELDS = (
    "seq",
    "type",
    "at",
    "actor",
    "bundle_id",
    "fingerprint",
    "policy_digest",
    "data",
    "prev_hash",
    "hash",
    "vault_status",
)


def export_row(stored: StoredEvent) -> dict[str, Any]:
    from keycourier.ledger.chain import format_time

    e = stored.event
    return {
        "seq": stored.seq,
        "type": str(e.type),
        "at": format_time(e.at),
        "actor": e.actor,
        "bundle_id": e.bundle_id,
        "fingerprint": e.fingerprint,
        "policy_digest": e.policy_digest,
        "data": dict(e.data),
        "prev_hash": stored.prev_hash,
        "hash": stored.hash,
        "vault_status": str(stored.vault_status),
    }


def export(
    events: Iterator[StoredEvent], fmt: str, *, since: datetime | None = None
) -> Iterator[str]:
    """JSON lines or CSV (header first), one string per line, newline included."""
    if fmt not in {"jsonl", "csv"}:
        raise UsageError("export format must be jsonl or csv")
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        yield buf.getvalue()
    for stored in events:
        if since is not None and stored.event.at < since:
            continue
        row = export_row(stored)
        if fmt == "jsonl":
            yield json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n"
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
            row["data"] = json.dumps(row["data"], sort_keys=True)
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
            yield buf.getvalue()


def timeline(recorder: LedgerRecorder, key: str) -> list[tuple[str, Event, str]]:
    """(source, event, vault_status) of a bundle ID or a fingerprint, oldest first."""
    local = list(recorder.history(bundle_id=key)) or list(recorder.history(fingerprint=key))
    out: list[tuple[str, Event, str]] = [("ledger", s.event, str(s.vault_status)) for s in local]
    bundle_ids = {s.event.bundle_id for s in local if s.event.bundle_id} or (
        {key} if not local else set()
    )
    if recorder.mirror is not None:
        for bid in sorted(bundle_ids):
            try:
                out.extend(("vault", e, "foreign") for e in recorder.vault_bundle_events(bid))
            except (UnavailableError, AuthError, UsageError):
                continue
    out.sort(key=lambda t: t[1].at)
    return out
