"""evaluate() as a library: the interface seal/open rely on, and rule helpers."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keycourier.errors import UsageError
from keycourier.policy import (
    HandoverFacts,
    Outcome,
    SandboxContext,
    Verdict,
    credential_fingerprint,
    evaluate,
    load_policy,
    merge_contexts,
    parse_context,
    parse_context_file,
)
from keycourier.policy.rules import (
    bad_characters,
    longest_repeat_run,
    longest_sequential_run,
    normalise_secret,
    shannon_bits_per_char,
)
from keycourier.redact import Secret, fingerprint
from tests.unit.policy import creds

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def facts(**kw: object) -> HandoverFacts:
    base = HandoverFacts(
        platform="quickbooks",
        client_id=creds.qb_client_id(),
        client_secret=Secret(creds.qb_secret() + "\n"),
        environment="production",
        attested_by="Ana Lima",
        attestation=None,
        lifetime=timedelta(days=7),
        context=SandboxContext(),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_passing_report_carries_what_the_manifest_needs() -> None:
    policy = load_policy(None)
    f = facts()
    report = evaluate(policy, f, now=NOW)
    assert report.verdict == Verdict.PASS
    assert report.rejected == ()
    assert report.policy_digest == policy.digest
    assert report.secret is not None
    assert report.secret.reveal_bytes() == f.client_secret.reveal_bytes()[:-1]
    assert report.fingerprint == credential_fingerprint("quickbooks", f.client_id, report.secret)
    assert report.fingerprint == fingerprint(
        "credential", b"quickbooks", f.client_id.encode(), report.secret.reveal_bytes()
    )
    assert report.masked_client_id == f"{f.client_id[:4]}…{f.client_id[-4:]}"
    assert report.attested_by == "Ana Lima"
    assert report.attestation == policy.param("attestation", "statement")
    assert [x.rule_id for x in report.findings][-1] == "live-probe"


def test_custom_attestation_statement_is_recorded() -> None:
    report = evaluate(load_policy(None), facts(attestation="Keys from Production tab."), now=NOW)
    assert report.attestation == "Keys from Production tab."
    assert report.to_dict()["attestation"] == "Keys from Production tab."


def test_to_dict_never_holds_the_secret() -> None:
    f = facts()
    report = evaluate(load_policy(None), f, now=NOW)
    text = json.dumps(report.to_dict())
    secret = f.client_secret.reveal().strip()
    assert secret not in text
    assert "secret" not in report.to_dict()
    assert secret not in repr(report)


def test_denied_callback_gets_the_fingerprint() -> None:
    seen: list[str] = []

    def denied(fp: str) -> str | None:
        seen.append(fp)
        return "compromised in ticket 42"

    report = evaluate(load_policy(None), facts(), now=NOW, denied=denied)
    assert seen == [report.fingerprint]
    assert report.rejected == ("denied-fingerprint",)
    finding = next(x for x in report.findings if x.rule_id == "denied-fingerprint")
    assert "compromised in ticket 42" in finding.message


def test_weak_secret_is_not_fingerprinted_nor_looked_up() -> None:
    calls: list[str] = []

    def denied(fp: str) -> str | None:
        calls.append(fp)
        return None

    report = evaluate(
        load_policy(None), facts(client_secret=Secret(b"password123")), now=NOW, denied=denied
    )
    assert report.fingerprint is None
    assert calls == []
    assert report.verdict == Verdict.REJECT


def test_probe_skipped_when_offline_rules_reject() -> None:
    report = evaluate(load_policy(None), facts(environment="sandbox"), now=NOW, probe=True)
    probe = report.findings[-1]
    assert probe.rule_id == "live-probe"
    assert probe.outcome == Outcome.SKIP
    assert "already rejected" in probe.message


def test_zero_lifetime_is_rejected() -> None:
    report = evaluate(load_policy(None), facts(lifetime=timedelta(0)), now=NOW)
    assert report.rejected == ("lifetime",)


def test_platform_is_normalised() -> None:
    report = evaluate(load_policy(None), facts(platform=" QuickBooks "), now=NOW)
    assert report.verdict == Verdict.PASS
    assert report.platform == "quickbooks"


def test_unknown_platform_skips_format_rules() -> None:
    report = evaluate(load_policy(None), facts(platform="sage\x1b[2J"), now=NOW)
    assert report.rejected == ("platform",)
    assert "(unprintable)" in report.findings[0].message
    skipped = {x.rule_id for x in report.findings if x.outcome == Outcome.SKIP}
    assert {"swapped-fields", "client-id-format", "secret-format"} <= skipped


def test_normalise_secret_removes_exactly_one_newline() -> None:
    assert normalise_secret(b"abc\n") == (b"abc", True)
    assert normalise_secret(b"abc\n\n") == (b"abc\n", True)
    assert normalise_secret(b"abc\r\n") == (b"abc\r", True)
    assert normalise_secret(b"abc") == (b"abc", False)


def test_bad_characters_positions() -> None:
    found = list(bad_characters("ab c\u2009d\u0435"))
    assert [pos for pos, _ in found] == [3, 5, 7]
    assert "THIN SPACE" in found[1][1]
    assert "CYRILLIC SMALL LETTER IE" in found[2][1]


def test_runs_and_entropy() -> None:
    assert longest_repeat_run("abbbbc") == 4
    assert longest_sequential_run("xabcdy") == 4
    assert longest_sequential_run("9876") == 4
    assert longest_sequential_run("") == 0
    assert shannon_bits_per_char("aaaa") == 0.0
    assert shannon_bits_per_char("abcd") == 2.0


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_evaluate_never_raises_and_never_passes_junk(secret_text: str) -> None:
    report = evaluate(
        load_policy(None), facts(client_secret=Secret(secret_text.encode("utf-8"))), now=NOW
    )
    # a 40-char alphanumeric high-entropy value is the only way to pass secret-format
    stripped = secret_text[:-1] if secret_text.endswith("\n") else secret_text
    if report.verdict != Verdict.REJECT:
        assert len(stripped) == 40
        assert stripped.isascii()
        assert stripped.isalnum()


@given(st.binary(max_size=80))
def test_evaluate_handles_any_bytes(raw: bytes) -> None:
    report = evaluate(load_policy(None), facts(client_secret=Secret(raw)), now=NOW)
    assert report.verdict in (Verdict.PASS, Verdict.WARN, Verdict.REJECT)
    text = raw.decode("utf-8", "ignore").strip()
    if len(text) >= 16:
        assert text not in json.dumps(report.to_dict(), ensure_ascii=False)


def test_context_parsing_and_merging(tmp_path: Path) -> None:
    ctx = parse_context(
        b'{"api_base": "https://q", "realm_is_sandbox": false, "xero_is_demo_company": null}'
    )
    assert ctx.api_base == "https://q"
    merged = merge_contexts(ctx, SandboxContext(realm_is_sandbox=True, xero_is_demo_company=True))
    assert merged.realm_is_sandbox is True
    assert merged.xero_is_demo_company is True
    path = tmp_path / "c.json"
    path.write_text('{"realm_id": "123", "xero_tenant_name": "Acme"}')
    assert parse_context_file(path).realm_id == "123"
    with pytest.raises(UsageError, match="cannot read"):
        parse_context_file(tmp_path / "missing.json")
    with pytest.raises(UsageError, match="control characters"):
        parse_context(b'{"xero_tenant_name": "a\\u0007b"}')
    assert set(SandboxContext().to_dict()) >= {"api_base", "xero_is_demo_company"}


def test_made_up_test_credentials_cannot_hold_a_placeholder_word() -> None:
    from keycourier.policy import load_policy
    from tests.support.random_text import ALNUM

    words = load_policy(None).param("placeholder", "words")
    assert not any(set(word.lower()) <= set(ALNUM.lower()) for word in words)
