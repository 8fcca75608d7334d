"""Checkpoints and proofs of the ledger: exported checkpoint files, the verifier key, the
witness name, and Rekor-shaped inclusion proofs of events (docs/audit.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keycourier._record import record
from keycourier.errors import (
    IntegrityError,
    UsageError,
)
from keycourier.ledger import chain
from keycourier.tlog import checkpoint as tlog_checkpoint
from keycourier.tlog import merkle
from keycourier.tlog import note as tlog_note

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.ledger.recorder import LedgerRecorder
    from keycourier.ledger.sqlite import SqliteLedger


def checkpoint_signed(public_key: str, ledger_id: str, data: Mapping[str, Any]) -> bool:
    """Whether a witnessed checkpoint record carries this ledger's valid signature."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        message = chain.checkpoint_message(
            ledger_id, int(data["seq"]), str(data["head_hash"]), str(data["signed_at"])
        )
        VerifyKey(bytes.fromhex(public_key)).verify(message, bytes.fromhex(str(data["signature"])))
    except (KeyError, ValueError, TypeError, BadSignatureError):
        return False
    return data.get("ledger") == ledger_id


def witness_name(settings: Settings) -> str:
    """The name this machine's ledger is witnessed under in Vault (keycourier/machines/):
    the host name and a digest of the ledger file's absolute path."""
    import hashlib
    import socket

    host = (
        "".join(
            ch if ch.isascii() and (ch.isalnum() or ch in "-.") else "_"
            for ch in socket.gethostname()
        )[:64]
        or "host"
    )
    where = str(settings.ledger_path.expanduser().resolve())
    return f"{host}-{hashlib.sha256(where.encode()).hexdigest()[:16]}"


MAX_CHECKPOINT_BYTES = 16 * 1024


def read_checkpoint(path: Path) -> str:
    """An exported checkpoint file's text (exit 2 unreadable, 4 not a checkpoint)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CHECKPOINT_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the checkpoint {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        text = ""
    if len(data) > MAX_CHECKPOINT_BYTES or "\n\n\u2014 " not in text:
        raise IntegrityError(
            f"{path} is not a keycourier checkpoint (a C2SP signed note; see docs/audit.md)"
        )
    return text


def check_exported(ledger: SqliteLedger, text: str, where: str) -> tuple[tuple[int, str], ...]:
    """(seq, reason) for each way the ledger contradicts a checkpoint exported from it:
    another ledger or key (seq 0), fewer events (the first missing seq), other events
    among those it signed (its size): an RFC 6962 consistency proof from its tree to
    today's must verify."""
    breaks: list[tuple[int, str]] = []
    body = text.split("\n\n", 1)[0] + "\n"
    try:
        claimed = tlog_checkpoint.parse(body)
    except tlog_checkpoint.CheckpointError as exc:
        raise IntegrityError(f"{where} is not a keycourier checkpoint ({exc})") from None
    if claimed.origin != ledger.origin:
        return ((0, f"checkpoint {where} is not of this ledger (it is of {claimed.origin})"),)
    try:
        tlog_note.open_note(text, [ledger.verifier()])
    except tlog_note.NoteError:
        breaks.append(
            (
                0,
                f"checkpoint key differs: {where} is not signed by this ledger's key: the "
                "ledger's key was replaced (or the file was altered)",
            )
        )
    head = ledger.head()[0]
    m = claimed.size
    if head < m:
        breaks.append(
            (
                head + 1,
                f"checkpoint {where} signed {m} events but the ledger has {head}: it was "
                "rolled back to an older copy or truncated",
            )
        )
        return tuple(breaks)
    try:
        if m > 0:
            proof = merkle.consistency_proof(m, head, ledger.node)
            merkle.verify_consistency(m, head, claimed.root_hash, ledger.root_at(head), proof)
    except (merkle.ProofError, IntegrityError):
        breaks.append(
            (
                m,
                f"the first {m} events are not the ones checkpoint {where} signed: the ledger "
                "was rewritten",
            )
        )
    return tuple(breaks)


@record
class ExportedCheckpoint:
    ledger_id: str
    events: int
    text: str  # the signed note, ready to print or write


def _verified(recorder: LedgerRecorder) -> SqliteLedger:
    """The recorder's ledger once it verifies (exit 4 otherwise: nothing is signed)."""
    ledger = recorder.ledger
    report = ledger.verify()
    if report.first_break is not None:
        raise IntegrityError(
            f"the ledger is broken at event #{report.first_break.seq}: {report.first_break.reason}",
            hints=["run 'keycourier audit verify' for the details"],
        )
    return ledger


def export_checkpoint(recorder: LedgerRecorder) -> ExportedCheckpoint:
    """The latest signed tree head (a C2SP checkpoint), after signing the head if needed.

    The whole ledger is verified first: one that does not verify (including a
    missing or replaced key) is exit 4 and nothing is signed.
    """
    ledger = _verified(recorder)
    ledger.checkpoint()
    if recorder.mirror is not None:  # witness it now; kept pending for sync if Vault is down
        recorder.witness_quietly(alarms=False)
    latest = ledger.latest_note()
    if latest is None:
        raise UsageError(f"the ledger {ledger.path} has no events yet: nothing to checkpoint")
    size, text = latest
    return ExportedCheckpoint(ledger.ledger_id, size, text)


def ledger_verifier_key(recorder: LedgerRecorder) -> str:
    """The ledger's verifier key line, once its key file is checked against it."""
    recorder.ledger.check_key()
    return recorder.ledger.verifier().vkey()


@record
class EventProof:
    """One event's inclusion proof against a signed tree head (docs/audit.md 1.3)."""

    log_index: int
    tree_size: int
    root_hash: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str  # the signed note text
    body: str  # the event's canonical body: leaf hash SHA-256(0x00 || body)
    verifier_key: str

    def to_json(self) -> dict[str, object]:
        """The shape Rekor users know."""
        return {
            "logIndex": self.log_index,
            "treeSize": self.tree_size,
            "rootHash": self.root_hash.hex(),
            "hashes": [h.hex() for h in self.hashes],
            "checkpoint": self.checkpoint,
            "body": self.body,
        }


def _checkpoint_for(ledger: SqliteLedger, text: str | None) -> tuple[int, bytes, str]:
    """(size, root, note) of ``text`` (a checkpoint of this ledger, verified) or the latest."""
    if text is None:
        ledger.checkpoint()
        latest = ledger.latest_note()
        if latest is None:
            raise UsageError(f"the ledger {ledger.path} has no events yet")
        text = latest[1]
    try:
        opened = tlog_note.open_note(text, [ledger.verifier()])
        cp = tlog_checkpoint.parse(opened.text)
    except (tlog_note.NoteError, tlog_checkpoint.CheckpointError) as exc:
        raise IntegrityError(
            f"the checkpoint is not a signed tree head of this ledger ({exc})"
        ) from None
    if cp.origin != ledger.origin or cp.size > ledger.head()[0]:
        raise IntegrityError("the checkpoint is not a signed tree head of this ledger")
    return cp.size, cp.root_hash, text


def prove_events(
    recorder: LedgerRecorder, seqs: Sequence[int], *, checkpoint: str | None = None
) -> list[EventProof]:
    """Inclusion proofs of events ``seqs`` against ``checkpoint`` (the latest signed tree
    head, signed first if needed, by default). Each proof is verified before it is
    returned, so a damaged stored tree is an IntegrityError, never a bad proof."""
    ledger = recorder.ledger
    size, root, text = _checkpoint_for(ledger, checkpoint)
    vkey = ledger.verifier().vkey()
    out: list[EventProof] = []
    for seq in seqs:
        body = ledger.event_body(seq)
        if body is None or seq > size:
            raise UsageError(f"event #{seq} is not in the tree of size {size}")
        hashes = merkle.inclusion_proof(seq - 1, size, ledger.node)
        try:
            merkle.verify_inclusion(seq - 1, size, merkle.leaf_hash(body.encode()), hashes, root)
        except merkle.ProofError:
            raise IntegrityError(
                f"ledger {ledger.path} is damaged: its stored tree does not prove event #{seq}",
                hints=["run 'keycourier audit verify'"],
            ) from None
        out.append(EventProof(seq - 1, size, root, tuple(hashes), text, body, vkey))
    return out


def prove_event(recorder: LedgerRecorder, seq: int) -> EventProof:
    """Event ``seq``'s inclusion proof against the latest signed tree head."""
    return prove_events(recorder, [seq])[0]
