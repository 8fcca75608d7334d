"""Library entry points that combine bundles with the handover policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from keycourier.bundle.core import open_verified
from keycourier.bundle.identity import KeycourierIdentity, load_identity, read_identity_file
from keycourier.bundle.model import Credentials, Manifest
from keycourier.errors import PolicyError
from keycourier.policy import HandoverFacts, SandboxContext, Verdict, evaluate
from keycourier.policy.rules import CONTEXT_RULES
from keycourier.redact import Secret

if TYPE_CHECKING:
    from keycourier.policy import Policy, Report


class ReceiverPolicyError(PolicyError):
    """The receiver's policy refused a bundle that verified (exit 7)."""

    def __init__(
        self, message: str, *, manifest: Manifest, rejected: Sequence[str], hints: Sequence[str]
    ) -> None:
        super().__init__(message, hints=hints)
        self.manifest = manifest
        self.rejected: tuple[str, ...] = tuple(rejected)


@dataclass(frozen=True, slots=True)
class CheckedBundle:
    """A bundle that passed verification, expiry and the receiver's policy."""

    manifest: Manifest
    credentials: Credentials
    report: Report


def read_identity(path: Path, passphrase: Secret | None) -> KeycourierIdentity:
    return load_identity(read_identity_file(path), passphrase)


def open_bundle(
    text: bytes,
    *,
    identity: KeycourierIdentity,
    trusted: Sequence[str],
    policy: Policy,
    now: datetime,
    denied: Callable[[str], str | None] = lambda _fp: None,
) -> CheckedBundle:
    """Verify and decrypt, then re-run the receiver's handover policy.

    Credential rules are evaluated afresh. Context rules (sandbox hosts,
    realm, Xero tenant) cannot be: the receiver only knows which of them
    fired at the sender, from the manifest's warnings, and those count as
    fired under the receiver's severities (a sender's warning can be the
    receiver's rejection).

    Raises the integrity error (exit 4) for every tamper case, PolicyError
    (exit 7) when expired, and ReceiverPolicyError (a PolicyError) when the
    receiver's policy rejects.
    """

    opened = open_verified(text, identity=identity, trusted=trusted, now=now)
    m = opened.manifest
    facts = HandoverFacts(
        platform=m.platform,
        client_id=opened.credentials.client_id,
        client_secret=opened.credentials.client_secret,
        environment=m.environment,
        attested_by=m.attestation.by if m.attestation else None,
        attestation=m.attestation.statement if m.attestation else None,
        lifetime=m.expires_at - m.created_at,
        context=SandboxContext(),
        # what the sender saw about the surroundings (API host, realm, tenant) is
        # only in the manifest: judge it by this policy's severities
        reported=frozenset(m.policy.warnings) & CONTEXT_RULES,
        sender_policy=m.policy.digest,
    )
    report = evaluate(policy, facts, now=now, denied=denied)
    if report.verdict == Verdict.REJECT:
        raise ReceiverPolicyError(
            f"the receiving policy rejects bundle {m.bundle_id}: " + ", ".join(report.rejected),
            manifest=m,
            rejected=report.rejected,
            hints=[f.hint for f in report.findings if f.rule_id in report.rejected and f.hint],
        )
    return CheckedBundle(manifest=m, credentials=opened.credentials, report=report)
