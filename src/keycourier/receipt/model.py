"""Receipts: the body, its text form, its signature and its ledger proof (docs/receipts.md).

Everything here needs no key but the receiver's public one: parsing, the signature check
and the proof check are what ``keycourier receipt inspect`` and ``receipt verify`` share.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from keycourier.bundle import text as _text
from keycourier.bundle.canonical import canonical_json, parse_canonical
from keycourier.bundle.identity import signing_fingerprint
from keycourier.bundle.model import StructureError, format_time
from keycourier.errors import IntegrityError
from keycourier.ledger import chain
from keycourier.ledger.signed import signer_of
from keycourier.tlog import checkpoint as tlog_checkpoint
from keycourier.tlog import merkle
from keycourier.tlog import note as tlog_note

FORMAT: Final = "keycourier-receipt/v1"
FORMATS: Final = (FORMAT,)
SIGNATURE_CONTEXT: Final = (FORMAT + "\n").encode("ascii")
BEGIN_R: Final = "-----BEGIN KEYCOURIER RECEIPT-----"
END_R: Final = "-----END KEYCOURIER RECEIPT-----"
MAX_RECEIPT_BYTES: Final = 64 * 1024
MAX_BODY_BYTES: Final = 32 * 1024
MAX_PROOF_HASHES: Final = 64
MAX_CHECKPOINT_CHARS: Final = 4096
MAX_EVENT_CHARS: Final = 16 * 1024
ACTIONS: Final = ("opened", "ingested")
LEDGER_ORIGIN: Final = "keycourier/ledger/"  # a keycourier ledger's checkpoint origin prefix
PATH_KEY_LABEL: Final = b"receipt-vault-path"

KIND: Final = _text.DocumentKind(
    noun="receipt",
    magic="keycourier-receipt/",
    formats=FORMATS,
    last=_text.END_S,
    max_bytes=MAX_RECEIPT_BYTES,
)

_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_FP: Final = re.compile(r"kc1:[0-9a-f]{32}")
_KEY: Final = re.compile(r"ed25519:[A-Za-z0-9+/]{43}=")
_UUID4: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_HMAC: Final = re.compile(r"hmac-sha256:[0-9a-f]{64}")
_RECIPIENT: Final = re.compile(r"age1(?:pq1)?[02-9ac-hj-np-z]{20,4000}")
_MAX_VERSION: Final = 2**53


@dataclass(frozen=True, slots=True)
class BundleRef:
    """The bundle a receipt is for, by its public facts."""

    bundle_id: str
    manifest_sha256: str
    payload_sha256: str
    fingerprint: str  # the credential fingerprint
    sender: str  # the sender's signing fingerprint


@dataclass(frozen=True, slots=True)
class Replaced:
    """The earlier bundle, and its KV version, that this one replaced at the same path."""

    bundle_id: str
    kv_version: int


@dataclass(frozen=True, slots=True)
class VaultRecord:
    path_hmac: str
    path: str | None  # only when the receiver chose to show it
    kv_version: int
    supersedes: Replaced | None = None


@dataclass(frozen=True, slots=True)
class LedgerProof:
    """The receiver's event as a leaf of its ledger's Merkle tree (docs/receipts.md 4)."""

    verifier_key: str
    checkpoint: str
    log_index: int
    tree_size: int
    leaf_hash: str
    hashes: tuple[str, ...]
    event: str  # the proved event's canonical body (docs/receipts.md section 4)


@dataclass(frozen=True, slots=True)
class Receipt:
    receipt_id: str
    at: datetime
    action: str  # "opened" or "ingested"
    bundle: BundleRef
    receiver_key: str  # "ed25519:<base64>"
    receiver: str  # its fingerprint
    receiver_recipient: str  # its age recipient: one of the bundle's recipients
    vault: VaultRecord | None
    ledger: LedgerProof
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        v = self.vault
        return {
            "format": self.format,
            "receipt_id": self.receipt_id,
            "at": format_time(self.at),
            "action": self.action,
            "bundle": {
                "bundle_id": self.bundle.bundle_id,
                "manifest_sha256": self.bundle.manifest_sha256,
                "payload_sha256": self.bundle.payload_sha256,
                "fingerprint": self.bundle.fingerprint,
                "sender": self.bundle.sender,
            },
            "receiver": {
                "signing_key": self.receiver_key,
                "fingerprint": self.receiver,
                "recipient": self.receiver_recipient,
            },
            "vault": None
            if v is None
            else {
                "path_hmac": v.path_hmac,
                "path": v.path,
                "kv_version": v.kv_version,
                "supersedes": None
                if v.supersedes is None
                else {"bundle_id": v.supersedes.bundle_id, "kv_version": v.supersedes.kv_version},
            },
            "ledger": {
                "verifier_key": self.ledger.verifier_key,
                "checkpoint": self.ledger.checkpoint,
                "log_index": self.ledger.log_index,
                "tree_size": self.ledger.tree_size,
                "leaf_hash": self.ledger.leaf_hash,
                "hashes": list(self.ledger.hashes),
                "event": self.ledger.event,
            },
        }

    def body(self) -> bytes:
        """The canonical body bytes R that the signature covers."""
        return canonical_json(self.to_dict())


@dataclass(frozen=True, slots=True)
class ParsedReceipt:
    receipt: Receipt
    body: bytes
    signature: bytes
    body_line: int


# -- the path digest ------------------------------------------------------------------


def path_hmac(key: bytes, vault_path: str) -> str:
    """``hmac-sha256:<hex>`` of ``vault_path`` (``<mount>/<path>``) under the receiver's key."""
    return "hmac-sha256:" + hmac.new(key, vault_path.encode("utf-8"), hashlib.sha256).hexdigest()


def path_matches(key: bytes, vault_path: str, digest: str) -> bool:
    return hmac.compare_digest(path_hmac(key, vault_path), digest)


# -- text form ------------------------------------------------------------------------


def write(body: bytes, signature: bytes) -> bytes:
    """The receipt's text: LF line ends, no line longer than 64 characters."""
    return b"".join(
        (
            f"{FORMAT}\n{BEGIN_R}\n".encode("ascii"),
            _text.wrap64(body),
            f"{END_R}\n{_text.BEGIN_S}\n".encode("ascii"),
            _text.wrap64(signature),
            f"{_text.END_S}\n".encode("ascii"),
        )
    )


def parse(data: bytes) -> ParsedReceipt:
    """A receipt whose structure and body are sound; StructureError (exit 4) naming the line
    or the field otherwise. Signature and proof are not checked here."""

    def blocks(cursor: _text.Cursor) -> tuple[bytes, int, bytes, int]:
        cursor.marker(BEGIN_R)
        body, body_line = cursor.base64("receipt", MAX_BODY_BYTES)
        cursor.marker(END_R)
        cursor.marker(_text.BEGIN_S)
        signature, sig_line = cursor.base64("signature", 64)
        cursor.marker(_text.END_S)
        return body, body_line, signature, sig_line

    _, (body, body_line, signature, sig_line) = _text.read_document(data, KIND, blocks)
    if len(signature) != 64:
        raise _text.damaged(
            sig_line, "the signature block does not hold a 64-byte signature", "receipt"
        )
    obj = parse_canonical(
        body,
        limit=MAX_BODY_BYTES,
        error=StructureError(
            "the receipt's body is not readable: it is not canonical JSON", line=body_line
        ),
    )
    return ParsedReceipt(receipt_from_dict(obj), body, signature, body_line)


# -- the body's fields ----------------------------------------------------------------


def _bad(field: str) -> StructureError:
    return StructureError(
        f"the receipt's body is not readable: field '{field}' is missing, unknown or of the "
        "wrong form",
        hints=("ask the receiver for the receipt again",),
    )


def _object(value: object, keys: set[str], field: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise _bad(field)
    return value


def _str(value: object, pattern: re.Pattern[str], field: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(field)
    return value


def _int(value: object, field: str, low: int = 0) -> int:
    if type(value) is not int or not low <= value < _MAX_VERSION:
        raise _bad(field)
    return value


def _time(value: object, field: str) -> datetime:
    text = _str(value, _TIME, field)
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise _bad(field) from None


def _text_field(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise _bad(field)
    try:
        value.encode("utf-8")  # a lone surrogate (JSON "\\ud800") is no text
    except UnicodeEncodeError:
        raise _bad(field) from None
    return value


def receipt_from_dict(obj: dict[str, Any]) -> Receipt:
    top = _object(
        obj,
        {"format", "receipt_id", "at", "action", "bundle", "receiver", "vault", "ledger"},
        "receipt",
    )
    if top["format"] != FORMAT:
        raise _bad("format")
    action = top["action"]
    if action not in ACTIONS:
        raise _bad("action")
    b = _object(
        top["bundle"],
        {"bundle_id", "manifest_sha256", "payload_sha256", "fingerprint", "sender"},
        "bundle",
    )
    bundle = BundleRef(
        bundle_id=_str(b["bundle_id"], _UUID4, "bundle.bundle_id"),
        manifest_sha256=_str(b["manifest_sha256"], _HEX64, "bundle.manifest_sha256"),
        payload_sha256=_str(b["payload_sha256"], _HEX64, "bundle.payload_sha256"),
        fingerprint=_str(b["fingerprint"], _FP, "bundle.fingerprint"),
        sender=_str(b["sender"], _FP, "bundle.sender"),
    )
    r = _object(top["receiver"], {"signing_key", "fingerprint", "recipient"}, "receiver")
    vault = _vault(top["vault"], action)
    lg = _object(
        top["ledger"],
        {"verifier_key", "checkpoint", "log_index", "tree_size", "leaf_hash", "hashes", "event"},
        "ledger",
    )
    hashes = lg["hashes"]
    if not isinstance(hashes, list) or len(hashes) > MAX_PROOF_HASHES:
        raise _bad("ledger.hashes")
    event = _text_field(lg["event"], "ledger.event", MAX_EVENT_CHARS)
    tree_size = _int(lg["tree_size"], "ledger.tree_size", 1)
    log_index = _int(lg["log_index"], "ledger.log_index")
    if log_index >= tree_size:
        raise _bad("ledger.log_index")
    proof = LedgerProof(
        verifier_key=_text_field(lg["verifier_key"], "ledger.verifier_key", 512),
        checkpoint=_text_field(lg["checkpoint"], "ledger.checkpoint", MAX_CHECKPOINT_CHARS),
        log_index=log_index,
        tree_size=tree_size,
        leaf_hash=_str(lg["leaf_hash"], _HEX64, "ledger.leaf_hash"),
        hashes=tuple(_str(h, _HEX64, "ledger.hashes") for h in hashes),
        event=event,
    )
    return Receipt(
        receipt_id=_str(top["receipt_id"], _UUID4, "receipt_id"),
        at=_time(top["at"], "at"),
        action=action,
        bundle=bundle,
        receiver_key=_str(r["signing_key"], _KEY, "receiver.signing_key"),
        receiver=_str(r["fingerprint"], _FP, "receiver.fingerprint"),
        receiver_recipient=_str(r["recipient"], _RECIPIENT, "receiver.recipient"),
        vault=vault,
        ledger=proof,
    )


def _vault(value: object, action: str) -> VaultRecord | None:
    if action == "opened":
        if value is not None:
            raise _bad("vault")
        return None
    v = _object(value, {"path_hmac", "path", "kv_version", "supersedes"}, "vault")
    path = v["path"]
    if path is not None:
        path = _text_field(path, "vault.path", 1024)
        if not path.isprintable():
            raise _bad("vault.path")
    sup = v["supersedes"]
    replaced = None
    if sup is not None:
        s = _object(sup, {"bundle_id", "kv_version"}, "vault.supersedes")
        replaced = Replaced(
            _str(s["bundle_id"], _UUID4, "vault.supersedes.bundle_id"),
            _int(s["kv_version"], "vault.supersedes.kv_version", 1),
        )
    return VaultRecord(
        path_hmac=_str(v["path_hmac"], _HMAC, "vault.path_hmac"),
        path=path,
        kv_version=_int(v["kv_version"], "vault.kv_version", 1),
        supersedes=replaced,
    )


# -- checks that need only public keys ----------------------------------------------


def receiver_consistent(receipt: Receipt) -> bool:
    """The receiver's fingerprint is the one its signing key has."""
    return signing_fingerprint(_key_bytes(receipt.receiver_key)) == receipt.receiver


def _key_bytes(key_text: str) -> bytes:
    return base64.b64decode(key_text.split(":", 1)[1])


def signature_valid(parsed: ParsedReceipt) -> bool:
    """The receiver's Ed25519 signature over ``keycourier-receipt/v1\\n || R``."""
    from nacl.bindings import crypto_sign_open
    from nacl.exceptions import BadSignatureError

    key = _key_bytes(parsed.receipt.receiver_key)
    try:
        crypto_sign_open(parsed.signature + SIGNATURE_CONTEXT + parsed.body, key)
    except (BadSignatureError, ValueError):
        return False
    return True


def check_proof(receipt: Receipt) -> None:
    """The ledger proof (docs/receipts.md 4): IntegrityError naming the part that fails."""
    proof = receipt.ledger
    try:
        verifier = tlog_note.parse_vkey(proof.verifier_key)
        opened = tlog_note.open_note(proof.checkpoint, [verifier])
        cp = tlog_checkpoint.parse(opened.text)
    except (tlog_note.NoteError, tlog_checkpoint.CheckpointError, ValueError) as exc:
        raise IntegrityError(
            f"the receipt's ledger checkpoint does not verify with its ledger key ({exc})"
        ) from None
    if cp.origin != verifier.name or not cp.origin.startswith(LEDGER_ORIGIN):
        raise IntegrityError(
            "the receipt's ledger checkpoint is not a keycourier ledger's: its origin is not "
            "the name of its ledger key"
        )
    if cp.size != proof.tree_size:
        raise IntegrityError(
            f"the receipt's ledger proof is for a tree of {proof.tree_size} events, but its "
            f"checkpoint signs a tree of {cp.size}"
        )
    leaf = bytes.fromhex(proof.leaf_hash)
    if merkle.leaf_hash(proof.event.encode("utf-8")) != leaf:
        raise IntegrityError("the receipt's ledger event does not have its leaf hash")
    _check_event(receipt, proof.event, ledger_id=cp.origin[len(LEDGER_ORIGIN) :])
    try:
        merkle.verify_inclusion(
            proof.log_index,
            proof.tree_size,
            leaf,
            [bytes.fromhex(h) for h in proof.hashes],
            cp.root_hash,
        )
    except merkle.ProofError:
        raise IntegrityError(
            "the receipt's inclusion proof does not lead to its checkpoint's root: the event "
            "is not shown to be in the receiver's ledger"
        ) from None


def proved_types(action: str) -> tuple[str, ...]:
    """The ledger events that may prove ``action``: an ingest whose receipt keeps the Vault
    path private proves the `opened` event it recorded (that one names no path)."""
    return ("ingested", "opened") if action == "ingested" else ("opened",)


def _check_event(receipt: Receipt, event_text: str, *, ledger_id: str) -> None:
    """The proved event is the receiver's own signed record of this handover in the ledger
    the checkpoint is of, at the leaf the proof is for."""
    import json

    unreadable = IntegrityError("the receipt's ledger event is not a readable ledger event")
    try:
        obj = json.loads(event_text)
        if (
            not isinstance(obj, dict)
            or chain.canonical(obj) != event_text
            or not isinstance(obj.get("data"), dict)
            or not all(isinstance(obj.get(k), str) for k in ("type", "actor", "at", "ledger"))
            or type(obj.get("seq")) is not int
        ):
            raise unreadable
        seq, event_ledger, event = chain.parse_body(event_text)
        signer = signer_of(event)
    except (ValueError, RecursionError, TypeError, KeyError):
        raise unreadable from None
    if (
        str(event.type) not in proved_types(receipt.action)
        or event.bundle_id != receipt.bundle.bundle_id
    ):
        raise IntegrityError(
            f"the receipt's ledger event does not record '{receipt.action}' of bundle "
            f"{receipt.bundle.bundle_id}"
        )
    if event.actor != receipt.receiver or signer != receipt.receiver_key:
        raise IntegrityError(
            "the receipt's ledger event is not the receiver's own signed record: it is "
            "not signed by the key that signed the receipt"
        )
    if event_ledger != ledger_id or seq != receipt.ledger.log_index + 1:
        raise IntegrityError(
            "the receipt's ledger event names another ledger or position than its proof"
        )


def manifest_digest(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


def signature_text(signature: bytes) -> str:
    return binascii.b2a_base64(signature, newline=False).decode("ascii")
