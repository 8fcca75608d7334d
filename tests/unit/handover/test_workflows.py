"""The handover workflows as a library: typed requests in, typed results out, events on the
recorder it is given (a memory recorder here), never a print or an exit."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from keycourier import api
from keycourier.handover.sealing import check_bundle_id
from keycourier.ledger.interface import Event, RecordOutcome
from tests.support.handover import nothing_denied
from tests.support.random_text import ALNUM

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def facts(**changes: object) -> api.HandoverFacts:
    base: dict[str, object] = {
        "platform": "quickbooks",
        "client_id": "AB" + "".join(secrets.choice(ALNUM) for _ in range(48)),
        "client_secret": api.Secret("".join(secrets.choice(ALNUM) for _ in range(40))),
        "environment": "production",
        "attested_by": "Jane Doe, CTO",
    }
    return api.HandoverFacts(**(base | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def partner() -> api.KeycourierIdentity:
    return api.KeycourierIdentity.generate()


@pytest.fixture(scope="module")
def platform() -> api.KeycourierIdentity:
    return api.KeycourierIdentity.generate()


def seal_request(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity, **changes: object
) -> api.SealRequest:
    return api.SealRequest(
        facts=changes.pop("facts", None) or facts(),  # type: ignore[arg-type]
        sender=partner,
        recipients=[platform.public().recipient],
        policy=api.load_policy(None),
        denied=nothing_denied,
        partner="Acme Corp",
        **changes,  # type: ignore[arg-type]
    )


def sandbox_request(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> api.SealRequest:
    return seal_request(partner, platform, facts=facts(environment="sandbox"))


def open_request(
    sealed: api.Sealed, partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> api.OpenRequest:
    return api.OpenRequest(
        text=sealed.text,
        identity=platform,
        trusted=[partner.public().signing_fingerprint],
        policy=api.load_policy(None),
        denied=nothing_denied,
    )


def test_seal_returns_the_bundle_and_records_one_signed_event(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> None:
    recorder = api.MemoryRecorder()
    request = seal_request(partner, platform)
    sealed = api.seal(request, recorder=recorder, now=NOW)
    assert [s.event for s in recorder.events] == [sealed.event]
    assert sealed.event.type == api.EventType.SEALED
    assert sealed.event.bundle_id == sealed.manifest.bundle_id
    assert sealed.event.actor == partner.public().signing_fingerprint
    assert "signature" in sealed.event.data  # another machine may act on it
    assert sealed.outcome == RecordOutcome(1, api.VaultStatus.DISABLED)
    assert sealed.manifest.created_at == NOW
    assert sealed.summary()["bundle_id"] == sealed.manifest.bundle_id
    secret = request.facts.client_secret.reveal()
    assert secret not in repr(sealed)
    assert secret not in repr(recorder.events)
    assert api.inspect_bundle(sealed.text).manifest == sealed.manifest


def test_a_rejection_is_recorded_and_raised_with_its_report(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> None:
    recorder = api.MemoryRecorder()
    with pytest.raises(api.RejectedError) as caught:
        api.seal(
            seal_request(partner, platform, facts=facts(environment="sandbox")), recorder=recorder
        )
    exc = caught.value
    assert exc.exit_code == api.ExitCode.POLICY
    assert any("environment" in rule for rule in exc.report.rejected)
    assert [s.event.type for s in recorder.events] == [api.EventType.REJECTED]
    assert exc.event == recorder.events[0].event
    assert exc.outcome.seq == 1


def test_a_rejection_never_fails_for_vault(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> None:
    """require_vault guards what is handed out; a rejection hands nothing out."""
    recorder = api.MemoryRecorder(vault_status=api.VaultStatus.PENDING, require_vault=True)
    with pytest.raises(api.RejectedError) as caught:
        api.seal(
            seal_request(partner, platform, facts=facts(environment="sandbox")), recorder=recorder
        )
    assert caught.value.outcome.vault_status == api.VaultStatus.PENDING
    with pytest.raises(api.UnavailableError):  # the release itself still needs Vault
        api.seal(seal_request(partner, platform), recorder=recorder)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"recipients": []}, "at least one recipient"),
        ({"recipients": ["age1notarecipient"]}, "recipient"),
        ({"supersedes": "not-a-bundle-id"}, "bundle ID"),
    ],
)
def test_a_malformed_request_is_a_usage_error_and_records_nothing(
    partner: api.KeycourierIdentity,
    platform: api.KeycourierIdentity,
    changes: dict[str, object],
    needle: str,
) -> None:
    recorder = api.MemoryRecorder()
    request = seal_request(partner, platform)
    bad = api.SealRequest(
        facts=request.facts,
        sender=partner,
        recipients=changes.get("recipients", request.recipients),  # type: ignore[arg-type]
        policy=request.policy,
        denied=nothing_denied,
        supersedes=changes.get("supersedes"),  # type: ignore[arg-type]
    )
    with pytest.raises(api.Error) as caught:
        api.seal(bad, recorder=recorder)
    assert caught.value.exit_code == api.ExitCode.USAGE
    assert needle in caught.value.message
    assert recorder.events == []


def test_check_bundle_id_takes_a_uuid4_only() -> None:
    check_bundle_id(None, what="x")
    check_bundle_id("0b8e4c3a-6f0e-4a5e-9d3c-2b1a0f9e8d7c", what="x")
    for bad in ("0b8e4c3a-6f0e-4a5e-9d3c-2b1a0f9e8d7c\n", "0B8E4C3A-6F0E-4A5E-9D3C-2B1A0F9E8D7C"):
        with pytest.raises(api.UsageError):
            check_bundle_id(bad, what="x")


class WatchedRecorder(api.MemoryRecorder):
    """A memory recorder that notes whether the decision lock was held at each record."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.held_at: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        self.held = True
        try:
            yield
        finally:
            self.held = False

    def decision_lock(self) -> contextlib.AbstractContextManager[object]:
        return self._held()

    def record(self, event: Event) -> RecordOutcome:
        self.held_at.append((str(event.type), self.held))
        return super().record(event)


def test_open_checks_and_records_under_the_decision_lock(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> None:
    request = seal_request(partner, platform)
    sealed = api.seal(request, recorder=api.MemoryRecorder())
    recorder = WatchedRecorder()
    opened = api.open_bundle(open_request(sealed, partner, platform), recorder=recorder)
    assert recorder.held_at == [("opened", True)]
    assert opened.event.type == api.EventType.OPENED
    assert opened.event.data["sealed_by"] == partner.public().signing_fingerprint
    assert "reopen" not in opened.event.data
    assert opened.bundle.credentials.client_id == request.facts.client_id
    assert opened.bundle.credentials.client_secret.equals(request.facts.client_secret)
    assert opened.bundle.manifest == sealed.manifest
    assert opened.warnings == ()


def test_a_second_open_is_refused_unless_allowed_and_then_recorded_as_a_reopen(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> None:
    recorder = api.MemoryRecorder()
    sealed = api.seal(seal_request(partner, platform), recorder=recorder)
    request = open_request(sealed, partner, platform)
    api.open_bundle(request, recorder=recorder)
    with pytest.raises(api.PolicyError, match="already opened"):
        api.open_bundle(request, recorder=recorder)
    again = api.open_bundle(
        api.OpenRequest(
            text=request.text,
            identity=platform,
            trusted=request.trusted,
            policy=request.policy,
            denied=nothing_denied,
            allow_reopen=True,
        ),
        recorder=recorder,
    )
    assert again.event.data["reopen"] is True
    assert again.event.data["previous_opens"] == 1
    assert again.state.opens == 1


def test_a_revoked_bundle_is_refused_and_nothing_is_recorded(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> None:
    recorder = api.MemoryRecorder()
    sealed = api.seal(seal_request(partner, platform), recorder=recorder)
    recorder.record(
        Event(
            type=api.EventType.REVOKED,
            at=NOW,
            actor="ops",
            bundle_id=sealed.manifest.bundle_id,
            data={"reason": "sent to the wrong team"},
        )
    )
    with pytest.raises(api.PolicyError, match="revoked: sent to the wrong team"):
        api.open_bundle(open_request(sealed, partner, platform), recorder=recorder)
    assert [s.event.type for s in recorder.events] == [api.EventType.SEALED, api.EventType.REVOKED]


def test_an_unpinned_signer_is_named_in_a_hint(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> None:
    sealed = api.seal(seal_request(partner, platform), recorder=api.MemoryRecorder())
    stranger = api.KeycourierIdentity.generate().public().signing_fingerprint
    request = api.OpenRequest(
        text=sealed.text,
        identity=platform,
        trusted=[stranger],
        policy=api.load_policy(None),
        denied=nothing_denied,
    )
    with pytest.raises(api.IntegrityError) as caught:
        api.open_bundle(request, recorder=api.MemoryRecorder())
    assert partner.public().signing_fingerprint in " ".join(caught.value.hints)


def test_a_signed_revocation_found_only_in_vault_is_honoured(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> None:
    """The shared store (Vault) is part of the recorder port: a memory recorder's ``shared``
    stands for it. A revocation signed by the sender counts; an unsigned one is reported and
    not acted on."""
    from keycourier.ledger.signed import sign_event

    sealed = api.seal(seal_request(partner, platform), recorder=api.MemoryRecorder())
    revocation = Event(
        type=api.EventType.REVOKED,
        at=NOW,
        actor="someone",
        bundle_id=sealed.manifest.bundle_id,
        data={"reason": "leaked"},
    )
    unsigned = api.MemoryRecorder()
    unsigned.shared = [revocation]
    opened = api.open_bundle(open_request(sealed, partner, platform), recorder=unsigned)
    assert any("is not acted on" in w for w in opened.warnings)
    assert opened.state.vault_checked

    signed = api.MemoryRecorder()
    signed.shared = [sign_event(revocation, partner)]
    with pytest.raises(api.PolicyError, match="revoked: leaked"):
        api.open_bundle(open_request(sealed, partner, platform), recorder=signed)
    assert signed.events == []


def test_the_deny_list_a_request_carries_is_applied(
    partner: api.KeycourierIdentity, platform: api.KeycourierIdentity
) -> None:
    """There is no default deny list to forget: each request names one, and a denied
    credential is rejected on both sides."""
    request = seal_request(partner, platform)
    sealed = api.seal(request, recorder=api.MemoryRecorder())
    fingerprint = sealed.manifest.fingerprint

    def denied(fp: str) -> str | None:
        return "leaked in a ticket" if fp == fingerprint else None

    again = api.SealRequest(
        facts=request.facts,
        sender=partner,
        recipients=request.recipients,
        policy=request.policy,
        denied=denied,
    )
    with pytest.raises(api.RejectedError) as caught:
        api.seal(again, recorder=api.MemoryRecorder())
    assert "denied-fingerprint" in caught.value.report.rejected
    opening = api.OpenRequest(
        text=sealed.text,
        identity=platform,
        trusted=[partner.public().signing_fingerprint],
        policy=api.load_policy(None),
        denied=denied,
    )
    with pytest.raises(api.PolicyError):
        api.open_bundle(opening, recorder=api.MemoryRecorder())
    with pytest.raises(TypeError):
        api.OpenRequest(  # type: ignore[call-arg]
            text=sealed.text,
            identity=platform,
            trusted=[partner.public().signing_fingerprint],
            policy=api.load_policy(None),
        )


def test_check_is_a_dry_run_whose_rejection_is_the_reports_verdict() -> None:
    """check returns the report seal would act on, records nothing and raises nothing for
    a credential the policy rejects."""
    from keycourier.policy import Verdict

    passing = api.check(
        api.CheckRequest(facts=facts(), policy=api.load_policy(None), denied=nothing_denied),
        now=NOW,
    )
    assert passing.verdict != Verdict.REJECT
    sandbox = api.check(
        api.CheckRequest(
            facts=facts(environment="sandbox"), policy=api.load_policy(None), denied=nothing_denied
        ),
        now=NOW,
    )
    assert sandbox.verdict == Verdict.REJECT
    assert sandbox.rejected


def test_deny_records_one_event_stamped_with_the_policy_in_force() -> None:
    fingerprint = "kc1:" + "ab" * 16
    recorder = api.MemoryRecorder()
    policy = api.load_policy(None)
    denied = api.deny(
        api.DenyRequest(fingerprint, "  development key, sent by mistake ", "ana", policy.digest),
        recorder=recorder,
        now=NOW,
    )
    assert denied.event.type == api.EventType.DENIED_FINGERPRINT
    assert denied.event.fingerprint == fingerprint
    assert denied.event.data == {"reason": "development key, sent by mistake"}
    assert denied.event.policy_digest == policy.digest
    assert [s.event.type for s in recorder.events] == [api.EventType.DENIED_FINGERPRINT]
    assert denied.outcome.seq == 1


@pytest.mark.parametrize(
    ("fingerprint", "reason", "actor", "complaint"),
    [
        ("kc1:" + "AB" * 16, "leaked", "ana", "kc1:<32 lowercase hex>"),
        ("kc1:" + "ab" * 15, "leaked", "ana", "kc1:<32 lowercase hex>"),
        ("kc1:" + "ab" * 16, "   ", "ana", "--reason"),
        ("kc1:" + "ab" * 16, "a\x1b[2Jb", "ana", "--reason"),
        ("kc1:" + "ab" * 16, "x" * 501, "ana", "--reason"),
        ("kc1:" + "ab" * 16, "leaked", " ", "--by"),
    ],
)
def test_a_malformed_denial_is_a_usage_error_and_records_nothing(
    fingerprint: str, reason: str, actor: str, complaint: str
) -> None:
    recorder = api.MemoryRecorder()
    with pytest.raises(api.UsageError, match=re.escape(complaint)):
        api.deny(api.DenyRequest(fingerprint, reason, actor, None), recorder=recorder)
    assert recorder.events == []
