"""Seal: check credentials against the handover policy, seal them, record `sealed`."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from keycourier import age, bundle
from keycourier._record import field, record, replace
from keycourier.bundle import KeycourierIdentity, Manifest, SealedBundle, parsing
from keycourier.errors import IntegrityError, PolicyError, UsageError
from keycourier.ledger.interface import Event, EventType, Recorder, RecordOutcome
from keycourier.ledger.signed import sign_event
from keycourier.policy import HandoverFacts, Policy, Report, Verdict, evaluate

DEFAULT_LIFETIME = timedelta(days=7)
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


class RejectedError(PolicyError):
    """The handover policy rejected the credentials (exit 7); nothing was sealed.

    ``report`` is the whole policy report (every rule with its hint, never the secret);
    ``event`` is the `rejected` event and ``outcome`` says where it went."""

    def __init__(self, report: Report, event: Event, outcome: RecordOutcome) -> None:
        super().__init__(
            f"the handover is rejected by the policy (rules: {', '.join(report.rejected)})",
            hints=["see the policy report: each rejected rule has a hint"],
        )
        self.report = report
        self.event = event
        self.outcome = outcome


@record
class SealRequest:
    """One handover to seal: the sender's facts, who seals, for whom, under which policy."""

    facts: HandoverFacts  # platform, client ID and secret, environment, attestation, lifetime
    sender: KeycourierIdentity
    recipients: Sequence[str]  # age recipients (age1..., age1pq1...), at least one
    policy: Policy
    # the deny list, required so that no caller skips it by leaving it out: credential
    # fingerprint -> why it is denied, or None (``api.deny_list(settings)``: this ledger's
    # `denied_fingerprint` events and Vault's deny records, as the command line uses)
    denied: Callable[[str], str | None] = field(repr=False)
    partner: str | None = None  # the sender's organisation, shown in the manifest
    supersedes: str | None = None  # the bundle ID these credentials replace (a rotation)
    probe: bool = False  # also run the live credential probe (network)


@record
class Sealed:
    """A sealed bundle, not yet handed out, and the `sealed` event as recorded."""

    text: bytes  # the bundle file's bytes (text-safe; 0600 when written)
    manifest: Manifest
    report: Report
    event: Event
    outcome: RecordOutcome
    warnings: tuple[str, ...] = ()  # the policy's warnings, "rule: message"

    def summary(self) -> dict[str, Any]:
        return summary(self.manifest)


def summary(manifest: Manifest) -> dict[str, Any]:
    """The public facts of a sealed bundle (what `seal --json` prints)."""
    d = manifest.to_dict()
    extra = {} if manifest.supersedes is None else {"supersedes": manifest.supersedes}
    return extra | {
        k: d[k]
        for k in (
            "bundle_id",
            "platform",
            "environment",
            "partner",
            "client_id_masked",
            "fingerprint",
            "created_at",
            "expires_at",
            "recipients",
        )
    }


def check_bundle_id(value: str | None, *, what: str) -> None:
    """UsageError unless ``value`` (when given) is a bundle ID: a UUID, as `inspect` shows."""
    if value is not None and not _UUID4.match(value):
        raise UsageError(
            f"{what} takes the bundle ID of the bundle being replaced (a UUID, as "
            "'keycourier inspect' shows it)"
        )


def rotation_source(old_text: bytes, *, sender: str, name: str) -> Manifest:
    """The manifest of the bundle a rotation replaces, checked: it verifies (signature and
    payload digest; IntegrityError, exit 4) and ``sender`` (a signing fingerprint) sealed
    it (PolicyError, exit 7: only its sender rotates it). ``name`` names it in errors."""

    old = parsing.parse(old_text)
    if not parsing.verify_signature(old) or not parsing.payload_ok(old):
        raise IntegrityError(f"{name} does not verify: run 'keycourier inspect {name}'")
    m = old.manifest
    if m.sender_fingerprint != sender:
        raise PolicyError(
            f"{name} was sealed by {m.sender_fingerprint}, not by this identity "
            f"({sender}): only its sender rotates it"
        )
    return m


def seal(request: SealRequest, *, recorder: Recorder, now: datetime | None = None) -> Sealed:
    """Check ``request`` against its policy, seal it and record `sealed` (signed).

    A rejection is recorded (`rejected`, with the rules and the masked client ID) and
    raised as ``RejectedError``; warnings are returned. The bundle is returned, not written:
    the caller hands it out (``Sealed.text``). Raises UsageError for a malformed request.
    """

    check_bundle_id(request.supersedes, what="supersedes")
    recipients = [age.parse_recipient(r).to_string() for r in request.recipients]
    if not recipients:
        raise UsageError("at least one recipient is required")
    now = now or datetime.now(UTC)
    policy = request.policy
    facts = request.facts
    lifetime = facts.lifetime or DEFAULT_LIFETIME
    facts = replace(facts, lifetime=lifetime)
    report = evaluate(policy, facts, now=now, denied=request.denied, probe=request.probe)
    actor = request.sender.public().signing_fingerprint
    if report.verdict == Verdict.REJECT:
        rejected = Event(
            type=EventType.REJECTED,
            at=now,
            actor=actor,
            fingerprint=report.fingerprint,
            policy_digest=policy.digest,
            data={
                "platform": report.platform,
                "rules": list(report.rejected),
                "client_id_masked": report.masked_client_id,
                "partner": request.partner,
            },
        )
        raise RejectedError(report, rejected, recorder.record(rejected))
    if report.secret is None:  # pragma: no cover - evaluate always sets it unless rejected
        raise UsageError("the policy produced no normalised secret")
    sealed: SealedBundle = bundle.seal(
        bundle.Credentials(report.platform, facts.client_id, report.secret),
        sender=request.sender,
        recipients=recipients,
        policy=bundle.PolicyStamp(policy.digest, str(report.verdict), report.warned),
        lifetime=lifetime,
        environment=facts.environment or "unspecified",
        partner=request.partner,
        attestation=(
            bundle.Attestation(report.attested_by, report.attestation or "")
            if report.attested_by
            else None
        ),
        now=now,
        supersedes=request.supersedes,
    )
    m = sealed.manifest
    # signed like every event that another machine may act on (docs/provenance.md)
    event = sign_event(
        Event(
            type=EventType.SEALED,
            at=now,
            actor=actor,
            bundle_id=m.bundle_id,
            fingerprint=m.fingerprint,
            policy_digest=policy.digest,
            data={**summary(m), "sender": m.sender_fingerprint, "verdict": str(report.verdict)},
        ),
        request.sender,
    )
    outcome = recorder.record(event)
    warnings = tuple(
        f"{f.rule_id}: {f.message}" for f in report.findings if f.effect == Verdict.WARN
    )
    return Sealed(sealed.text, m, report, event, outcome, warnings)
