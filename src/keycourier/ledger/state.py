"""What the ledger and Vault say of a bundle or a credential: its state for open and ingest
(opened, revoked, superseded, signed records only Vault holds), bundles awaiting a
receipt, credentials due for rotation, and the deny list."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from keycourier._record import record, replace
from keycourier.bundle.identity import signing_fingerprint
from keycourier.errors import (
    AuthError,
    ConfigError,
    UnavailableError,
    UsageError,
)
from keycourier.ledger.interface import (
    RELEASES,
    Event,
    EventType,
    Recorder,
    StoredEvent,
)
from keycourier.ledger.mirror import VaultMirror
from keycourier.ledger.recorder import open_recorder
from keycourier.ledger.signed import key_trusted, signer_of
from keycourier.redact import printable

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.ledger.mirror import VaultEvent


@record
class BundleState:
    """What the ledger and Vault know about one bundle."""

    bundle_id: str
    opened_by: tuple[str, ...] = ()
    revoked: str | None = None  # the recorded reason, when revoked
    sealed_by: str | None = None
    ingested_to: tuple[str, ...] = ()
    vault_checked: bool = False
    vault_detail: str = ""  # why Vault was not consulted, if it was not
    events: tuple[Event, ...] = ()
    # events found in Vault but not acted on (unsigned, or signed by an untrusted key)
    ignored: tuple[str, ...] = ()
    opens: int = 0  # `opened` events that count (not voided; from Vault: trusted only)
    superseded_by: str | None = None  # the bundle that replaced this one, when one did


def _vault_event_trusted(
    event: Event, *, senders: Sequence[str], own: Sequence[str]
) -> tuple[bool, str]:
    """Whether an event read from Vault may be acted on, and why not.

    Anyone whose token may create records can write any event, so only the signature
    counts: a revoke or a seal by the bundle's sender key or a key the reader trusts,
    an open or an ingest by those or by the reader's own key.
    """
    import base64

    signer = signer_of(event)
    if signer is None:
        return False, "it is not signed"
    if event.type in {EventType.REVOKED, EventType.SEALED}:
        keys = list(senders)
    elif event.type in {EventType.OPENED, EventType.INGESTED}:
        keys = [*senders, *own]
    elif event.type == EventType.SUPERSEDED:
        keys = list(own)  # only the receiver retires what it stored
    else:
        return False, "its type is not taken from Vault"
    if key_trusted(signer, keys):
        return True, ""
    who = signing_fingerprint(base64.b64decode(signer.split(":", 1)[1]))
    if event.type == EventType.OPENED:
        return False, (
            f"it is signed by {who}, a key this reader does not trust: possible interception "
            "(another recipient opened it) or a forged record"
        )
    return False, f"it is signed by {who}, a key this reader does not trust"


def bundle_state(
    recorder: Recorder,
    bundle_id: str,
    *,
    trusted: Sequence[str] = (),
    own_key: str | None = None,
) -> BundleState:
    """Opened / revoked / sealed facts from the local ledger and, when reachable, Vault.

    Events of the local ledger (this machine's own chain) count as they are. Events
    found only in Vault count only when signed by a key in ``trusted`` (the sender
    keys the reader trusts, the bundle's sender key among them) or, for opened and
    ingested events, by ``own_key``; the others are listed in ``ignored``.
    """
    local = recorder.history(bundle_id=bundle_id)
    events = [s.event for s in local]
    # A `release_aborted` event voids a sealed/opened event of this machine's own chain
    # only (see _voided_local). Records of other ledgers in Vault are not chain-verified
    # here and anyone with write access to the shared record could append one, so an
    # abort found there never hides an open or a revoke: fail safe (--allow-reopen).
    voided = _voided_local(local)
    live = [s.event for s in local if s.seq not in voided]
    vault_checked = False
    detail = ""
    ignored: list[str] = []
    found: Sequence[Event] = []
    try:
        shared = recorder.shared_events(bundle_id)
    except (UnavailableError, AuthError) as exc:
        detail = exc.message
    else:
        if shared is None:
            detail = "no Vault configured"
        else:
            found, vault_checked = shared, True
    own = [own_key] if own_key else []
    for e in found:
        ok, why = _vault_event_trusted(e, senders=trusted, own=own)
        if e.bundle_id != bundle_id:  # a signed event copied from another bundle's record
            ok, why = False, "it names another bundle"
        if ok:
            events.append(e)
            live.append(e)
        elif e.type in {EventType.REVOKED, EventType.OPENED, EventType.INGESTED}:
            ignored.append(
                f"a '{e.type}' event for bundle {printable(bundle_id)} found in Vault "
                f"(actor {printable(e.actor[:80])}) is not acted on: {why}"
            )
    events.sort(key=lambda e: e.at)
    events = [printable_event(e) for e in events]
    live.sort(key=lambda e: e.at)
    opened: list[str] = []
    revoked: str | None = None
    sealed_by: str | None = None
    ingested: list[str] = []
    superseded_by: str | None = None
    opens = sum(1 for e in live if e.type == EventType.OPENED)
    for e in (printable_event(e) for e in live):
        if e.type == EventType.OPENED and e.actor not in opened:
            opened.append(e.actor)
        elif e.type == EventType.REVOKED and revoked is None:
            revoked = str(e.data.get("reason") or "no reason recorded")
        elif e.type == EventType.SEALED and sealed_by is None:
            sealed_by = e.actor
        elif e.type == EventType.INGESTED:
            ingested.append(str(e.data.get("vault_path", "")))
        elif e.type == EventType.SUPERSEDED and superseded_by is None:
            superseded_by = str(e.data.get("superseded_by") or "a later bundle")
    return BundleState(
        bundle_id=bundle_id,
        opened_by=tuple(opened),
        revoked=revoked,
        sealed_by=sealed_by,
        ingested_to=tuple(ingested),
        vault_checked=vault_checked,
        vault_detail=detail,
        events=tuple(events),
        ignored=tuple(ignored),
        opens=opens,
        superseded_by=superseded_by,
    )


@record
class Unconfirmed:
    """A bundle this ledger sealed that no verified receipt confirms (docs/receipts.md)."""

    bundle_id: str
    sealed_at: datetime
    partner: str | None
    platform: str | None
    fingerprint: str | None
    state: str  # "awaiting receipt", "revoked" or "expired"

    def to_json(self) -> dict[str, object]:
        return {
            "bundle_id": self.bundle_id,
            "sealed_at": _seconds(self.sealed_at),
            "partner": self.partner,
            "platform": self.platform,
            "fingerprint": self.fingerprint,
            "state": self.state,
        }


def unconfirmed(
    events: Iterable[StoredEvent], *, now: datetime, older_than: timedelta
) -> list[Unconfirmed]:
    """The bundles sealed here at least ``older_than`` ago with no `receipt_verified`,
    oldest first; a revoked or expired one says so (it needs no receipt, but a follow-up)."""
    local = list(events)
    voided = _voided_local(local)
    sealed: dict[str, StoredEvent] = {}
    confirmed: set[str] = set()
    revoked: set[str] = set()
    for stored in local:
        e = stored.event
        if e.bundle_id is None:
            continue
        if e.type == EventType.SEALED and stored.seq not in voided:
            sealed.setdefault(e.bundle_id, stored)
        elif e.type == EventType.RECEIPT_VERIFIED:
            confirmed.add(e.bundle_id)
        elif e.type == EventType.REVOKED:
            revoked.add(e.bundle_id)
    out: list[Unconfirmed] = []
    for bundle_id, stored in sealed.items():
        e = stored.event
        if bundle_id in confirmed or now - e.at < older_than:
            continue
        expires = _time_or_none(e.data.get("expires_at"))
        if bundle_id in revoked:
            state = "revoked"
        elif expires is not None and expires <= now:
            state = "expired"
        else:
            state = "awaiting receipt"
        partner, platform = e.data.get("partner"), e.data.get("platform")
        out.append(
            Unconfirmed(
                bundle_id=bundle_id,
                sealed_at=e.at,
                partner=printable(partner) if isinstance(partner, str) else None,
                platform=printable(platform) if isinstance(platform, str) else None,
                fingerprint=e.fingerprint,
                state=state,
            )
        )
    return sorted(out, key=lambda u: u.sealed_at)


@record
class Stale:
    """Credentials whose current version at a Vault path is older than a rotation period."""

    vault_path: str
    fingerprint: str | None
    bundle_id: str | None
    kv_version: int | None
    ingested_at: datetime
    platform: str | None
    partner: str | None

    def to_json(self, now: datetime) -> dict[str, object]:
        return {
            "vault_path": self.vault_path,
            "fingerprint": self.fingerprint,
            "bundle_id": self.bundle_id,
            "kv_version": self.kv_version,
            "ingested_at": _seconds(self.ingested_at),
            "age_days": (now - self.ingested_at).days,
            "platform": self.platform,
            "partner": self.partner,
        }


def stale(events: Iterable[StoredEvent], *, now: datetime, older_than: timedelta) -> list[Stale]:
    """Per Vault path, the latest `ingested` event of this ledger (the version in use), when
    it is at least ``older_than`` old: credentials due for rotation, oldest first."""
    current: dict[str, Event] = {}
    for stored in events:
        e = stored.event
        path = e.data.get("vault_path")
        if e.type == EventType.INGESTED and isinstance(path, str):
            current[path] = e
    out: list[Stale] = []
    for path, e in current.items():
        if now - e.at < older_than:
            continue
        version = e.data.get("kv_version")
        platform, partner = e.data.get("platform"), e.data.get("partner")
        out.append(
            Stale(
                vault_path=printable(path),
                fingerprint=e.fingerprint,
                bundle_id=e.bundle_id,
                kv_version=version if isinstance(version, int) else None,
                ingested_at=e.at,
                platform=printable(platform) if isinstance(platform, str) else None,
                partner=printable(partner) if isinstance(partner, str) else None,
            )
        )
    return sorted(out, key=lambda x: x.ingested_at)


def _seconds(at: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``, as manifests and receipts write times (event times keep
    their microseconds: ``chain.format_time``)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time_or_none(value: object) -> datetime | None:
    """A manifest time (``YYYY-MM-DDTHH:MM:SSZ``) from event data, None if it is not one."""
    if not isinstance(value, str) or len(value) != 20:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _voided_local(local: Sequence[StoredEvent]) -> set[int]:
    """The seqs of this chain's releases that a later `release_aborted` voids.

    Honoured only when the abort names a sealed/opened event earlier in the same
    chain, of the type it says, by the same actor, for the same bundle: never a
    revoke or an ingest, never an event of another source.
    """
    by_seq = {s.seq: s.event for s in local}
    out: set[int] = set()
    for stored in local:
        abort = stored.event
        if abort.type != EventType.RELEASE_ABORTED:
            continue
        seq = abort.data.get("aborts_seq")
        if not isinstance(seq, int) or seq >= stored.seq:
            continue
        target = by_seq.get(seq)
        if (
            target is not None
            and target.type in RELEASES
            and abort.data.get("aborted_type") == str(target.type)
            and target.actor == abort.actor
            and target.bundle_id == abort.bundle_id
        ):
            out.add(seq)
    return out


def _printable_value(value: Any) -> Any:  # noqa: ANN401 - any JSON value
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_printable_value(v) for v in value]
    if isinstance(value, dict):
        return {printable(str(k)): _printable_value(v) for k, v in value.items()}
    return value


def printable_event(e: Event) -> Event:

    return replace(
        e,
        actor=printable(e.actor),
        bundle_id=None if e.bundle_id is None else printable(e.bundle_id),
        fingerprint=None if e.fingerprint is None else printable(e.fingerprint),
        policy_digest=None if e.policy_digest is None else printable(e.policy_digest),
        data=_printable_value(dict(e.data)),
    )


def denied_lookup(settings: Settings) -> Callable[[str], str | None]:
    """A deny-list look-up: the local ledger's `denied_fingerprint` events, then (when a
    Vault is configured and reachable) the fingerprint's deny record in Vault, written by
    any ledger. One Vault read per look-up. With no ledger file nothing is created."""

    def local(recorder: Recorder, fingerprint: str) -> str | None:
        for stored in recorder.history(fingerprint=fingerprint):
            event = stored.event
            if event.type == EventType.DENIED_FINGERPRINT and event.fingerprint == fingerprint:
                return str(event.data.get("reason", "")) or "(no reason recorded)"
        return None

    def in_vault(found: list[VaultEvent], fingerprint: str) -> str | None:
        for v in found:
            e = v.event
            if e.type == EventType.DENIED_FINGERPRINT and e.fingerprint == fingerprint:
                reason = printable(str(e.data.get("reason", ""))) or "(no reason recorded)"
                return f"{reason} (recorded in Vault by ledger {printable(v.ledger)})"
        return None

    def lookup(fingerprint: str) -> str | None:

        if settings.ledger_path.exists():
            with open_recorder(settings) as recorder:
                reason = local(recorder, fingerprint)
                if reason is not None or recorder.mirror is None:
                    return reason
                mirror = recorder.mirror
                try:
                    return in_vault(mirror.denied_events(fingerprint), fingerprint)
                except (UnavailableError, AuthError, ConfigError, UsageError):
                    return None
        if not settings.vault.addr:
            return None
        mirror = VaultMirror(settings)
        try:
            return in_vault(mirror.denied_events(fingerprint), fingerprint)
        except (UnavailableError, AuthError, ConfigError, UsageError):
            return None
        finally:
            mirror.close()

    return lookup
