"""The receiver's rotation rules (docs/rotation.md), on ledger states built from events.

Each refusal is a PolicyError (exit 7) that names its rule; only `ingested` events that
the receiver itself signed count, whatever else a shared Vault holds.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keycourier.bundle.identity import KeycourierIdentity
from keycourier.errors import PolicyError
from keycourier.ledger.interface import Event, EventType
from keycourier.ledger.service import (
    BundleState,
    Supersession,
    check_supersession,
    unconfirmed,
)
from keycourier.ledger.signed import sign_event

RECEIVER = KeycourierIdentity.generate()
SENDER = KeycourierIdentity.generate()
OTHER = KeycourierIdentity.generate()
OLD = "6f1c2a3b-4d5e-4f70-8a9b-0c1d2e3f4a5b"
NEW = "7a1c2a3b-4d5e-4f70-8a9b-0c1d2e3f4a5b"
PATH = "secret/handed-over/acme/qbo"
AT = datetime(2026, 12, 1, tzinfo=UTC)


def ingested(by: KeycourierIdentity, **data: object) -> Event:
    base: dict[str, object] = {
        "vault_path": PATH,
        "kv_version": 3,
        "platform": "quickbooks",
        "partner": "Acme Ltd",
        "sealed_by": SENDER.public().signing_fingerprint,
    }
    event = Event(
        EventType.INGESTED, AT, by.public().signing_fingerprint, OLD, data={**base, **data}
    )
    return sign_event(event, by)


def check(state: BundleState, **overrides: object) -> Supersession:
    args: dict[str, object] = {
        "own_key": RECEIVER.public().signing_key,
        "new_bundle_id": NEW,
        "sender": SENDER.public().signing_fingerprint,
        "platform": "quickbooks",
        "partner": "Acme Ltd",
        "vault_path": PATH,
    }
    args.update(overrides)
    return check_supersession(state, **args)  # type: ignore[arg-type]


def test_a_fitting_rotation_names_what_it_replaces() -> None:
    got = check(BundleState(OLD, events=(ingested(RECEIVER),)))
    assert got == Supersession(OLD, PATH, 3)


@pytest.mark.parametrize(
    ("events", "overrides", "words"),
    [
        ((), {}, "never ingested here"),
        # an ingest signed by someone else (a sender writing to a shared Vault) is no ingest
        ((ingested(OTHER),), {}, "never ingested here"),
        ((ingested(SENDER),), {}, "never ingested here"),
        ((ingested(RECEIVER),), {"sender": OTHER.public().signing_fingerprint}, "same sender"),
        ((ingested(RECEIVER),), {"partner": "Other Co"}, "was for quickbooks / Acme Ltd"),
        ((ingested(RECEIVER),), {"platform": "xero"}, "was for quickbooks / Acme Ltd"),
        ((ingested(RECEIVER),), {"vault_path": PATH + "2"}, "same path"),
    ],
)
def test_rotations_that_do_not_fit_are_refused(
    events: tuple[Event, ...], overrides: dict[str, object], words: str
) -> None:
    with pytest.raises(PolicyError, match=words):
        check(BundleState(OLD, events=events), **overrides)


def test_a_bundle_replaced_once_is_not_replaced_again() -> None:
    state = BundleState(OLD, events=(ingested(RECEIVER),), superseded_by="another")
    with pytest.raises(PolicyError, match="already superseded by another"):
        check(state)
    assert check(BundleState(OLD, events=(ingested(RECEIVER),), superseded_by=NEW))


def test_unconfirmed_needs_age_and_names_state() -> None:
    from keycourier.ledger.interface import StoredEvent, VaultStatus

    def stored(seq: int, event: Event) -> StoredEvent:
        return StoredEvent(seq, event, "", "", VaultStatus.DISABLED)

    sealed = Event(EventType.SEALED, AT, "me", OLD, data={"expires_at": "2026-12-08T00:00:00Z"})
    later = datetime(2026, 12, 9, tzinfo=UTC)
    rows = unconfirmed([stored(1, sealed)], now=later, older_than=later - AT)
    assert [(r.bundle_id, r.state) for r in rows] == [(OLD, "expired")]
    assert unconfirmed([stored(1, sealed)], now=later, older_than=later - AT + (later - AT)) == []
    verified = Event(EventType.RECEIPT_VERIFIED, later, "me", OLD)
    assert (
        unconfirmed([stored(1, sealed), stored(2, verified)], now=later, older_than=AT - AT) == []
    )
