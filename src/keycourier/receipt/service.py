"""Issuing a receipt (the receiver) and verifying one against a bundle (the sender).

docs/receipts.md is normative. Both are library functions: they take typed inputs, return
typed results and raise the ``keycourier.errors`` classes with their exit codes; they never
print.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from keycourier.bundle import parsing
from keycourier.bundle.model import Manifest, StructureError
from keycourier.errors import IntegrityError, PolicyError
from keycourier.ledger.signed import key_trusted
from keycourier.receipt.model import (
    PATH_KEY_LABEL,
    BundleRef,
    LedgerProof,
    ParsedReceipt,
    Receipt,
    Replaced,
    VaultRecord,
    check_proof,
    manifest_digest,
    parse,
    path_hmac,
    receiver_consistent,
    signature_valid,
    write,
)
from keycourier.tlog import merkle

if TYPE_CHECKING:
    from keycourier.bundle.identity import KeycourierIdentity
    from keycourier.ledger.checkpoints import EventProof

SKEW_SECONDS = 300


@dataclass(frozen=True, slots=True)
class IssuedVault:
    """What ``ingest`` did in Vault, for the receipt."""

    path: str  # "<mount>/<path>"
    kv_version: int
    show_path: bool = False
    supersedes: Replaced | None = None


def issue(
    *,
    identity: KeycourierIdentity,
    manifest: Manifest,
    manifest_bytes: bytes,
    action: str,
    at: datetime,
    proof: EventProof,
    vault: IssuedVault | None = None,
) -> bytes:
    """The signed receipt text for ``action`` on a bundle, proved by ``proof`` (the
    inclusion proof of the receiver's event in its ledger: the `ingested` event, or, when
    the Vault path stays private, the `opened` event the ingest recorded)."""
    me = identity.public()
    record = None
    if vault is not None:
        key = identity.derive_key(PATH_KEY_LABEL)
        record = VaultRecord(
            path_hmac=path_hmac(key, vault.path),
            path=vault.path if vault.show_path else None,
            kv_version=vault.kv_version,
            supersedes=vault.supersedes,
        )
    receipt = Receipt(
        receipt_id=str(uuid.uuid4()),
        at=at.replace(microsecond=0),
        action=action,
        bundle=BundleRef(
            bundle_id=manifest.bundle_id,
            manifest_sha256=manifest_digest(manifest_bytes),
            payload_sha256=manifest.payload_sha256,
            fingerprint=manifest.fingerprint,
            sender=manifest.sender_fingerprint,
        ),
        receiver_key=me.signing_key,
        receiver=me.signing_fingerprint,
        receiver_recipient=me.recipient,
        vault=record,
        ledger=LedgerProof(
            verifier_key=proof.verifier_key,
            checkpoint=proof.checkpoint,
            log_index=proof.log_index,
            tree_size=proof.tree_size,
            leaf_hash=_leaf_hex(proof.body),
            hashes=tuple(h.hex() for h in proof.hashes),
            event=proof.body,
        ),
    )
    body = receipt.body()
    return write(body, identity.sign(b"keycourier-receipt/v1\n" + body))


def _leaf_hex(body: str) -> str:

    return merkle.leaf_hash(body.encode("utf-8")).hex()


# -- inspecting ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceiptInspection:
    """What a receipt says, and what can be checked without the bundle or a pin."""

    parsed: ParsedReceipt
    signature_valid: bool
    proof_error: str | None  # None when the ledger proof verifies

    @property
    def receipt(self) -> Receipt:
        return self.parsed.receipt


def inspect(data: bytes) -> ReceiptInspection:
    """Parse a receipt (StructureError, exit 4, when it is not one) and check its signature
    under the key it names and its ledger proof: neither says who the receiver is."""
    parsed = parse(data)
    valid = receiver_consistent(parsed.receipt) and signature_valid(parsed)
    try:
        check_proof(parsed.receipt)
        proof_error = None
    except IntegrityError as exc:
        proof_error = exc.message
    return ReceiptInspection(parsed, valid, proof_error)


# -- verifying against the bundle --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    receipt: Receipt
    manifest: Manifest  # the bundle's


def verify(data: bytes, bundle_text: bytes, trusted: Sequence[str]) -> VerifiedReceipt:
    """docs/receipts.md section 5: IntegrityError (exit 4) when something does not verify,
    PolicyError (exit 7) when the receipt is for another signer or another bundle."""
    parsed = parse(data)
    r = parsed.receipt
    if not receiver_consistent(r):
        raise IntegrityError(
            "the receipt is altered: its receiver fingerprint is not that of its signing key"
        )
    if not key_trusted(r.receiver_key, trusted):
        raise PolicyError(
            f"the receipt is signed by {r.receiver}, which is not a pinned receiver",
            hints=[
                f"pinned: {', '.join(trusted)}; compare the receiver's fingerprint through a "
                "second channel before you pin it"
            ],
        )
    if not signature_valid(parsed):
        raise IntegrityError(
            "the receipt's signature does not verify: it was altered after it was signed"
        )
    check_proof(r)
    try:
        bundle = parsing.parse(bundle_text)
    except StructureError as exc:
        raise StructureError(f"--bundle: {exc.message}", line=exc.line, hints=exc.hints) from None
    m = bundle.manifest
    if not parsing.verify_signature(bundle) or not parsing.payload_ok(bundle):
        raise IntegrityError(
            "--bundle does not verify (signature or payload digest): it is not the bundle "
            "you sealed",
            hints=["run 'keycourier inspect' on it"],
        )
    if r.bundle.bundle_id != m.bundle_id:
        supersedes = getattr(m, "supersedes", None)
        if supersedes == r.bundle.bundle_id:
            raise PolicyError(
                f"the receipt is for bundle {r.bundle.bundle_id}, which bundle {m.bundle_id} "
                "replaces: it is the receipt of the earlier handover, not of this one",
                hints=["ask the receiver for the receipt of the new bundle"],
            )
        raise PolicyError(
            f"the receipt is for bundle {r.bundle.bundle_id}, not for bundle {m.bundle_id}"
        )
    if r.bundle.manifest_sha256 != manifest_digest(bundle.manifest_bytes):
        raise IntegrityError(
            f"the receipt names bundle {m.bundle_id} but another manifest: the receiver "
            "holds a different bundle with this id"
        )
    if r.bundle.payload_sha256 != m.payload_sha256 or r.bundle.fingerprint != m.fingerprint:
        raise IntegrityError("the receipt's payload digest or credential fingerprint differs")
    if r.bundle.sender != m.sender_fingerprint:
        raise IntegrityError("the receipt names another sender than the bundle's signer")
    if r.receiver_recipient not in m.recipients:
        raise IntegrityError(
            f"the receipt's receiver {r.receiver} names an age recipient the bundle was not "
            "sealed for: it could not have opened it"
        )
    if (m.created_at - r.at).total_seconds() > SKEW_SECONDS:
        raise IntegrityError("the receipt is dated before the bundle was sealed")
    replaced = r.vault.supersedes if r.vault else None
    if replaced is not None and replaced.bundle_id != getattr(m, "supersedes", None):
        raise IntegrityError(
            f"the receipt says bundle {m.bundle_id} replaced {replaced.bundle_id}, which its "
            "manifest does not say"
        )
    return VerifiedReceipt(r, m)


def check_ledger_key(receipt: Receipt, *, seen: Sequence[str], pinned: str | None) -> None:
    """The receiver's ledger key is the one pinned (``--ledger-key``) or, without a pin, the
    one of the receiver's latest verified receipt (``seen``: their keys, oldest first):
    IntegrityError (exit 4) otherwise. A receipt's proof shows the event in *a* log signed by
    the key the receiver names; holding the receiver to one key keeps it from proving
    receipts with a throwaway log its auditors never see."""
    key = receipt.ledger.verifier_key
    if pinned is not None:
        if pinned.strip() != key:
            raise IntegrityError(
                f"the receipt's ledger key is {key}, not the pinned {pinned.strip()}",
                hints=["ask the receiver which ledger key its auditors check"],
            )
        return
    earlier = seen[-1] if seen else None
    if earlier is not None and earlier != key:
        raise IntegrityError(
            f"the receipt proves its event in a ledger with key {key}, but earlier receipts of "
            f"{receipt.receiver} used {earlier}",
            hints=[
                "if the receiver really moved to a new ledger, confirm its key through a "
                "second channel ('keycourier audit key' on their side) and pass it with "
                "--ledger-key"
            ],
        )
