"""Check: run the handover policy on a credential without sealing or recording anything."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from keycourier._record import record
from keycourier.policy import HandoverFacts, Policy, Report, evaluate


@record
class CheckRequest:
    facts: HandoverFacts
    policy: Policy
    # the deny list: a fingerprint's reason when denied, else None (api.deny_list(settings))
    denied: Callable[[str], str | None]
    probe: bool = False  # also ask the vendor's token endpoint whether the credential works


def check(request: CheckRequest, *, now: datetime | None = None) -> Report:
    """The policy report for the facts: a dry run, so a rejection is the report's verdict
    (``Verdict.REJECT``), not an error. Nothing is recorded."""
    return evaluate(
        request.policy,
        request.facts,
        now=now or datetime.now(UTC),
        denied=request.denied,
        probe=request.probe,
    )
