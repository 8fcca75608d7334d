"""A receipt's ledger proof is bound to its receiver (docs/receipts.md sections 4 and 5).

The proved event must be the receiver's own signed record of this handover, at the leaf and
in the ledger the checkpoint is of; the receiver must be one of the bundle's recipients;
and its ledger key must stay the one its earlier receipts used. Each test builds a real
log (Merkle tree, signed note) around a chosen event and a receipt signed by the receiver,
so the only thing wrong is the thing under test.
"""

from __future__ import annotations

import json

import pytest

from keycourier import receipt
from keycourier.bundle import KeycourierIdentity, parsing
from keycourier.bundle.canonical import canonical_json
from keycourier.bundle.model import StructureError
from keycourier.errors import IntegrityError
from keycourier.ledger.checkpoints import EventProof
from keycourier.receipt.model import write
from tests.fuzz.samples import (
    NOW,
    bundle_sample,
    handover_event,
    log_proof,
    receipt_sample,
)

OTHER = KeycourierIdentity.generate()


def issued(proof: EventProof, identity: KeycourierIdentity | None = None) -> bytes:
    sample = bundle_sample()
    parsed = parsing.parse(sample.text)
    return receipt.issue(
        identity=identity or sample.receiver,
        manifest=parsed.manifest,
        manifest_bytes=parsed.manifest_bytes,
        action="opened",
        at=NOW,
        proof=proof,
    )


def with_event(body: str, **kw: str) -> bytes:
    bodies = [f'{{"seq":{i + 1},"type":"other"}}' for i in range(5)]
    bodies[2] = body
    return issued(log_proof(bodies, 2, **kw))


def verify(text: bytes, trusted: tuple[str, ...] | None = None) -> receipt.VerifiedReceipt:
    sample = bundle_sample()
    pins = trusted or (sample.receiver.public().signing_fingerprint,)
    return receipt.verify(text, sample.text, pins)


def bundle_id() -> str:
    return parsing.parse(bundle_sample().text).manifest.bundle_id


def test_the_receivers_own_event_in_its_ledger_verifies() -> None:
    got = verify(with_event(handover_event(bundle_sample().receiver, bundle_id(), seq=3)))
    assert got.receipt.action == "opened"
    assert got.receipt.receiver_recipient == bundle_sample().receiver.public().recipient
    assert verify(receipt_sample().text).receipt.action == "ingested"


@pytest.mark.parametrize(
    ("make", "words"),
    [
        # a record the receiver did not sign, though it names the receiver as its actor
        (
            lambda: handover_event(
                OTHER,
                bundle_id(),
                seq=3,
                actor=bundle_sample().receiver.public().signing_fingerprint,
            ),
            "not signed by the key that signed the receipt",
        ),
        (
            lambda: handover_event(bundle_sample().receiver, bundle_id(), seq=3, type_="revoked"),
            "does not record 'opened'",
        ),
        (
            lambda: handover_event(
                bundle_sample().receiver, "7a1c2a3b-4d5e-4f70-8a9b-0c1d2e3f4a5b", seq=3
            ),
            "does not record 'opened'",
        ),
        # the event of another ledger, or of another position, copied into this tree
        (
            lambda: handover_event(
                bundle_sample().receiver,
                bundle_id(),
                seq=3,
                ledger_id="11111111-2222-4333-8444-555555555555",
            ),
            "another ledger or position",
        ),
        (
            lambda: handover_event(bundle_sample().receiver, bundle_id(), seq=4),
            "another ledger or position",
        ),
        # not a ledger's canonical body
        (lambda: json.dumps({"type": "opened"}, indent=1), "not a readable ledger event"),
        # a body whose data is not an object (pairs with mixed key types)
        (lambda: _pairs_body(), "not a readable ledger event"),
        (lambda: "[" * 10_000, "not a readable ledger event"),
    ],
)
def test_an_event_that_is_not_the_receivers_record_is_exit_4(make: object, words: str) -> None:
    assert callable(make)
    text = with_event(make())
    with pytest.raises(IntegrityError, match=words):
        verify(text)
    seen = receipt.inspect(text)
    assert seen.signature_valid  # signed by the receiver: only the proof is wrong
    assert seen.proof_error is not None
    assert words in seen.proof_error


def _pairs_body() -> str:
    from keycourier.ledger import chain

    me = bundle_sample().receiver.public()
    return chain.canonical(
        {
            "actor": me.signing_fingerprint,
            "at": "2026-11-22T12:00:00.000000Z",
            "bundle_id": bundle_id(),
            "data": [["signer_key", me.signing_key], ["signature", "AA=="], [1, "x"]],
            "fingerprint": None,
            "ledger": "0f1e2d3c-4b5a-4968-8776-655443322110",
            "policy_digest": None,
            "seq": 3,
            "type": "opened",
        }
    )


def test_a_checkpoint_of_something_other_than_a_keycourier_ledger_is_exit_4() -> None:
    body = handover_event(bundle_sample().receiver, bundle_id(), seq=3)
    bodies = [f'{{"seq":{i + 1},"type":"other"}}' for i in range(5)]
    bodies[2] = body
    proof = log_proof(bodies, 2)
    from keycourier.tlog import checkpoint, note
    from tests.fuzz.samples import _key

    signer = note.Signer("example.com/log", _key("ledger note key"))
    other = EventProof(
        proof.log_index,
        proof.tree_size,
        proof.root_hash,
        proof.hashes,
        note.sign(checkpoint.Checkpoint(signer.name, 5, proof.root_hash).text(), [signer]),
        proof.body,
        signer.verifier.vkey(),
    )
    with pytest.raises(IntegrityError, match="not a keycourier ledger's"):
        verify(issued(other))


def test_a_receiver_the_bundle_was_not_sealed_for_is_exit_4() -> None:
    body = handover_event(OTHER, bundle_id(), seq=3)
    bodies = [f'{{"seq":{i + 1},"type":"other"}}' for i in range(5)]
    bodies[2] = body
    text = issued(log_proof(bodies, 2), identity=OTHER)
    with pytest.raises(IntegrityError, match="could not have opened it"):
        verify(text, (OTHER.public().signing_fingerprint,))


def test_the_receivers_ledger_key_is_held_to_its_first_receipt() -> None:
    r = receipt.parse(receipt_sample().text).receipt
    key = r.ledger.verifier_key
    receipt.check_ledger_key(r, seen=[], pinned=None)  # the first receipt sets it
    receipt.check_ledger_key(r, seen=[key, key], pinned=None)
    other = with_event(
        handover_event(bundle_sample().receiver, bundle_id(), seq=3), key_label="throwaway"
    )
    moved = receipt.parse(other).receipt
    assert moved.ledger.verifier_key != key
    verify(other)  # on its own it verifies: only continuity shows the other log
    with pytest.raises(IntegrityError, match="earlier receipts") as caught:
        receipt.check_ledger_key(moved, seen=[key], pinned=None)
    assert "--ledger-key" in " ".join(caught.value.hints)
    receipt.check_ledger_key(moved, seen=[key], pinned=moved.ledger.verifier_key)
    # once a receipt with the new key is verified (pinned), the new key is the one expected
    receipt.check_ledger_key(moved, seen=[key, moved.ledger.verifier_key], pinned=None)
    with pytest.raises(IntegrityError, match="earlier receipts"):
        receipt.check_ledger_key(r, seen=[key, moved.ledger.verifier_key], pinned=None)
    with pytest.raises(IntegrityError, match="not the pinned"):
        receipt.check_ledger_key(r, seen=[], pinned=moved.ledger.verifier_key)


def _resigned(change: dict[str, object]) -> bytes:
    sample = bundle_sample()
    body = json.loads(receipt.parse(receipt_sample().text).body)
    body["ledger"].update(change)
    raw = canonical_json(body)
    return write(raw, sample.receiver.sign(b"keycourier-receipt/v1\n" + raw))


@pytest.mark.parametrize(
    "change",
    [
        {"event": "\ud800"},
        {"event": None},
        {"event": '{"a":' * 2000 + "1" + "}" * 2000},
        {"checkpoint": "keycourier/ledger/x\n\ud800\n"},
        {"verifier_key": "\udfff+00000000+AAAA"},
    ],
)
def test_crafted_ledger_fields_are_exit_4_never_a_crash(change: dict[str, object]) -> None:
    text = _resigned(change)
    with pytest.raises((StructureError, IntegrityError)):
        verify(text)
    try:
        seen = receipt.inspect(text)
    except StructureError:
        return  # refused as unreadable: exit 4 naming the field
    assert seen.proof_error is not None
