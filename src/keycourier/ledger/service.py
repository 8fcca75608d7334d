"""The recorder facade (local ledger first, then Vault), sync, audit and bundle state.

``import keycourier.ledger.service`` stays cheap: sqlite_utils, hvac and
PyNaCl are imported only when a recorder is opened.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from keycourier._record import field, record
from keycourier.errors import (
    AuthError,
    ConfigError,
    Error,
    IntegrityError,
    UnavailableError,
    UsageError,
)
from keycourier.ledger.interface import (
    RELEASES,
    Event,
    EventType,
    Recorder,
    RecordOutcome,
    StoredEvent,
    VaultStatus,
)
from keycourier.tlog import checkpoint as tlog_checkpoint
from keycourier.tlog import merkle
from keycourier.tlog import note as tlog_note

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.ledger.mirror import VaultEvent, VaultMirror
    from keycourier.ledger.sqlite import ChainReport, Delivery, SqliteLedger
    from keycourier.policy import Policy
    from keycourier.vault.kv import KvVersion

DEFAULT_SYNC_WORKERS = 8


@record
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
    # events found in Vault but not acted on (unsigned, or signed by an untrusted key)
    ignored: tuple[str, ...] = ()
    opens: int = 0  # `opened` events that count (not voided; from Vault: trusted only)
    superseded_by: str | None = None  # the bundle that replaced this one, when one did


@record
class SyncConflict:
    seq: int
    path: str
    bundle_id: str | None
    message: str


@record
class SyncReport:
    attempted: int
    delivered: int
    already_present: int
    remaining: int
    conflicts: tuple[SyncConflict, ...] = ()
    unavailable: str = ""


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


class LedgerRecorder:
    """The SQLite ledger plus (when configured) the Vault mirror."""

    def __init__(
        self,
        settings: Settings,
        ledger: SqliteLedger,
        *,
        require_vault: bool,
        policy: Policy | None = None,
    ) -> None:
        self.settings = settings
        # the policy in force, loaded by the caller: it stamps events that name none, and
        # its text is kept once in the ledger for evidence packs
        self.policy = policy
        self.ledger = ledger
        self.require_vault = require_vault
        self.mirror: VaultMirror | None = None
        self._vault_error: Error | None = None
        self._unmarked: list[tuple[int, int]] = []
        self._unmarked_paths: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        self._pinned = False
        self._recorded = False
        self._policy_kept = False
        if settings.vault.addr:
            from keycourier.ledger.mirror import VaultMirror

            self.mirror = VaultMirror(settings)

    def __enter__(self) -> LedgerRecorder:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- Recorder protocol -------------------------------------------------------------

    def decision_lock(self) -> contextlib.AbstractContextManager[None]:
        """This ledger's decision lock (``decision_lock``): hold it across a check of the
        ledger's state and the event recorded from it."""
        return decision_lock(self.settings)

    def _remember_policy(self, digest: str | None) -> None:
        """Keep the text of the policy in force in the ledger once per recorder, for
        evidence packs (an event names it by digest)."""
        if self._policy_kept or self.policy is None or digest != self.policy.digest:
            return
        self._policy_kept = True
        self.ledger.remember_policy(digest, self.policy.canonical)

    def record(self, event: Event) -> RecordOutcome:
        """Append locally (always, first), then deliver to Vault when configured.

        An event that names no policy digest gets the digest of the policy the
        recorder was opened with, so every ledger event says under which policy it
        happened. The recorder never loads a policy itself: the caller does (none when
        it could not be loaded).
        """
        from keycourier.ledger.mirror import path_for, record_for

        if event.policy_digest is None and self.policy is not None:
            from keycourier._record import replace

            event = replace(event, policy_digest=self.policy.digest)
        ledger_id = self.ledger.ledger_id
        self._remember_policy(event.policy_digest)
        if self.mirror is None:
            stored = self.ledger.append(event, VaultStatus.DISABLED, None)
            return RecordOutcome(stored.seq, VaultStatus.DISABLED, "no Vault configured")

        def where(seq: int) -> str:
            return path_for(event, ledger_id=ledger_id, seq=seq)

        stored, body, path = self.ledger.append_full(event, VaultStatus.PENDING, where)
        assert path is not None  # noqa: S101 - where() always names a path
        self._recorded = True
        try:
            if self._vault_error is not None:
                raise self._vault_error
            self._ensure_pinned()
            known, _ = self.ledger.path_state(path, stored.seq)
            # earlier events of the same bundle (or fingerprint) still pending go first, in
            # ledger order; events delivered in this session but not yet marked are not
            # really pending
            earlier = self._pending_related(path, stored.seq)
            if earlier:
                report = self.sync(paths={*earlier, path}, workers=1)
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
        except IntegrityError as exc:
            self._abort_release(event, stored.seq, exc.message, where)
            raise
        except (UnavailableError, AuthError, ConfigError) as exc:
            # nothing lost: the event is in the ledger; say why Vault did not take it
            self._vault_error = exc
            detail = exc.message
            self.ledger.mark_detail(stored.seq, detail)
            # a rejection hands nothing out: kept as pending, it never fails the command
            if self.require_vault and event.type != EventType.REJECTED:
                kept = f"event #{stored.seq} is kept in the local ledger as pending"
                voided = self._abort_release(event, stored.seq, detail, where)
                if voided is not None:
                    kept = (
                        f"nothing was released: event #{stored.seq} and event #{voided}, "
                        f"which records that it was aborted, are kept in the local ledger "
                        "as pending"
                    )
                raise type(exc)(
                    f"{exc.message}; {kept}",
                    hints=[*exc.hints, "run 'keycourier sync' when Vault is back"],
                ) from None
            return RecordOutcome(stored.seq, VaultStatus.PENDING, detail)
        if self.ledger.appended_since_checkpoint == 0:
            # this append signed a periodic checkpoint: witness it now, not only at close
            self._witness_quietly(alarms=False)
        return RecordOutcome(stored.seq, VaultStatus.RECORDED)

    def _pending_related(self, path: str, seq: int) -> set[str]:
        """Paths of the pending events before ``seq`` of the same bundle or fingerprint."""
        from keycourier.ledger.mirror import appendable

        parts = path.split("/")
        if len(parts) != 5 or parts[3] != "events":
            return set()  # an event without a bundle: nothing to keep in order with
        legacy = "/".join(parts[:3])
        found = self.ledger.pending_paths(legacy + "/events/", legacy, seq)
        return {p for p in found if p not in self._unmarked_paths or appendable(p)}

    def _abort_release(
        self, event: Event, seq: int, reason: str, where: Callable[[int], str]
    ) -> int | None:
        """After a release event whose command fails (nothing is released), append a
        `release_aborted` event naming it, so that neither the ledger nor (once synced) Vault
        claims the release. Append-only: event #seq itself stays as it was hashed."""
        if event.type not in RELEASES:
            return None
        stored, _, _ = self.ledger.append_full(
            abort_event(event, seq, reason), VaultStatus.PENDING, where
        )
        self.ledger.mark_detail(stored.seq, reason)
        return stored.seq

    # -- witnessed checkpoints ------------------------------------------------------------

    def _witness_key(self) -> str:
        return "vault_witnessed|" + self._pin_mark()

    def unwitnessed_checkpoints(self) -> list[tuple[int, str, str, str]]:
        """The local checkpoints not yet witnessed in the configured Vault."""
        done = self.ledger.meta_value(self._witness_key())
        return self.ledger.checkpoints_after(int(done) if done and done.isdigit() else 0)

    def witness_checkpoints(self) -> int:
        """Write each unwitnessed checkpoint to Vault once (cas=0); the number written.

        Unavailable/Auth/Config errors leave them pending (``sync`` retries); a
        different checkpoint already witnessed under the same name is an IntegrityError.
        """
        if self.mirror is None:
            return 0
        todo = self.unwitnessed_checkpoints()
        if not todo:
            return 0
        self._ensure_pinned()
        for seq, head_hash, signed_at, signature in todo:
            record: dict[str, Any] = {
                "ledger": self.ledger.ledger_id,
                "seq": seq,
                "head_hash": head_hash,
                "signed_at": signed_at,
                "signature": signature,
                "public_key": self.ledger.public_key,
            }
            if (signed_tree := self.ledger.note_at(seq)) is not None:
                record["note"] = signed_tree  # the C2SP checkpoint of the same events
            self.mirror.witness_checkpoint(record)
            self.ledger.set_meta_value(self._witness_key(), str(seq))
        return len(todo)

    def _witness_quietly(self, *, alarms: bool = True) -> str:
        """Witness pending checkpoints; why Vault did not take them ("" when it did).

        With ``alarms`` (sync) a conflicting record in Vault raises IntegrityError; without
        (when a recorder closes) it too leaves the checkpoints pending for sync to report.
        """
        try:
            self.witness_checkpoints()
        except (UnavailableError, AuthError, ConfigError) as exc:
            return exc.message
        except IntegrityError as exc:
            if alarms:
                raise
            return exc.message
        return ""

    def _pin_mark(self) -> str:
        vs = self.settings.vault
        return f"{vs.addr}|{vs.namespace or ''}|{vs.mount}"

    def _ensure_pinned(self) -> None:
        """Pin this ledger's checkpoint key in Vault once per Vault (cas=0; a clash is exit 4)."""
        if self.mirror is None or self._pinned:
            return
        mark = self._pin_mark()
        if self.ledger.meta_value("vault_pin") != mark:
            self.mirror.pin(self.ledger.ledger_id, self.ledger.public_key)
            self.mirror.pin_machine(
                witness_name(self.settings), self.ledger.ledger_id, self.ledger.public_key
            )
            self.ledger.set_meta_value("vault_pin", mark)
        self._pinned = True

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

    def history_by_data(self, name: str, value: str) -> Sequence[StoredEvent]:
        self.flush()
        return self.ledger.history_by_data(name, value)

    def close(self) -> None:
        try:
            self.flush()
            if self.ledger.appended_since_checkpoint:
                self.ledger.checkpoint()
            if self._recorded and self.mirror is not None and self._vault_error is None:
                # kept pending when Vault is unavailable: the next recording or sync witnesses it
                self._witness_quietly(alarms=False)
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

        from keycourier.ledger.mirror import record_for

        pending = [
            d for d in self.ledger.pending() if d.path and (paths is None or d.path in paths)
        ]
        if not pending:
            why = self._witness_quietly() if paths is None and self.mirror is not None else ""
            return SyncReport(0, 0, 0, self.ledger.pending_count(), unavailable=why)
        if self.mirror is None:
            raise UsageError(
                f"{len(pending)} event(s) are pending but no Vault is configured",
                hints=["set VAULT_ADDR (and a token) to deliver them"],
            )
        mirror = self.mirror
        try:
            mirror.fast()  # log in once, before the threads start
            self._ensure_pinned()
        except (UnavailableError, AuthError, ConfigError) as exc:
            return SyncReport(
                len(pending), 0, 0, self.ledger.pending_count(), unavailable=exc.message
            )
        from keycourier.ledger.mirror import current_path

        groups: dict[str, list[Delivery]] = {}
        for d in pending:
            path = current_path(
                str(d.path), d.stored.event, ledger_id=self.ledger.ledger_id, seq=d.stored.seq
            )
            if path != d.path:  # recorded under the older appendable layout
                self.ledger.set_path(d.stored.seq, path)
            groups.setdefault(path, []).append(d)
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
        if paths is None:
            unavailable = unavailable or self._witness_quietly()
        return SyncReport(
            attempted=len(pending),
            delivered=len(delivered),
            already_present=reused_total,
            remaining=self.ledger.pending_count(),
            conflicts=tuple(sorted(conflicts, key=lambda c: c.seq)),
            unavailable=unavailable,
        )

    # -- audit -------------------------------------------------------------------------

    def verify(self, *, vault: bool = False, since: Path | None = None) -> AuditReport:
        """The chain, and with ``vault`` its Vault records, and with ``since`` an exported
        checkpoint (``audit checkpoint``) that the ledger must still contain."""
        from keycourier._record import replace

        exported = None if since is None else read_checkpoint(since)
        self.flush()
        chain_report = self.ledger.verify()
        pending = self.ledger.pending_count()
        if not vault:
            report = AuditReport(chain=chain_report, pending=pending)
        elif self.mirror is None:
            raise UsageError("--vault needs a configured Vault", hints=["set VAULT_ADDR"])
        else:
            report = self._cross_check(chain_report, pending)
        if exported is None or since is None:
            return report
        return replace(report, since_breaks=check_exported(self.ledger, exported, str(since)))

    def _cross_check(self, chain_report: ChainReport, pending: int) -> AuditReport:
        """Both directions: every delivered event is in Vault as recorded, and every Vault
        record of this ledger is in the local ledger, identical (a removed tail shows here)."""
        from keycourier.ledger.mirror import event_path_seq, record_for, same_record

        assert self.mirror is not None  # noqa: S101 - checked by the caller
        mirror = self.mirror
        ledger_id = self.ledger.ledger_id
        local_head = self.ledger.head()[0]
        breaks: list[VaultBreak] = []
        notes: list[str] = []
        self._check_pin(breaks, notes)
        self._check_witnessed(breaks, notes)
        by_path: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
        for seq, path, version, body, prev, digest in self.ledger.delivered():
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
            mine = self._check_delivered(path, versions, rows, breaks)
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
                row = self.ledger.event_row(seq)
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
                    status, _, local_version = self.ledger.delivery_of(seq)
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

    def _check_pin(self, breaks: list[VaultBreak], notes: list[str]) -> None:
        """The checkpoint key in the ledger must be the one pinned in Vault."""
        assert self.mirror is not None  # noqa: S101 - checked by the caller
        ledger_id = self.ledger.ledger_id
        pinned = self.mirror.pinned_key(ledger_id)
        if pinned is None:
            notes.append(
                f"no checkpoint key is pinned in Vault for ledger {ledger_id} yet "
                "(the next recorded event or 'keycourier sync' pins it)"
            )
        elif pinned != self.ledger.public_key:
            breaks.append(
                VaultBreak(
                    0,
                    f"the ledger's checkpoint key differs from the one pinned in Vault for "
                    f"ledger {ledger_id}: the ledger was rewritten with another key",
                )
            )

    def _check_witnessed(self, breaks: list[VaultBreak], notes: list[str]) -> None:
        """The ledger Vault has seen on this machine, and every checkpoint it witnessed,
        against the local ledger: another ID or key, a witnessed head beyond the local
        head (rolled back or truncated) or a different hash are breaks."""
        assert self.mirror is not None  # noqa: S101 - checked by the caller
        ledger_id = self.ledger.ledger_id
        name = witness_name(self.settings)
        seen = self.mirror.machine_record(name)
        if seen is not None and (
            seen.get("ledger") != ledger_id or seen.get("public_key") != self.ledger.public_key
        ):
            breaks.append(
                VaultBreak(
                    0,
                    f"Vault has seen ledger {printable(str(seen.get('ledger')))} with another "
                    f"checkpoint key on this machine ({name}); the local ledger is {ledger_id}: "
                    "the ledger file was replaced",
                )
            )
        local_head = self.ledger.head()[0]
        for path, found in self.mirror.checkpoints(ledger_id):
            data = found.data if found is not None else None
            if not data:
                breaks.append(VaultBreak(0, f"witnessed checkpoint {path} was deleted"))
                continue
            seq = data.get("seq")
            head_hash = data.get("head_hash")
            if not isinstance(seq, int) or not isinstance(head_hash, str):
                breaks.append(VaultBreak(0, f"witnessed checkpoint {path} is malformed"))
                continue
            if not _checkpoint_signed(self.ledger.public_key, ledger_id, data):
                breaks.append(
                    VaultBreak(seq, f"witnessed checkpoint {path} has no valid signature")
                )
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
            row = self.ledger.event_row(seq)
            if row is None or row[2] != head_hash:
                breaks.append(
                    VaultBreak(
                        seq,
                        f"the local chain differs from checkpoint #{seq} witnessed in Vault "
                        f"(head hash {printable(head_hash[:16])}...)",
                    )
                )
        pending = len(self.unwitnessed_checkpoints())
        if pending:
            notes.append(
                f"{pending} local checkpoint(s) not yet witnessed in Vault "
                "('keycourier sync' delivers them)"
            )

    def _check_delivered(
        self,
        path: str,
        versions: Mapping[int, KvVersion],
        rows: list[tuple[int, int, dict[str, Any]]],
        breaks: list[VaultBreak],
    ) -> dict[int, int]:
        """Check the locally recorded deliveries to one path; {Vault version: seq} matched."""
        from keycourier.ledger.mirror import SIGNATURE, same_record

        assert self.mirror is not None  # noqa: S101 - checked by the caller
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
            elif self.mirror.transit_key:
                signature = found.data.get(SIGNATURE)
                if not isinstance(signature, str) or not self.mirror.verify_signature(
                    str(expected["hash"]), signature
                ):
                    breaks.append(VaultBreak(seq, f"{where} lacks a valid Transit signature"))
            mine[version] = seq
        return mine

    # -- bundle state ------------------------------------------------------------------

    def shared_events(self, bundle_id: str) -> list[Event] | None:
        """The Recorder port's view of :meth:`vault_only_events` (None: no Vault)."""
        if self.mirror is None:
            return None
        return [e for _, e in self.vault_only_events(bundle_id)]

    def vault_only_events(self, bundle_id: str) -> list[tuple[str, Event]]:
        """(origin, event) for each version of the bundle's Vault record that no identical
        local event accounts for: origin "foreign" (written by another ledger) or
        "unmatched" (names this ledger but the local ledger lacks it or differs: a removed
        tail, or a forgery). Both count for bundle state: a revoke is a revoke."""
        if self.mirror is None:
            return []
        return self._unaccounted(self.mirror.bundle_events(bundle_id))

    def vault_denied_events(self, fingerprint: str) -> list[tuple[str, Event]]:
        """Like :meth:`vault_only_events`, for the fingerprint's deny record."""
        if self.mirror is None:
            return []
        return self._unaccounted(self.mirror.denied_events(fingerprint))

    def _unaccounted(self, found: list[VaultEvent]) -> list[tuple[str, Event]]:
        mine = self.ledger.ledger_id
        out: list[tuple[str, Event]] = []
        for v in found:
            if v.ledger != mine:
                out.append(("foreign", v.event))
                continue
            row = self.ledger.event_row(v.seq)
            if row is None or row[2] != v.hash:
                out.append(("unmatched", v.event))
        return out


def _checkpoint_signed(public_key: str, ledger_id: str, data: Mapping[str, Any]) -> bool:
    """Whether a witnessed checkpoint record carries this ledger's valid signature."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    from keycourier.ledger import chain

    try:
        message = chain.checkpoint_message(
            ledger_id, int(data["seq"]), str(data["head_hash"]), str(data["signed_at"])
        )
        VerifyKey(bytes.fromhex(public_key)).verify(message, bytes.fromhex(str(data["signature"])))
    except (KeyError, ValueError, TypeError, BadSignatureError):
        return False
    return data.get("ledger") == ledger_id


def witness_name(settings: Settings) -> str:
    """The name this machine's ledger is witnessed under in Vault (keycourier/machines/):
    the host name and a digest of the ledger file's absolute path."""
    import hashlib
    import socket

    host = (
        "".join(
            ch if ch.isascii() and (ch.isalnum() or ch in "-.") else "_"
            for ch in socket.gethostname()
        )[:64]
        or "host"
    )
    where = str(settings.ledger_path.expanduser().resolve())
    return f"{host}-{hashlib.sha256(where.encode()).hexdigest()[:16]}"


# -- exported checkpoints ------------------------------------------------------------------


MAX_CHECKPOINT_BYTES = 16 * 1024


def read_checkpoint(path: Path) -> str:
    """An exported checkpoint file's text (exit 2 unreadable, 4 not a checkpoint)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CHECKPOINT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the checkpoint {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        text = ""
    if len(data) > MAX_CHECKPOINT_BYTES or "\n\n\u2014 " not in text:
        raise IntegrityError(
            f"{path} is not a keycourier checkpoint (a C2SP signed note; see docs/audit.md)"
        )
    return text


def check_exported(ledger: SqliteLedger, text: str, where: str) -> tuple[tuple[int, str], ...]:
    """(seq, reason) for each way the ledger contradicts a checkpoint exported from it:
    another ledger or key (seq 0), fewer events (the first missing seq), other events
    among those it signed (its size): an RFC 6962 consistency proof from its tree to
    today's must verify."""
    breaks: list[tuple[int, str]] = []
    body = text.split("\n\n", 1)[0] + "\n"
    try:
        claimed = tlog_checkpoint.parse(body)
    except tlog_checkpoint.CheckpointError as exc:
        raise IntegrityError(f"{where} is not a keycourier checkpoint ({exc})") from None
    if claimed.origin != ledger.origin:
        return ((0, f"checkpoint {where} is not of this ledger (it is of {claimed.origin})"),)
    try:
        tlog_note.open_note(text, [ledger.verifier()])
    except tlog_note.NoteError:
        breaks.append(
            (
                0,
                f"checkpoint key differs: {where} is not signed by this ledger's key: the "
                "ledger's key was replaced (or the file was altered)",
            )
        )
    head = ledger.head()[0]
    m = claimed.size
    if head < m:
        breaks.append(
            (
                head + 1,
                f"checkpoint {where} signed {m} events but the ledger has {head}: it was "
                "rolled back to an older copy or truncated",
            )
        )
        return tuple(breaks)
    try:
        if m > 0:
            proof = merkle.consistency_proof(m, head, ledger.node)
            merkle.verify_consistency(m, head, claimed.root_hash, ledger.root_at(head), proof)
    except (merkle.ProofError, IntegrityError):
        breaks.append(
            (
                m,
                f"the first {m} events are not the ones checkpoint {where} signed: the ledger "
                "was rewritten",
            )
        )
    return tuple(breaks)


@record
class ExportedCheckpoint:
    ledger_id: str
    events: int
    text: str  # the signed note, ready to print or write


def _verified(recorder: LedgerRecorder) -> SqliteLedger:
    """The recorder's ledger once it verifies (exit 4 otherwise: nothing is signed)."""
    ledger = recorder.ledger
    report = ledger.verify()
    if report.first_break is not None:
        raise IntegrityError(
            f"the ledger is broken at event #{report.first_break.seq}: {report.first_break.reason}",
            hints=["run 'keycourier audit verify' for the details"],
        )
    return ledger


def export_checkpoint(recorder: LedgerRecorder) -> ExportedCheckpoint:
    """The latest signed tree head (a C2SP checkpoint), after signing the head if needed.

    The whole ledger is verified first: one that does not verify (including a
    missing or replaced key) is exit 4 and nothing is signed.
    """
    ledger = _verified(recorder)
    ledger.checkpoint()
    if recorder.mirror is not None:  # witness it now; kept pending for sync if Vault is down
        recorder._witness_quietly(alarms=False)
    latest = ledger.latest_note()
    if latest is None:
        raise UsageError(f"the ledger {ledger.path} has no events yet: nothing to checkpoint")
    size, text = latest
    return ExportedCheckpoint(ledger.ledger_id, size, text)


def ledger_verifier_key(recorder: LedgerRecorder) -> str:
    """The ledger's verifier key line, once its key file is checked against it."""
    recorder.ledger.check_key()
    return recorder.ledger.verifier().vkey()


@record
class EventProof:
    """One event's inclusion proof against a signed tree head (docs/audit.md 1.3)."""

    log_index: int
    tree_size: int
    root_hash: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str  # the signed note text
    body: str  # the event's canonical body: leaf hash SHA-256(0x00 || body)
    verifier_key: str

    def to_json(self) -> dict[str, object]:
        """The shape Rekor users know."""
        return {
            "logIndex": self.log_index,
            "treeSize": self.tree_size,
            "rootHash": self.root_hash.hex(),
            "hashes": [h.hex() for h in self.hashes],
            "checkpoint": self.checkpoint,
            "body": self.body,
        }


def _checkpoint_for(ledger: SqliteLedger, text: str | None) -> tuple[int, bytes, str]:
    """(size, root, note) of ``text`` (a checkpoint of this ledger, verified) or the latest."""
    if text is None:
        ledger.checkpoint()
        latest = ledger.latest_note()
        if latest is None:
            raise UsageError(f"the ledger {ledger.path} has no events yet")
        text = latest[1]
    try:
        opened = tlog_note.open_note(text, [ledger.verifier()])
        cp = tlog_checkpoint.parse(opened.text)
    except (tlog_note.NoteError, tlog_checkpoint.CheckpointError) as exc:
        raise IntegrityError(
            f"the checkpoint is not a signed tree head of this ledger ({exc})"
        ) from None
    if cp.origin != ledger.origin or cp.size > ledger.head()[0]:
        raise IntegrityError("the checkpoint is not a signed tree head of this ledger")
    return cp.size, cp.root_hash, text


def prove_events(
    recorder: LedgerRecorder, seqs: Sequence[int], *, checkpoint: str | None = None
) -> list[EventProof]:
    """Inclusion proofs of events ``seqs`` against ``checkpoint`` (the latest signed tree
    head, signed first if needed, by default). Each proof is verified before it is
    returned, so a damaged stored tree is an IntegrityError, never a bad proof."""
    ledger = recorder.ledger
    size, root, text = _checkpoint_for(ledger, checkpoint)
    vkey = ledger.verifier().vkey()
    out: list[EventProof] = []
    for seq in seqs:
        body = ledger.event_body(seq)
        if body is None or seq > size:
            raise UsageError(f"event #{seq} is not in the tree of size {size}")
        hashes = merkle.inclusion_proof(seq - 1, size, ledger.node)
        try:
            merkle.verify_inclusion(seq - 1, size, merkle.leaf_hash(body.encode()), hashes, root)
        except merkle.ProofError:
            raise IntegrityError(
                f"ledger {ledger.path} is damaged: its stored tree does not prove event #{seq}",
                hints=["run 'keycourier audit verify'"],
            ) from None
        out.append(EventProof(seq - 1, size, root, tuple(hashes), text, body, vkey))
    return out


def prove_event(recorder: LedgerRecorder, seq: int) -> EventProof:
    """Event ``seq``'s inclusion proof against the latest signed tree head."""
    return prove_events(recorder, [seq])[0]


def open_recorder(
    settings: Settings, *, require_vault: bool = False, policy: Policy | None = None
) -> LedgerRecorder:
    """The ledger at ``settings.ledger_path`` (created on first use) plus the Vault mirror.
    ``policy`` is the policy in force, loaded by the caller: events that name no policy are
    stamped with it (``LedgerRecorder.record``)."""
    from keycourier.ledger.sqlite import SqliteLedger

    ledger = SqliteLedger(settings.ledger_path)
    return LedgerRecorder(settings, ledger, require_vault=require_vault, policy=policy)


_LOCKS_HELD: dict[Path, int] = {}  # lock path -> depth, in this process


@contextlib.contextmanager
def decision_lock(settings: Settings) -> Iterator[None]:
    """Hold the ledger's decision lock: an exclusive ``flock`` on ``<ledger>.lock`` (0600).

    For a command that decides from the ledger's state and then records the outcome
    (``open``: not opened yet, so record `opened`): another process doing the same on this
    ledger waits, so both cannot pass the check. Appends alone do not need it (SQLite
    orders them); the lock goes with the process that holds it, even when it is killed.
    Re-entrant within a process (``ingest`` holds it across the open it calls).
    """
    import fcntl
    import os

    path = settings.ledger_path.with_name(settings.ledger_path.name + ".lock")
    if _LOCKS_HELD.get(path):
        _LOCKS_HELD[path] += 1
        try:
            yield
        finally:
            _LOCKS_HELD[path] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the ledger lock {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _LOCKS_HELD[path] = 1
        yield
    finally:
        _LOCKS_HELD.pop(path, None)
        os.close(fd)


def abort_event(event: Event, seq: int, reason: str) -> Event:
    """The `release_aborted` event that voids release event #``seq`` (``event``) of this
    chain: the same actor, bundle and fingerprint, ``data.released`` false."""
    from keycourier._record import replace

    return replace(
        event,
        type=EventType.RELEASE_ABORTED,
        at=max(event.at, datetime.now(UTC)),
        data={
            "aborts_seq": seq,
            "aborted_type": str(event.type),
            "released": False,
            "reason": reason,
        },
    )


def _vault_event_trusted(
    event: Event, *, senders: Sequence[str], own: Sequence[str]
) -> tuple[bool, str]:
    """Whether an event read from Vault may be acted on, and why not.

    Anyone whose token may create records can write any event, so only the signature
    counts: a revoke or a seal by the bundle's sender key or a key the reader trusts,
    an open or an ingest by those or by the reader's own key.
    """
    import base64

    from keycourier.bundle.identity import signing_fingerprint
    from keycourier.ledger.signed import key_trusted, signer_of

    signer = signer_of(event)
    if signer is None:
        return False, "it is not signed"
    if event.type in {EventType.REVOKED, EventType.SEALED}:
        keys = list(senders)
    elif event.type in {EventType.OPENED, EventType.INGESTED}:
        keys = [*senders, *own]
    elif event.type == EventType.SUPERSEDED:
        keys = list(own)  # only the receiver retires what it stored
    else:
        return False, "its type is not taken from Vault"
    if key_trusted(signer, keys):
        return True, ""
    who = signing_fingerprint(base64.b64decode(signer.split(":", 1)[1]))
    if event.type == EventType.OPENED:
        return False, (
            f"it is signed by {who}, a key this reader does not trust: possible interception "
            "(another recipient opened it) or a forged record"
        )
    return False, f"it is signed by {who}, a key this reader does not trust"


def bundle_state(
    recorder: Recorder,
    bundle_id: str,
    *,
    trusted: Sequence[str] = (),
    own_key: str | None = None,
) -> BundleState:
    """Opened / revoked / sealed facts from the local ledger and, when reachable, Vault.

    Events of the local ledger (this machine's own chain) count as they are. Events
    found only in Vault count only when signed by a key in ``trusted`` (the sender
    keys the reader trusts, the bundle's sender key among them) or, for opened and
    ingested events, by ``own_key``; the others are listed in ``ignored``.
    """
    local = recorder.history(bundle_id=bundle_id)
    events = [s.event for s in local]
    # A `release_aborted` event voids a sealed/opened event of this machine's own chain
    # only (see _voided_local). Records of other ledgers in Vault are not chain-verified
    # here and anyone with write access to the shared record could append one, so an
    # abort found there never hides an open or a revoke: fail safe (--allow-reopen).
    voided = _voided_local(local)
    live = [s.event for s in local if s.seq not in voided]
    vault_checked = False
    detail = ""
    ignored: list[str] = []
    found: Sequence[Event] = []
    try:
        shared = recorder.shared_events(bundle_id)
    except (UnavailableError, AuthError) as exc:
        detail = exc.message
    else:
        if shared is None:
            detail = "no Vault configured"
        else:
            found, vault_checked = shared, True
    own = [own_key] if own_key else []
    for e in found:
        ok, why = _vault_event_trusted(e, senders=trusted, own=own)
        if e.bundle_id != bundle_id:  # a signed event copied from another bundle's record
            ok, why = False, "it names another bundle"
        if ok:
            events.append(e)
            live.append(e)
        elif e.type in {EventType.REVOKED, EventType.OPENED, EventType.INGESTED}:
            ignored.append(
                f"a '{e.type}' event for bundle {printable(bundle_id)} found in Vault "
                f"(actor {printable(e.actor[:80])}) is not acted on: {why}"
            )
    events.sort(key=lambda e: e.at)
    events = [_printable_event(e) for e in events]
    live.sort(key=lambda e: e.at)
    opened: list[str] = []
    revoked: str | None = None
    sealed_by: str | None = None
    ingested: list[str] = []
    superseded_by: str | None = None
    opens = sum(1 for e in live if e.type == EventType.OPENED)
    for e in (_printable_event(e) for e in live):
        if e.type == EventType.OPENED and e.actor not in opened:
            opened.append(e.actor)
        elif e.type == EventType.REVOKED and revoked is None:
            revoked = str(e.data.get("reason") or "no reason recorded")
        elif e.type == EventType.SEALED and sealed_by is None:
            sealed_by = e.actor
        elif e.type == EventType.INGESTED:
            ingested.append(str(e.data.get("vault_path", "")))
        elif e.type == EventType.SUPERSEDED and superseded_by is None:
            superseded_by = str(e.data.get("superseded_by") or "a later bundle")
    return BundleState(
        bundle_id=bundle_id,
        opened_by=tuple(opened),
        revoked=revoked,
        sealed_by=sealed_by,
        ingested_to=tuple(ingested),
        vault_checked=vault_checked,
        vault_detail=detail,
        events=tuple(events),
        ignored=tuple(ignored),
        opens=opens,
        superseded_by=superseded_by,
    )


@record
class Unconfirmed:
    """A bundle this ledger sealed that no verified receipt confirms (docs/receipts.md)."""

    bundle_id: str
    sealed_at: datetime
    partner: str | None
    platform: str | None
    fingerprint: str | None
    state: str  # "awaiting receipt", "revoked" or "expired"

    def to_json(self) -> dict[str, object]:
        return {
            "bundle_id": self.bundle_id,
            "sealed_at": _seconds(self.sealed_at),
            "partner": self.partner,
            "platform": self.platform,
            "fingerprint": self.fingerprint,
            "state": self.state,
        }


def unconfirmed(
    events: Iterable[StoredEvent], *, now: datetime, older_than: timedelta
) -> list[Unconfirmed]:
    """The bundles sealed here at least ``older_than`` ago with no `receipt_verified`,
    oldest first; a revoked or expired one says so (it needs no receipt, but a follow-up)."""
    local = list(events)
    voided = _voided_local(local)
    sealed: dict[str, StoredEvent] = {}
    confirmed: set[str] = set()
    revoked: set[str] = set()
    for stored in local:
        e = stored.event
        if e.bundle_id is None:
            continue
        if e.type == EventType.SEALED and stored.seq not in voided:
            sealed.setdefault(e.bundle_id, stored)
        elif e.type == EventType.RECEIPT_VERIFIED:
            confirmed.add(e.bundle_id)
        elif e.type == EventType.REVOKED:
            revoked.add(e.bundle_id)
    out: list[Unconfirmed] = []
    for bundle_id, stored in sealed.items():
        e = stored.event
        if bundle_id in confirmed or now - e.at < older_than:
            continue
        expires = _time_or_none(e.data.get("expires_at"))
        if bundle_id in revoked:
            state = "revoked"
        elif expires is not None and expires <= now:
            state = "expired"
        else:
            state = "awaiting receipt"
        partner, platform = e.data.get("partner"), e.data.get("platform")
        out.append(
            Unconfirmed(
                bundle_id=bundle_id,
                sealed_at=e.at,
                partner=printable(partner) if isinstance(partner, str) else None,
                platform=printable(platform) if isinstance(platform, str) else None,
                fingerprint=e.fingerprint,
                state=state,
            )
        )
    return sorted(out, key=lambda u: u.sealed_at)


@record
class Stale:
    """Credentials whose current version at a Vault path is older than a rotation period."""

    vault_path: str
    fingerprint: str | None
    bundle_id: str | None
    kv_version: int | None
    ingested_at: datetime
    platform: str | None
    partner: str | None

    def to_json(self, now: datetime) -> dict[str, object]:
        return {
            "vault_path": self.vault_path,
            "fingerprint": self.fingerprint,
            "bundle_id": self.bundle_id,
            "kv_version": self.kv_version,
            "ingested_at": _seconds(self.ingested_at),
            "age_days": (now - self.ingested_at).days,
            "platform": self.platform,
            "partner": self.partner,
        }


def stale(events: Iterable[StoredEvent], *, now: datetime, older_than: timedelta) -> list[Stale]:
    """Per Vault path, the latest `ingested` event of this ledger (the version in use), when
    it is at least ``older_than`` old: credentials due for rotation, oldest first."""
    current: dict[str, Event] = {}
    for stored in events:
        e = stored.event
        path = e.data.get("vault_path")
        if e.type == EventType.INGESTED and isinstance(path, str):
            current[path] = e
    out: list[Stale] = []
    for path, e in current.items():
        if now - e.at < older_than:
            continue
        version = e.data.get("kv_version")
        platform, partner = e.data.get("platform"), e.data.get("partner")
        out.append(
            Stale(
                vault_path=printable(path),
                fingerprint=e.fingerprint,
                bundle_id=e.bundle_id,
                kv_version=version if isinstance(version, int) else None,
                ingested_at=e.at,
                platform=printable(platform) if isinstance(platform, str) else None,
                partner=printable(partner) if isinstance(partner, str) else None,
            )
        )
    return sorted(out, key=lambda x: x.ingested_at)


def _seconds(at: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``, as manifests and receipts write times (event times keep
    their microseconds: ``chain.format_time``)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_or_none(value: object) -> datetime | None:
    """A manifest time (``YYYY-MM-DDTHH:MM:SSZ``) from event data, None if it is not one."""
    if not isinstance(value, str) or len(value) != 20:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _voided_local(local: Sequence[StoredEvent]) -> set[int]:
    """The seqs of this chain's releases that a later `release_aborted` voids.

    Honoured only when the abort names a sealed/opened event earlier in the same
    chain, of the type it says, by the same actor, for the same bundle: never a
    revoke or an ingest, never an event of another source.
    """
    by_seq = {s.seq: s.event for s in local}
    out: set[int] = set()
    for stored in local:
        abort = stored.event
        if abort.type != EventType.RELEASE_ABORTED:
            continue
        seq = abort.data.get("aborts_seq")
        if not isinstance(seq, int) or seq >= stored.seq:
            continue
        target = by_seq.get(seq)
        if (
            target is not None
            and target.type in RELEASES
            and abort.data.get("aborted_type") == str(target.type)
            and target.actor == abort.actor
            and target.bundle_id == abort.bundle_id
        ):
            out.add(seq)
    return out


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int = 512) -> str:
    """Text from a record (Vault's, or anyone's) made safe for a terminal: control,
    format (bidi) and other unprintable characters become visible escapes."""
    if text.isprintable() and len(text) <= limit:
        return text
    out = "".join(ch if ch.isprintable() else _escape(ch) for ch in text[:limit])
    return out + ("..." if len(text) > limit else "")


def _printable_value(value: Any) -> Any:  # noqa: ANN401 - any JSON value
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_printable_value(v) for v in value]
    if isinstance(value, dict):
        return {printable(str(k)): _printable_value(v) for k, v in value.items()}
    return value


def _printable_event(e: Event) -> Event:
    from keycourier._record import replace

    return replace(
        e,
        actor=printable(e.actor),
        bundle_id=None if e.bundle_id is None else printable(e.bundle_id),
        fingerprint=None if e.fingerprint is None else printable(e.fingerprint),
        policy_digest=None if e.policy_digest is None else printable(e.policy_digest),
        data=_printable_value(dict(e.data)),
    )


def denied_lookup(settings: Settings) -> Callable[[str], str | None]:
    """A deny-list look-up: the local ledger's `denied_fingerprint` events, then (when a
    Vault is configured and reachable) the fingerprint's deny record in Vault, written by
    any ledger. One Vault read per look-up. With no ledger file nothing is created."""

    def local(recorder: Recorder, fingerprint: str) -> str | None:
        for stored in recorder.history(fingerprint=fingerprint):
            event = stored.event
            if event.type == EventType.DENIED_FINGERPRINT and event.fingerprint == fingerprint:
                return str(event.data.get("reason", "")) or "(no reason recorded)"
        return None

    def in_vault(found: list[VaultEvent], fingerprint: str) -> str | None:
        for v in found:
            e = v.event
            if e.type == EventType.DENIED_FINGERPRINT and e.fingerprint == fingerprint:
                reason = printable(str(e.data.get("reason", ""))) or "(no reason recorded)"
                return f"{reason} (recorded in Vault by ledger {printable(v.ledger)})"
        return None

    def lookup(fingerprint: str) -> str | None:
        from keycourier.ledger.mirror import VaultMirror

        if settings.ledger_path.exists():
            with open_recorder(settings) as recorder:
                reason = local(recorder, fingerprint)
                if reason is not None or recorder.mirror is None:
                    return reason
                mirror = recorder.mirror
                try:
                    return in_vault(mirror.denied_events(fingerprint), fingerprint)
                except (UnavailableError, AuthError, ConfigError, UsageError):
                    return None
        if not settings.vault.addr:
            return None
        mirror = VaultMirror(settings)
        try:
            return in_vault(mirror.denied_events(fingerprint), fingerprint)
        except (UnavailableError, AuthError, ConfigError, UsageError):
            return None
        finally:
            mirror.close()

    return lookup


# -- export ----------------------------------------------------------------------------


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


CSV_FIELDS = (
    "time",
    "seq",
    "type",
    "actor",
    "partner",
    "platform",
    "environment",
    "bundle_id",
    "fingerprint",
    "vault_path",
    "vault_version",
    "policy_digest",
    "detail",
    "vault_status",
)
_CSV_FROM_DATA = ("partner", "platform", "environment", "vault_path", "vault_version")


def _csv_value(value: Any) -> str:  # noqa: ANN401 - any JSON value
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def csv_row(stored: StoredEvent) -> dict[str, str]:
    """One flat spreadsheet row: the common fields as columns, the rest of ``data`` in detail."""
    from keycourier.ledger.chain import format_time

    e = stored.event
    data = dict(e.data)
    row = {
        "time": format_time(e.at),
        "seq": str(stored.seq),
        "type": str(e.type),
        "actor": e.actor,
        "bundle_id": e.bundle_id or "",
        "fingerprint": e.fingerprint or "",
        "policy_digest": e.policy_digest or "",
        "vault_status": str(stored.vault_status),
    }
    for key in _CSV_FROM_DATA:
        row[key] = _csv_value(data.pop(key, None))
    if not row["vault_version"]:  # ingest records the KV version as kv_version
        row["vault_version"] = _csv_value(data.pop("kv_version", None))
    row["detail"] = "; ".join(f"{k}={_csv_value(v)}" for k, v in sorted(data.items()))
    return row


def export(
    events: Iterator[StoredEvent], fmt: str, *, since: datetime | None = None
) -> Iterator[str]:
    """JSON lines (every field) or CSV (flat columns, header first), one string per line."""
    if fmt not in {"jsonl", "csv"}:
        raise UsageError("export format must be jsonl or csv")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    if fmt == "csv":
        writer.writeheader()
        yield buf.getvalue()
    for stored in events:
        if since is not None and stored.event.at < since:
            continue
        if fmt == "jsonl":
            yield json.dumps(export_row(stored), sort_keys=True, ensure_ascii=False) + "\n"
        else:
            buf.seek(0)
            buf.truncate()
            writer.writerow(csv_row(stored))
            yield buf.getvalue()


def timeline(recorder: LedgerRecorder, key: str) -> list[tuple[str, Event, str]]:
    """(source, event, vault_status) of a bundle ID, a credential fingerprint, a connection
    ID or an entity/organization ID, oldest first. Bundles are also looked up in Vault."""
    local = _local_matches(recorder, key)
    out: list[tuple[str, Event, str]] = [("ledger", s.event, str(s.vault_status)) for s in local]
    bundle_ids = {s.event.bundle_id for s in local if s.event.bundle_id} or (
        {key} if not local else set()
    )
    if recorder.mirror is not None:
        for bid in sorted(bundle_ids):
            try:
                found = recorder.vault_only_events(bid)
            except (UnavailableError, AuthError, UsageError, ConfigError):
                continue
            out.extend(("vault", _printable_event(e), origin) for origin, e in found)
    out.sort(key=lambda t: t[1].at)
    return out


# the `data` fields of connection events a timeline may be looked up by
TIMELINE_DATA_KEYS = ("connection_id", "entity_id")


def _local_matches(recorder: LedgerRecorder, key: str) -> list[StoredEvent]:
    """This ledger's events whose bundle ID, fingerprint, ``data.connection_id`` or
    ``data.entity_id`` is ``key``, in ledger order (each event once)."""
    found: dict[int, StoredEvent] = {}
    for stored in (
        *recorder.history(bundle_id=key),
        *recorder.history(fingerprint=key),
        *(s for name in TIMELINE_DATA_KEYS for s in recorder.ledger.history_by_data(name, key)),
    ):
        found.setdefault(stored.seq, stored)
    return [found[seq] for seq in sorted(found)]
