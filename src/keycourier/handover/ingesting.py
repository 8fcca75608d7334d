"""Ingest: open a bundle and store its credentials in Vault KV v2 at a path this receiver
holds, with provenance metadata, then record `ingested` (and `superseded` for a rotation).

The occupancy and rotation rules are docs/rotation.md's (``ledger.rotation``); the store is
a ``KvStore`` (``vault.kv.VaultKv`` over a Vault client, or a fake in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from keycourier import bundle
from keycourier._record import field, record, replace
from keycourier.bundle import KeycourierIdentity, Manifest
from keycourier.errors import Error, PolicyError
from keycourier.handover.opening import DecidingRecorder, Opened, OpenRequest, open_bundle
from keycourier.ledger.interface import Event, EventType, RecordOutcome
from keycourier.ledger.rotation import (
    BundleFacts,
    Holder,
    Supersession,
    check_path_claim,
    check_supersession,
    current_holder,
    holders,
)
from keycourier.ledger.signed import sign_event
from keycourier.ledger.state import bundle_state
from keycourier.policy import Policy
from keycourier.vault.errors import CasMismatchError
from keycourier.vault.paths import check_ingest_path


class KvMetadataView(Protocol):
    """What ingest reads of a KV v2 path's metadata (``vault.kv.KvMetadata``)."""

    @property
    def current_version(self) -> int: ...

    @property
    def versions(self) -> Mapping[int, Mapping[str, object]]: ...

    @property
    def custom_metadata(self) -> Mapping[str, object]: ...


class KvStore(Protocol):
    """The KV v2 operations ingest needs, on one mount (``vault.kv.VaultKv``)."""

    @property
    def mount(self) -> str: ...

    def read_metadata(self, path: str) -> KvMetadataView | None: ...

    def write(self, path: str, data: Mapping[str, str], *, cas: int) -> int:
        """A new version of ``path`` (check-and-set against ``cas``): the version number.
        Raises ``vault.errors.CasMismatchError`` when ``path`` is no longer at version ``cas``."""
        ...

    def write_metadata(self, path: str, custom: Mapping[str, str]) -> None: ...


def _no_warning(_message: str) -> None:
    return None


@record
class IngestRequest:
    """One bundle to ingest at ``vault_path`` (under ``handed-over/``)."""

    text: bytes
    identity: KeycourierIdentity  # the receiver
    trusted: Sequence[str]  # pinned senders
    policy: Policy  # the receiver's handover policy
    vault_path: str  # KV path under the store's mount, e.g. handed-over/acme/quickbooks
    # the deny list, required so that no caller skips it by leaving it out: credential
    # fingerprint -> why it is denied, or None (``api.deny_list(settings)``: this ledger's
    # `denied_fingerprint` events and Vault's deny records, as the command line uses)
    denied: Callable[[str], str | None] = field(repr=False)
    allow_reopen: bool = False
    allow_superseded: bool = False
    # write over credentials that another sender, platform or partner stored, or that this
    # receiver has no record of storing
    allow_overwrite: bool = False


@record
class PathClaim:
    """What ingest decided about its path before opening anything."""

    cas: int  # the path's current version: the write replaces exactly this one
    rotation: Supersession | None
    replaced: Holder | None  # what is stored there now (None: nothing live)
    forced: bool  # allow_overwrite was needed


@record
class Ingested:
    """Credentials stored and the events that say so."""

    opened: Opened  # the open it ran (its `opened` event)
    vault_path: str  # mount/path
    kv_version: int
    provenance: Mapping[str, str]  # the path's custom_metadata
    claim: PathClaim
    event: Event  # `ingested`
    outcome: RecordOutcome
    superseded: tuple[Event, RecordOutcome] | None = None  # a rotation's `superseded`
    warnings: tuple[str, ...] = ()


def ingest(
    request: IngestRequest,
    *,
    recorder: DecidingRecorder,
    store: KvStore,
    now: datetime | None = None,
    warn: Callable[[str], None] = _no_warning,
) -> Ingested:
    """Claim the path, open the bundle, write the credentials (check-and-set), record.

    All of it runs under ``recorder.decision_lock()``: who holds the path and a rotation's
    rules are decided before anything is opened (PolicyError, exit 7, when refused), and
    the write replaces exactly the version decided on (another write in between is exit 7).
    Once the credentials are written, `ingested` is always recorded; a failed metadata
    write is a warning.
    """

    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        warn(message)

    check_ingest_path(request.vault_path)
    ident = request.identity
    me = ident.public().signing_fingerprint
    full_path = f"{store.mount}/{request.vault_path}"
    with recorder.decision_lock():
        claim = claim_path(
            recorder,
            store,
            request.vault_path,
            bundle.parse(request.text).manifest,
            own_key=ident.public().signing_key,
            trusted=request.trusted,
            allow_overwrite=request.allow_overwrite,
            warn=note,
        )
        opened = open_bundle(
            OpenRequest(
                text=request.text,
                identity=ident,
                trusted=request.trusted,
                policy=request.policy,
                allow_reopen=request.allow_reopen,
                allow_superseded=request.allow_superseded,
                denied=request.denied,
            ),
            recorder=recorder,
            now=now,
            warn=note,
        )
        m = opened.bundle.manifest
        c = opened.bundle.credentials
        provenance = {
            "bundle_id": m.bundle_id,
            "fingerprint": m.fingerprint,
            "sealed_by": m.sender_fingerprint,
            "sealed_at": str(m.to_dict().get("created_at", "")),
            "platform": c.platform,
            # Vault refuses an empty metadata value: a bundle sealed without a partner has none
            **({"partner": m.partner} if m.partner else {}),
        }
        secret = {
            "platform": c.platform,
            "client_id": c.client_id,
            "client_secret": c.client_secret.reveal(),
        }
        try:
            version = store.write(request.vault_path, secret, cas=claim.cas)
        except CasMismatchError:
            raise PolicyError(
                f"{full_path} was written by someone else while this ingest ran (it was at "
                f"version {claim.cas}); nothing was written",
                hints=[
                    "find out who wrote it (its KV metadata), then ingest again",
                    f"bundle {m.bundle_id} is now recorded as opened: retry with --allow-reopen",
                ],
            ) from None
        except Error as exc:
            exc.hints = (
                *exc.hints,
                f"bundle {m.bundle_id} is now recorded as opened: retry with --allow-reopen",
            )
            raise
        try:
            store.write_metadata(request.vault_path, provenance)
        except Error as exc:
            # the credentials are stored: the event that says so must be recorded (a retry
            # would find a version this receiver had not recorded storing)
            note(
                f"the credentials are stored at {full_path} (version {version}), but its "
                f"provenance metadata could not be written: {exc.message}"
            )
        event = sign_event(
            Event(
                type=EventType.INGESTED,
                at=now or datetime.now(UTC),
                actor=me,
                bundle_id=m.bundle_id,
                fingerprint=m.fingerprint,
                policy_digest=m.policy.digest,
                data={
                    "vault_path": full_path,
                    "kv_version": version,
                    "platform": c.platform,
                    "partner": m.partner,
                    "sealed_by": m.sender_fingerprint,
                    **replaced_data(claim),
                },
            ),
            ident,
        )
        outcome = recorder.record(event)
        superseded = None
        if claim.rotation is not None:
            retired = sign_event(
                Event(
                    type=EventType.SUPERSEDED,
                    at=event.at,
                    actor=me,
                    bundle_id=claim.rotation.bundle_id,
                    data={
                        "superseded_by": m.bundle_id,
                        "vault_path": claim.rotation.vault_path,
                        "replaced_kv_version": claim.rotation.replaced_kv_version,
                        "kv_version": version,
                    },
                ),
                ident,
            )
            superseded = (retired, recorder.record(retired))
    return Ingested(
        opened=opened,
        vault_path=full_path,
        kv_version=version,
        provenance=provenance,
        claim=claim,
        event=event,
        outcome=outcome,
        superseded=superseded,
        warnings=tuple(notes),
    )


def claim_path(
    recorder: DecidingRecorder,
    store: KvStore,
    vault_path: str,
    manifest: Manifest,
    *,
    own_key: str,
    trusted: Sequence[str],
    allow_overwrite: bool,
    warn: Callable[[str], None] = _no_warning,
) -> PathClaim:
    """The occupancy and rotation rules of docs/rotation.md for writing ``manifest``'s
    credentials to ``vault_path``, checked on the manifest (its signature is verified by
    the open that follows) before anything is opened or recorded. Call it under the
    decision lock and write with ``cas``."""

    full_path = f"{store.mount}/{vault_path}"
    new = BundleFacts(
        manifest.bundle_id, manifest.sender_fingerprint, manifest.platform, manifest.partner
    )
    meta = store.read_metadata(vault_path)
    live = live_version(meta)
    rotation = None
    if manifest.supersedes is not None:
        state = bundle_state(
            recorder,
            manifest.supersedes,
            trusted=[*trusted, manifest.sender_key],
            own_key=own_key,
        )
        rotation = check_supersession(
            state.events,
            old_bundle_id=manifest.supersedes,
            superseded_by=state.superseded_by,
            own_key=own_key,
            new=new,
            vault_path=full_path,
        )
    held = holders(
        current_version=live,
        path_events=[s.event for s in recorder.history_by_data("vault_path", full_path)],
        own_key=own_key,
        metadata=meta.custom_metadata if meta else {},
    )
    forced = False
    try:
        replaced = check_path_claim(
            full_path,
            current_version=live,
            holders_now=held,
            new=new,
            rotation=rotation,
            allow_overwrite=False,
        )
    except PolicyError:
        if not allow_overwrite:
            raise
        forced = True
        replaced = current_holder(live, held)
        who = (replaced.sealed_by if replaced else None) or "a writer this receiver did not record"
        warn(f"--allow-overwrite: replacing version {live} of {full_path}, stored by {who}")
        if rotation is not None and live:
            # say which version was really replaced, not the one the old bundle stored
            rotation = replace(rotation, replaced_kv_version=live)
    return PathClaim(meta.current_version if meta else 0, rotation, replaced, forced)


def live_version(meta: KvMetadataView | None) -> int:
    """The current version of a path, or 0 when there is none or it is deleted/destroyed."""
    if meta is None or meta.current_version == 0:
        return 0
    current = meta.versions.get(meta.current_version) or {}
    if current.get("deletion_time") or current.get("destroyed"):
        return 0
    return meta.current_version


def replaced_data(claim: PathClaim) -> dict[str, object]:
    """What an `ingested` event says it replaced: a rotation's superseded bundle and the
    version that was there, and whether allow_overwrite was needed (then always who held
    the path, as far as this receiver knows)."""
    out: dict[str, object] = {}
    if claim.rotation is not None:
        out["supersedes"] = {
            "bundle_id": claim.rotation.bundle_id,
            "replaced_kv_version": claim.rotation.replaced_kv_version,
        }
    if claim.replaced is not None and (claim.rotation is None or claim.forced):
        out["replaced"] = {**claim.replaced.to_json(), "overwrite": claim.forced}
    return out
