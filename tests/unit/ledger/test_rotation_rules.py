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
from keycourier.ledger.rotation import (
    BundleFacts,
    Holder,
    Supersession,
    check_path_claim,
    check_supersession,
    holders,
)
from keycourier.ledger.signed import sign_event
from keycourier.ledger.state import BundleState, unconfirmed

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


def facts(**overrides: object) -> BundleFacts:
    args: dict[str, object] = {
        "bundle_id": NEW,
        "sender": SENDER.public().signing_fingerprint,
        "platform": "quickbooks",
        "partner": "Acme Ltd",
    }
    args.update(overrides)
    return BundleFacts(**args)  # type: ignore[arg-type]


def check(state: BundleState, **overrides: object) -> Supersession:
    vault_path = str(overrides.pop("vault_path", PATH))
    return check_supersession(
        state.events,
        old_bundle_id=state.bundle_id,
        superseded_by=state.superseded_by,
        own_key=RECEIVER.public().signing_key,
        new=facts(**overrides),
        vault_path=vault_path,
    )


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


# -- who may write an occupied path ------------------------------------------------------

OWN = RECEIVER.public().signing_key


def held(version: int = 3, **metadata: str) -> list[Holder]:
    return holders(
        current_version=version,
        path_events=[ingested(RECEIVER)],
        own_key=OWN,
        metadata=metadata,
    )


def claim(
    holders_now: list[Holder],
    *,
    version: int = 3,
    rotation: Supersession | None = None,
    allow_overwrite: bool = False,
    new: BundleFacts | None = None,
) -> Holder | None:
    return check_path_claim(
        PATH,
        current_version=version,
        holders_now=holders_now,
        new=new or facts(),
        rotation=rotation,
        allow_overwrite=allow_overwrite,
    )


def test_an_empty_path_takes_any_bundle() -> None:
    assert claim([], version=0, new=facts(sender="kc1:" + "0" * 32)) is None


def test_the_same_sender_platform_and_partner_may_write_again() -> None:
    got = claim(held())
    assert got is not None
    assert got.kv_version == 3
    assert got.bundle_id == OLD
    assert got.known_from == "this ledger"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"sender": OTHER.public().signing_fingerprint}, "sealed by"),
        ({"platform": "xero"}, "is for xero"),
        ({"partner": "Other Co"}, "Other Co"),
        ({"partner": None}, "no partner"),
    ],
)
def test_another_senders_or_partners_bundle_is_refused(
    overrides: dict[str, object], words: str
) -> None:
    with pytest.raises(PolicyError, match=words) as caught:
        claim(held(), new=facts(**overrides))
    assert "--allow-overwrite" in " ".join(caught.value.hints)
    # the explicit flag lets it through and says what it replaces
    forced = claim(held(), allow_overwrite=True, new=facts(**overrides))
    assert forced is not None
    assert forced.sealed_by == SENDER.public().signing_fingerprint


def test_credentials_nobody_recorded_are_not_written_over() -> None:
    with pytest.raises(PolicyError, match="did not record storing"):
        claim([])
    # an own ingest of an older version says nothing about who wrote the current one
    assert held(version=4) == []
    # nor does an ingest signed by another key
    assert (
        holders(current_version=3, path_events=[ingested(SENDER)], own_key=OWN, metadata={}) == []
    )
    replaced = claim([], allow_overwrite=True)
    assert replaced is not None
    assert replaced.sealed_by is None


def test_vault_metadata_can_only_make_the_rules_stricter() -> None:
    other = OTHER.public().signing_fingerprint
    both = held(sealed_by=other, platform="quickbooks", partner="Acme Ltd")
    assert [h.known_from for h in both] == ["this ledger", "the path's Vault metadata"]
    with pytest.raises(PolicyError, match="Vault metadata"):
        claim(both)
    # metadata alone names the holder when this ledger did not store it
    meta_only = holders(
        current_version=3,
        path_events=[],
        own_key=OWN,
        metadata={
            "sealed_by": SENDER.public().signing_fingerprint,
            "platform": "quickbooks",
            "partner": "Acme Ltd",
            "bundle_id": OLD,
        },
    )
    # metadata alone never vouches for a path: anyone who may write it can set it
    with pytest.raises(PolicyError, match="did not record storing"):
        claim(meta_only)


def test_a_rotation_replaces_exactly_the_version_it_names() -> None:
    rotation = Supersession(OLD, PATH, 3)
    assert claim(held(), rotation=rotation) is not None
    with pytest.raises(PolicyError, match="at version 4, not the version 3"):
        claim(held(version=4), version=4, rotation=rotation)
    # a rotation into an emptied path (the old version deleted) is no overwrite
    assert claim([], version=0, rotation=rotation) is None
