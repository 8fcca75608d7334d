"""Small valid inputs that the fuzz tests and the atheris harness mutate.

Everything is built once per process (``functools.cache``): the crypto runs
here, not per example, so each example only parses and checks.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from keycourier import age, bundle
from keycourier.bundle import Credentials, KeycourierIdentity, PolicyStamp, seal
from keycourier.redact import Secret

if TYPE_CHECKING:
    from keycourier.ledger.checkpoints import EventProof

from tests.support.random_text import ALNUM

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
PLAINTEXT = b"fuzz plaintext: the quick brown fox\n"
PASSPHRASE = Secret("fuzz passphrase 7f3a")
SCRYPT_WORK_FACTOR = 2  # tiny on purpose: the fuzz tests parse, they do not benchmark scrypt
STAMP = PolicyStamp("sha256:" + "ab" * 32, "pass", ())


@dataclass(frozen=True, slots=True)
class BundleSample:
    text: bytes
    sender: KeycourierIdentity
    receiver: KeycourierIdentity
    trusted: tuple[str, ...]
    client_secret: str


@dataclass(frozen=True, slots=True)
class AgeSample:
    name: str
    data: bytes
    identities: tuple[age.Identity, ...]


def _key(label: str) -> bytes:
    """Fixed key material: a saved fuzz corpus stays valid across processes."""
    return hashlib.sha256(b"keycourier fuzz sample " + label.encode()).digest()


def _text(label: str, n: int) -> str:
    raw = hashlib.shake_256(label.encode()).digest(n)
    return "".join(ALNUM[b % len(ALNUM)] for b in raw)


@functools.cache
def bundle_sample() -> BundleSample:
    sender = KeycourierIdentity(
        age.X25519Identity(_key("sender age")), Secret(_key("sender seed")), NOW
    )
    receiver = KeycourierIdentity(
        age.X25519Identity(_key("receiver age")), Secret(_key("receiver seed")), NOW
    )
    secret = _text("client secret", 40)
    creds = Credentials("quickbooks", "AB" + _text("client id", 48), Secret(secret))
    sealed = seal(
        creds,
        sender=sender,
        recipients=[receiver.public().recipient],
        policy=STAMP,
        lifetime=timedelta(days=7),
        environment="production",
        partner="Acme Ltd",
        now=NOW,
        bundle_id="6f1c2a3b-4d5e-4f70-8a9b-0c1d2e3f4a5b",
    )
    return BundleSample(
        sealed.text, sender, receiver, (sender.public().signing_fingerprint,), secret
    )


@functools.cache
def age_samples() -> tuple[AgeSample, ...]:
    """An X25519 file (binary and armored), a hybrid one, and a tiny-scrypt one."""
    x = age.X25519Identity(_key("x25519"))
    pq = age.HybridIdentity(_key("hybrid"))
    scrypt_r = age.ScryptRecipient(PASSPHRASE, work_factor=SCRYPT_WORK_FACTOR)
    scrypt_i = age.ScryptIdentity(PASSPHRASE, max_work_factor=4)
    two_chunks = PLAINTEXT * 2000  # > 64 KiB: exercises the chunk boundary
    return (
        AgeSample("x25519", age.encrypt([x.recipient()], PLAINTEXT), (x,)),
        AgeSample("x25519-armor", age.encrypt([x.recipient()], PLAINTEXT, armor=True), (x,)),
        AgeSample("x25519-two-chunks", age.encrypt([x.recipient()], two_chunks), (x,)),
        AgeSample("hybrid", age.encrypt([pq.recipient()], PLAINTEXT), (pq,)),
        AgeSample("scrypt", age.encrypt([scrypt_r], PLAINTEXT), (scrypt_i,)),
        AgeSample("scrypt-armor", age.encrypt([scrypt_r], PLAINTEXT, armor=True), (scrypt_i,)),
    )


def plaintext_of(sample: AgeSample) -> bytes:
    return PLAINTEXT * 2000 if sample.name == "x25519-two-chunks" else PLAINTEXT


def bundle_content(text: bytes) -> tuple[bytes, bytes, bytes]:
    """What a bundle's signature and manifest cover: the manifest bytes, the signature and
    the binary age file. Transport normalisation (docs/bundle-format.md section 1.1) may
    change the text, never these; an input that opens must have the sample's content."""
    parsed = bundle.parse(text)
    return parsed.manifest_bytes, parsed.signature, parsed.payload


def normalise_armor(data: bytes) -> bytes:
    """The armor tolerances of docs/age.md: CRLF line ends and outer whitespace."""
    return data.replace(b"\r\n", b"\n").strip(b" \t\r\n")


@dataclass(frozen=True, slots=True)
class ReceiptSample:
    text: bytes  # the receiver's receipt of the bundle sample's handover (ingested)
    bundle: bytes
    trusted: tuple[str, ...]  # the receiver's fingerprint, as the sender pins it


LEDGER_ID = "0f1e2d3c-4b5a-4968-8776-655443322110"


def handover_event(
    identity: KeycourierIdentity,
    bundle_id: str,
    *,
    seq: int,
    type_: str = "opened",
    ledger_id: str = LEDGER_ID,
    actor: str | None = None,
    data: dict[str, object] | None = None,
) -> str:
    """The canonical ledger body of an event signed by ``identity``, as a ledger stores it."""
    from keycourier.ledger import chain
    from keycourier.ledger.interface import Event, EventType
    from keycourier.ledger.signed import sign_event

    event = sign_event(
        Event(
            EventType(type_),
            NOW,
            actor or identity.public().signing_fingerprint,
            bundle_id,
            data=data or {"sealed_by": "kc1:" + "0" * 32},
        ),
        identity,
    )
    return chain.event_body(event, seq=seq, ledger_id=ledger_id)


def log_proof(
    bodies: list[str], index: int, *, key_label: str = "ledger note key", ledger_id: str = LEDGER_ID
) -> EventProof:
    """A signed checkpoint over ``bodies`` (leaves 0..n-1) and the proof of leaf ``index``,
    in the form of a keycourier ledger (origin ``keycourier/ledger/<ledger_id>``)."""
    from keycourier.ledger.checkpoints import EventProof
    from keycourier.tlog import checkpoint, merkle, note

    levels = merkle.levels_of([merkle.leaf_hash(b.encode()) for b in bodies])

    def read(level: int, i: int) -> bytes:
        return levels[level][i]

    signer = note.Signer("keycourier/ledger/" + ledger_id, _key(key_label))
    root = merkle.root_hash(len(bodies), read)
    signed = note.sign(checkpoint.Checkpoint(signer.name, len(bodies), root).text(), [signer])
    return EventProof(
        log_index=index,
        tree_size=len(bodies),
        root_hash=root,
        hashes=tuple(merkle.inclusion_proof(index, len(bodies), read)),
        checkpoint=signed,
        body=bodies[index],
        verifier_key=signer.verifier.vkey(),
    )


@functools.cache
def receipt_sample() -> ReceiptSample:
    """The receipt of the bundle sample, ingested (its `opened` event the 4th of a 6-event
    ledger whose checkpoint is signed by a fixed note key)."""
    from keycourier.bundle import parsing
    from keycourier.receipt import IssuedVault, issue

    sample = bundle_sample()
    parsed = parsing.parse(sample.text)
    bodies = [f'{{"seq":{i + 1},"type":"other"}}' for i in range(6)]
    bodies[3] = handover_event(sample.receiver, parsed.manifest.bundle_id, seq=4)
    text = issue(
        identity=sample.receiver,
        manifest=parsed.manifest,
        manifest_bytes=parsed.manifest_bytes,
        action="ingested",
        at=NOW,
        proof=log_proof(bodies, 3),
        vault=IssuedVault("secret/handed-over/acme/qbo", 1),
    )
    return ReceiptSample(text, sample.text, (sample.receiver.public().signing_fingerprint,))
