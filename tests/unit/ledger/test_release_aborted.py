"""Which `release_aborted` events bundle_state honours (security review of 200f7f7).

A release whose command failed (nothing released) is voided by a following
`release_aborted` of the same chain. Nothing else may be voided: not a revoke
or an ingest, not another actor's or another bundle's event, and never an
event of another ledger found in Vault, where anyone with write access to the
shared record could append a forged abort to hide an interception.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from keycourier.ledger.interface import Event, EventType, StoredEvent
from keycourier.ledger.memory import MemoryRecorder
from keycourier.ledger.mirror import VaultEvent
from keycourier.ledger.recorder import LedgerRecorder
from keycourier.ledger.state import bundle_state

B = "11111111-2222-4333-8444-555555555555"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(kind: EventType, actor: str, minute: int, bundle: str = B, **data: Any) -> Event:
    return Event(kind, T0 + timedelta(minutes=minute), actor, bundle_id=bundle, data=data)


def abort(seq: int, kind: EventType, actor: str, minute: int, bundle: str = B) -> Event:
    return ev(
        EventType.RELEASE_ABORTED, actor, minute, bundle,
        aborts_seq=seq, aborted_type=str(kind), released=False, reason="Vault unreachable",
    )  # fmt: skip


def local(*events: Event) -> MemoryRecorder:
    rec = MemoryRecorder()
    for e in events:
        rec.record(e)
    return rec


class WithVault(LedgerRecorder):
    """bundle_state's view of a recorder with a mirror: local history plus Vault records."""

    def __init__(self, history: Sequence[StoredEvent], vault: Sequence[VaultEvent]) -> None:
        self._history = list(history)
        self._vault = list(vault)
        self.mirror = object()  # type: ignore[assignment]

    def history(
        self, *, bundle_id: str | None = None, fingerprint: str | None = None
    ) -> Sequence[StoredEvent]:
        return self._history

    def history_by_data(self, name: str, value: str) -> Sequence[StoredEvent]:
        return [s for s in self._history if s.event.data.get(name) == value]

    def vault_only_events(self, bundle_id: str) -> list[tuple[str, Event]]:
        return [("foreign", v.event) for v in self._vault]


def test_an_abort_voids_the_matching_release_of_its_own_chain() -> None:
    rec = local(ev(EventType.OPENED, "kc-me", 1), abort(1, EventType.OPENED, "kc-me", 2))
    assert bundle_state(rec, B).opened_by == ()
    rec = local(ev(EventType.SEALED, "kc-me", 1), abort(1, EventType.SEALED, "kc-me", 2))
    assert bundle_state(rec, B).sealed_by is None


def test_an_abort_never_voids_a_revoke_or_an_ingest() -> None:
    rec = local(
        ev(EventType.REVOKED, "kc-sender", 1, reason="leaked"),
        abort(1, EventType.OPENED, "kc-sender", 2),
        abort(1, EventType.REVOKED, "kc-sender", 3),
        ev(EventType.INGESTED, "kc-me", 4, vault_path="secret/x"),
        abort(4, EventType.INGESTED, "kc-me", 5),
    )
    state = bundle_state(rec, B)
    assert state.revoked == "leaked"
    assert state.ingested_to == ("secret/x",)


def test_an_abort_must_match_type_actor_bundle_and_come_after() -> None:
    other = "99999999-2222-4333-8444-555555555555"
    rec = local(
        ev(EventType.OPENED, "kc-me", 1),
        abort(1, EventType.SEALED, "kc-me", 2),  # wrong type
        abort(1, EventType.OPENED, "kc-someone-else", 3),  # wrong actor
        abort(1, EventType.OPENED, "kc-me", 4, bundle=other),  # another bundle
        abort(9, EventType.OPENED, "kc-me", 5),  # no such event
    )
    assert bundle_state(rec, B).opened_by == ("kc-me",)


def test_aborts_from_other_ledgers_in_vault_hide_nothing() -> None:
    from keycourier.bundle.identity import KeycourierIdentity
    from keycourier.ledger.signed import sign_event

    sender, interceptor = KeycourierIdentity.generate(), KeycourierIdentity.generate()
    trusted = [sender.public().signing_key, interceptor.public().signing_fingerprint]
    opened = sign_event(ev(EventType.OPENED, "kc-interceptor", 1), interceptor)
    real_open = VaultEvent("L-A", 7, opened, "h1")
    aborted = sign_event(abort(7, EventType.OPENED, "kc-interceptor", 2), interceptor)
    forged = VaultEvent("L-A", 8, aborted, "h2")
    state = bundle_state(WithVault([], [real_open, forged]), B, trusted=trusted)
    assert state.opened_by == ("kc-interceptor",)
    revoked = sign_event(ev(EventType.REVOKED, "kc-sender", 3, reason="sent wrong"), sender)
    revoke = VaultEvent("L-S", 3, revoked, "h3")
    unrevoke = VaultEvent("L-S", 4, abort(3, EventType.OPENED, "kc-sender", 4), "h4")
    assert bundle_state(WithVault([], [revoke, unrevoke]), B, trusted=trusted).revoked == (
        "sent wrong"
    )


def test_vault_events_count_only_when_signed_by_a_trusted_key() -> None:
    from keycourier.bundle.identity import KeycourierIdentity
    from keycourier.ledger.signed import sign_event

    sender, stranger = KeycourierIdentity.generate(), KeycourierIdentity.generate()
    revoke = ev(EventType.REVOKED, "kc-sender", 3, reason="sent wrong")
    signed = sign_event(revoke, sender)
    by_stranger = sign_event(revoke, stranger)
    tampered = Event(
        signed.type, signed.at, signed.actor, bundle_id=signed.bundle_id,
        data={**signed.data, "reason": "something else"},
    )  # fmt: skip
    trusted = [sender.public().signing_fingerprint]
    for event, why in (
        (revoke, "not signed"),
        (by_stranger, "does not trust"),
        (tampered, "not signed"),
        (sign_event(ev(EventType.REVOKED, "x", 3, bundle="other"), sender), "another bundle"),
    ):
        state = bundle_state(WithVault([], [VaultEvent("L", 1, event, "h")]), B, trusted=trusted)
        assert state.revoked is None
        if why is not None:
            assert len(state.ignored) == 1
            assert why in state.ignored[0]
    state = bundle_state(WithVault([], [VaultEvent("L", 1, signed, "h")]), B, trusted=trusted)
    assert state.revoked == "sent wrong"
    assert state.ignored == ()
