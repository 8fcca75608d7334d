"""Sync: deliver the ledger's pending events to Vault, per record path in ledger order,
several paths in parallel, and say what could not be delivered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from keycourier._record import record
from keycourier.errors import (
    AuthError,
    ConfigError,
    IntegrityError,
    UnavailableError,
    UsageError,
)

if TYPE_CHECKING:
    from keycourier.ledger.recorder import LedgerRecorder
    from keycourier.ledger.sqlite import Delivery


DEFAULT_SYNC_WORKERS = 8


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


def sync_pending(
    recorder: LedgerRecorder, *, paths: set[str] | None = None, workers: int = DEFAULT_SYNC_WORKERS
) -> SyncReport:
    """Deliver pending events, per record path in ledger order, several paths in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    # lazy: threading and the Vault client, only when there is a Vault to talk to
    from keycourier.ledger.mirror import current_path, record_for

    pending = [
        d for d in recorder.ledger.pending() if d.path and (paths is None or d.path in paths)
    ]
    if not pending:
        why = recorder.witness_quietly() if paths is None and recorder.mirror is not None else ""
        return SyncReport(0, 0, 0, recorder.ledger.pending_count(), unavailable=why)
    if recorder.mirror is None:
        raise UsageError(
            f"{len(pending)} event(s) are pending but no Vault is configured",
            hints=["set VAULT_ADDR (and a token) to deliver them"],
        )
    mirror = recorder.mirror
    try:
        mirror.fast()  # log in once, before the threads start
        recorder.ensure_pinned()
    except (UnavailableError, AuthError, ConfigError) as exc:
        return SyncReport(
            len(pending), 0, 0, recorder.ledger.pending_count(), unavailable=exc.message
        )

    groups: dict[str, list[Delivery]] = {}
    for d in pending:
        path = current_path(
            str(d.path), d.stored.event, ledger_id=recorder.ledger.ledger_id, seq=d.stored.seq
        )
        if path != d.path:  # recorded under the older appendable layout
            recorder.ledger.set_path(d.stored.seq, path)
        groups.setdefault(path, []).append(d)
    known = {path: recorder.ledger.known_version(path) for path in groups}
    ledger_id = recorder.ledger.ledger_id

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
    recorder.ledger.mark_delivered(delivered)
    if paths is None:
        unavailable = unavailable or recorder.witness_quietly()
    return SyncReport(
        attempted=len(pending),
        delivered=len(delivered),
        already_present=reused_total,
        remaining=recorder.ledger.pending_count(),
        conflicts=tuple(sorted(conflicts, key=lambda c: c.seq)),
        unavailable=unavailable,
    )
