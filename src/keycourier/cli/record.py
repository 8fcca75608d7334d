"""Recording provenance events from CLI commands, with honest status lines."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from keycourier import files
from keycourier.cli.common import info, warn
from keycourier.errors import Error, UsageError
from keycourier.ledger.interface import VaultStatus
from keycourier.policy import policy_in_force

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.ledger.interface import Event, Recorder, RecordOutcome, StoredEvent
    from keycourier.ledger.recorder import LedgerRecorder


def open_recorder(settings: Settings, *, require_vault: bool = False) -> LedgerRecorder:
    """The command's ledger, stamping events that name no policy with the policy in force
    (the recorder never loads one itself)."""

    # lazy: the ledger, opened at a command's first event (see recording)
    from keycourier.ledger.recorder import open_recorder as _open

    policy = policy_in_force(settings.policy_path)
    return _open(settings, require_vault=require_vault, policy=policy)


@contextlib.contextmanager
def recording(settings: Settings, *, require_vault: bool = False) -> Iterator[LazyRecorder]:
    """A recorder for one command, opened at its first use and closed when the block ends.

    Opened at first use: a command that fails before it reads or records (a bundle that
    does not verify, a policy file that does not load) creates no ledger and touches no
    Vault. When the block fails, its error is the one reported (a failure to close is
    dropped). When it succeeds, its events are committed, so what closing still does
    (delivery marks, the checkpoint, the Vault client) is bookkeeping: a failure there is a
    warning, never a failed command, and a release that follows goes ahead.
    """
    import sqlite3

    recorder = LazyRecorder(settings, require_vault=require_vault)
    try:
        yield recorder
    except BaseException:
        with contextlib.suppress(Error, sqlite3.Error):
            recorder.close()
        raise
    close_after_record(recorder)


class LazyRecorder:
    """The command's ``LedgerRecorder``, opened when first used (see ``recording``)."""

    def __init__(self, settings: Settings, *, require_vault: bool) -> None:
        self._settings = settings
        self._require_vault = require_vault
        self._inner: LedgerRecorder | None = None

    def _open(self) -> LedgerRecorder:
        if self._inner is None:
            self._inner = open_recorder(self._settings, require_vault=self._require_vault)
        return self._inner

    def record(self, event: Event) -> RecordOutcome:
        return self._open().record(event)

    def history(
        self, *, bundle_id: str | None = None, fingerprint: str | None = None
    ) -> Sequence[StoredEvent]:
        return self._open().history(bundle_id=bundle_id, fingerprint=fingerprint)

    def history_by_data(self, name: str, value: str) -> Sequence[StoredEvent]:
        return self._open().history_by_data(name, value)

    def shared_events(self, bundle_id: str) -> Sequence[Event] | None:
        return self._open().shared_events(bundle_id)

    def decision_lock(self) -> contextlib.AbstractContextManager[None]:
        return self._open().decision_lock()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def close_after_record(recorder: Recorder) -> None:
    """Close ``recorder`` whose events are committed; a failure is a warning (see recording)."""
    import sqlite3

    try:
        recorder.close()
    except (Error, sqlite3.Error) as exc:
        detail = exc.message if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
        warn(
            f"the event is on record, but the ledger bookkeeping after it failed ({detail}); "
            "run 'keycourier audit verify' to check the ledger"
        )


class WarnOnClose:
    """A recorder whose ``close`` warns instead of failing (for commands that keep
    recording through a library workflow, such as the connection commands)."""

    def __init__(self, inner: Recorder) -> None:
        self._inner = inner

    def record(self, event: Event) -> RecordOutcome:
        return self._inner.record(event)

    def history(
        self, *, bundle_id: str | None = None, fingerprint: str | None = None
    ) -> Sequence[StoredEvent]:
        return self._inner.history(bundle_id=bundle_id, fingerprint=fingerprint)

    def history_by_data(self, name: str, value: str) -> Sequence[StoredEvent]:
        return self._inner.history_by_data(name, value)

    def shared_events(self, bundle_id: str) -> Sequence[Event] | None:
        return self._inner.shared_events(bundle_id)

    def close(self) -> None:
        close_after_record(self._inner)


def record_event(settings: Settings, event: Event, *, require_vault: bool = False) -> RecordOutcome:
    """Record one event (ledger, then Vault when configured) and say where it went."""
    with recording(settings, require_vault=require_vault) as recorder:
        outcome = recorder.record(event)
    report_outcome(event, outcome)
    return outcome


def report_outcome(event: Event, outcome: RecordOutcome) -> None:
    """Say where the event went; never claim Vault when it is not there."""

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


def write_release(
    settings: Settings, event: Event, outcome: RecordOutcome, output: str, data: bytes
) -> None:
    """Write what release ``event`` (recorded as ``outcome``) hands out to the file ``output``.

    The event is recorded first, so a release is never missing from the ledger.
    A file is written atomically (0600), so when writing fails nothing was
    released: record a `release_aborted` naming the event (in Vault too, when
    configured) so that neither claims it, and fail with exit 2 saying so. A
    device or pipe is written in place: a failure there after part of the data
    went out (``PartialWriteError``) keeps the event, as on stdout.
    """

    try:
        files.write_private(output, data)
    except files.PartialWriteError:
        raise
    except OSError as exc:
        reason = f"cannot write {output}: {exc.strerror}"
    except UsageError as exc:  # a target refused before anything was written
        reason = exc.message
    else:
        return
    from keycourier.ledger.recorder import abort_event  # lazy: as open_recorder above

    aborted = record_event(settings, abort_event(event, outcome.seq, reason))
    raise UsageError(
        f"{reason}; nothing was released (event #{outcome.seq} is voided by event #{aborted.seq})",
        hints=["check the -o path, then run the command again"],
    )
