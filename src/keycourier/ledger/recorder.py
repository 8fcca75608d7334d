"""The recorder: the local SQLite ledger first, then the Vault mirror; sync of pending
events, verify against Vault, and the decision lock.

``import keycourier.ledger.recorder`` stays cheap: sqlite_utils, hvac and PyNaCl are
imported only when a recorder is opened."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from keycourier._record import replace
from keycourier.errors import (
    AuthError,
    ConfigError,
    Error,
    IntegrityError,
    UnavailableError,
)
from keycourier.ledger.checkpoints import (
    witness_name,
)
from keycourier.ledger.interface import (
    RELEASES,
    Event,
    EventType,
    RecordOutcome,
    StoredEvent,
    VaultStatus,
)

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.ledger.mirror import VaultEvent, VaultMirror
    from keycourier.ledger.sqlite import SqliteLedger
    from keycourier.policy import Policy
from keycourier.ledger.sync import DEFAULT_SYNC_WORKERS, SyncReport, sync_pending
from keycourier.ledger.verify import AuditReport, verify_ledger


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
            # lazy: threading and the Vault client, only when there is a Vault to talk to
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
        # lazy: threading and the Vault client, only when there is a Vault to talk to
        from keycourier.ledger.mirror import path_for, record_for

        if event.policy_digest is None and self.policy is not None:
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
            self.ensure_pinned()
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
            self.witness_quietly(alarms=False)
        return RecordOutcome(stored.seq, VaultStatus.RECORDED)

    def _pending_related(self, path: str, seq: int) -> set[str]:
        """Paths of the pending events before ``seq`` of the same bundle or fingerprint."""
        # lazy: threading and the Vault client, only when there is a Vault to talk to
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
        self.ensure_pinned()
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

    def witness_quietly(self, *, alarms: bool = True) -> str:
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

    def ensure_pinned(self) -> None:
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
                self.witness_quietly(alarms=False)
        finally:
            if self.mirror is not None:
                self.mirror.close()
            self.ledger.close()

    # -- sync and verify (keycourier.ledger.sync, keycourier.ledger.verify) -------------

    def sync(
        self, *, paths: set[str] | None = None, workers: int = DEFAULT_SYNC_WORKERS
    ) -> SyncReport:
        """Deliver pending events to Vault (``ledger.sync.sync_pending``)."""
        return sync_pending(self, paths=paths, workers=workers)

    def verify(self, *, vault: bool = False, since: Path | None = None) -> AuditReport:
        """The chain, and with ``vault`` its Vault records, and with ``since`` an exported
        checkpoint the ledger must still contain (``ledger.verify.verify_ledger``)."""
        return verify_ledger(self, vault=vault, since=since)

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


def open_recorder(
    settings: Settings, *, require_vault: bool = False, policy: Policy | None = None
) -> LedgerRecorder:
    """The ledger at ``settings.ledger_path`` (created on first use) plus the Vault mirror.
    ``policy`` is the policy in force, loaded by the caller: events that name no policy are
    stamped with it (``LedgerRecorder.record``)."""
    # lazy: sqlite3 and the ledger's schema code, when a recorder is opened
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
