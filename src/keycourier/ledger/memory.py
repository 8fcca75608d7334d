"""An in-memory Recorder for unit tests of other packages (same chain, no files, no Vault).

``vault_status`` chooses what every record() reports: DISABLED (default),
RECORDED (pretend Vault took it) or PENDING (pretend Vault was down; with
``require_vault=True`` record() then raises UnavailableError after keeping
the event, like the real recorder).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING

from keycourier._record import replace
from keycourier.errors import UnavailableError
from keycourier.ledger import chain
from keycourier.ledger.interface import Event, EventType, RecordOutcome, StoredEvent, VaultStatus

if TYPE_CHECKING:
    from keycourier.policy import Policy


class MemoryRecorder:
    def __init__(
        self,
        *,
        vault_status: VaultStatus = VaultStatus.DISABLED,
        require_vault: bool = False,
        policy: Policy | None = None,
    ) -> None:
        self.vault_status = vault_status
        self.policy = policy  # stamps events that name no policy, as LedgerRecorder does
        self.require_vault = require_vault
        self.events: list[StoredEvent] = []
        self.closed = False
        self.ledger_id = "memory"
        self._decisions = threading.RLock()
        # events another ledger put in the shared store (Vault); None: no shared store
        self.shared: list[Event] | None = None

    def __enter__(self) -> MemoryRecorder:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def record(self, event: Event) -> RecordOutcome:
        if event.policy_digest is None and self.policy is not None:
            event = replace(event, policy_digest=self.policy.digest)
        seq = len(self.events) + 1
        prev = self.events[-1].hash if self.events else chain.GENESIS
        body = chain.event_body(event, seq=seq, ledger_id=self.ledger_id)
        stored = StoredEvent(seq, event, prev, chain.link_hash(prev, body), self.vault_status)
        self.events.append(stored)
        if self.vault_status == VaultStatus.PENDING:
            if self.require_vault and event.type != EventType.REJECTED:
                raise UnavailableError(f"Vault is unreachable; event #{seq} is kept as pending")
            return RecordOutcome(seq, VaultStatus.PENDING, "Vault is unreachable (memory fake)")
        return RecordOutcome(seq, self.vault_status)

    def history(
        self, *, bundle_id: str | None = None, fingerprint: str | None = None
    ) -> Sequence[StoredEvent]:
        return [
            s
            for s in self.events
            if (bundle_id is None or s.event.bundle_id == bundle_id)
            and (fingerprint is None or s.event.fingerprint == fingerprint)
        ]

    def history_by_data(self, name: str, value: str) -> Sequence[StoredEvent]:
        return [s for s in self.events if s.event.data.get(name) == value]

    def shared_events(self, bundle_id: str) -> Sequence[Event] | None:
        """``shared`` stands for Vault: None (the default) is no Vault configured."""
        if self.shared is None:
            return None
        return [e for e in self.shared if e.bundle_id == bundle_id]

    def decision_lock(self) -> AbstractContextManager[object]:
        return self._decisions

    def close(self) -> None:
        self.closed = True
