"""Open: verify a bundle from a pinned sender, decrypt it, check the ledger, record `opened`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Protocol

from keycourier import bundle
from keycourier._record import field, record
from keycourier.bundle import CheckedBundle, KeycourierIdentity
from keycourier.errors import IntegrityError, PolicyError
from keycourier.ledger.interface import Event, EventType, Recorder, RecordOutcome
from keycourier.ledger.signed import sign_event
from keycourier.ledger.state import BundleState, bundle_state
from keycourier.policy import Policy


class DecidingRecorder(Recorder, Protocol):
    """A recorder that also serialises decisions made from its state (check, then record):
    ``decision_lock`` is held across the check and the event, one process at a time."""

    def decision_lock(self) -> AbstractContextManager[object]: ...


def _no_warning(_message: str) -> None:
    return None


@record
class OpenRequest:
    """One bundle to open: its bytes, the receiver, the senders it pins, its policy."""

    text: bytes  # the bundle file's bytes
    identity: KeycourierIdentity  # the receiver
    trusted: Sequence[str]  # pinned senders: kc1: fingerprints or signing keys
    policy: Policy  # the receiver's handover policy
    # the deny list, required so that no caller skips it by leaving it out: credential
    # fingerprint -> why it is denied, or None (``api.deny_list(settings)``: this ledger's
    # `denied_fingerprint` events and Vault's deny records, as the command line uses)
    denied: Callable[[str], str | None] = field(repr=False)
    allow_reopen: bool = False  # open a bundle that was opened before (recorded as a reopen)
    allow_superseded: bool = False  # open a bundle that a later one replaced


@record
class Opened:
    """An opened bundle (credentials inside: handle as a secret) and its `opened` event."""

    bundle: CheckedBundle  # manifest, credentials, the receiver's policy report
    event: Event
    outcome: RecordOutcome
    state: BundleState  # what the ledger (and Vault) knew before this open
    warnings: tuple[str, ...] = ()


def open_bundle(
    request: OpenRequest,
    *,
    recorder: DecidingRecorder,
    now: datetime | None = None,
    warn: Callable[[str], None] = _no_warning,
) -> Opened:
    """Verify, decrypt, re-run the receiver's policy, check the ledger, record `opened`.

    The ledger check (not revoked, not superseded, not opened before unless allowed) and
    the signed `opened` event happen under ``recorder.decision_lock()``. Warnings (another
    identity opened it first; Vault events that were not trusted) go to ``warn`` as they
    arise and are returned. Raises IntegrityError (exit 4) for every tamper case, with a
    hint when the bundle names a signer that is not pinned; ReceiverPolicyError (exit 7,
    after recording `rejected`) when the policy refuses it; PolicyError (exit 7) when it
    expired, was revoked, superseded or opened before.
    """

    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        warn(message)

    now = now or datetime.now(UTC)
    ident = request.identity
    policy = request.policy
    me = ident.public().signing_fingerprint
    trusted = list(request.trusted)
    try:
        checked = bundle.open_bundle(
            request.text,
            identity=ident,
            trusted=trusted,
            policy=policy,
            now=now,
            denied=request.denied,
        )
    except bundle.ReceiverPolicyError as exc:  # not an expiry: that is not a policy verdict
        m = exc.manifest
        recorder.record(
            Event(
                type=EventType.REJECTED,
                at=now,
                actor=me,
                bundle_id=m.bundle_id,
                fingerprint=m.fingerprint,
                policy_digest=policy.digest,
                data={
                    "stage": "open",
                    "platform": m.platform,
                    "rules": list(exc.rejected),
                    "client_id_masked": m.client_id_masked,
                    "partner": m.partner,
                    "sealed_by": m.sender_fingerprint,
                },
            )
        )
        raise
    except IntegrityError as exc:
        raise signer_hint(exc, request.text, trusted) from None
    m = checked.manifest
    with recorder.decision_lock():
        state = bundle_state(
            recorder,
            m.bundle_id,
            trusted=[*trusted, m.sender_key],
            own_key=ident.public().signing_key,
        )
        check_state(
            state,
            me,
            allow_reopen=request.allow_reopen,
            allow_superseded=request.allow_superseded,
            warn=note,
        )
        event = sign_event(
            Event(
                type=EventType.OPENED,
                at=now,
                actor=me,
                bundle_id=m.bundle_id,
                fingerprint=m.fingerprint,
                policy_digest=policy.digest,
                data={"sealed_by": m.sender_fingerprint, "opened_by": me, **_reopen_data(state)},
            ),
            ident,
        )
        outcome = recorder.record(event)
    return Opened(checked, event, outcome, state, tuple(notes))


def check_state(
    state: BundleState,
    me: str,
    *,
    allow_reopen: bool,
    allow_superseded: bool,
    warn: Callable[[str], None],
) -> None:
    """Refuse a revoked, superseded (unless allowed) or already opened (unless allowed)
    bundle (PolicyError, exit 7); warn when another identity opened it first."""
    bundle_id = state.bundle_id
    for message in state.ignored:
        warn(message)
    if state.revoked is not None:
        raise PolicyError(
            f"bundle {bundle_id} was revoked: {state.revoked}",
            hints=["ask the sender for a new bundle"],
        )
    if state.superseded_by is not None and not allow_superseded:
        raise PolicyError(
            f"bundle {bundle_id} was superseded by bundle {state.superseded_by}: its "
            "credentials were rotated",
            hints=["use the newer bundle, or pass --allow-superseded if you really mean this one"],
        )
    others = [who for who in state.opened_by if who != me]
    if others:
        warn(
            f"bundle {bundle_id} was already opened by another identity ({', '.join(others)}): "
            "possible interception; treat these credentials as compromised and ask for rotation"
        )
    if state.opened_by and not allow_reopen:
        raise PolicyError(
            f"bundle {bundle_id} was already opened",
            hints=["pass --allow-reopen if you really mean to open it again"],
        )


def _reopen_data(state: BundleState) -> dict[str, object]:
    """What an `opened` event adds when the bundle was opened before (a reopen):
    ``reopen`` true and ``previous_opens``, the `opened` events that count (this ledger's,
    not voided, and trusted ones from Vault). A first open adds nothing."""
    if not state.opens:
        return {}
    return {"reopen": True, "previous_opens": state.opens}


def signer_hint(exc: IntegrityError, text: bytes, trusted: Sequence[str]) -> IntegrityError:
    """The one integrity error, plus a hint when the bundle names a signer not pinned.

    The signer is public (``keycourier inspect`` shows it), so naming it tells
    an attacker nothing; the message stays the one message for every case.
    """

    try:
        manifest = bundle.inspect(text).manifest
    except IntegrityError:
        return exc
    if manifest.sender_fingerprint in trusted or manifest.sender_key in trusted:
        return exc
    pinned = ", ".join(t for t in trusted if t.startswith("kc1:")) or ", ".join(trusted)
    return IntegrityError(
        exc.message,
        hints=[
            f"the bundle names its signer as {manifest.sender_fingerprint}, which is not "
            f"among the pinned senders ({pinned}); compare it with the fingerprint the "
            "sender gave you through a second channel",
            *exc.hints,
        ],
    )
