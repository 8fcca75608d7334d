"""The live probe over real HTTP on 127.0.0.1, against the vendor stand-ins."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from keycourier.cli.main import cli
from keycourier.errors import Error
from keycourier.policy import (
    HandoverFacts,
    Outcome,
    Report,
    SandboxContext,
    Verdict,
    evaluate,
    load_policy,
)
from keycourier.redact import Secret
from tests.support.vendor_standin import VendorStandin, VendorState, start_vendor_standin
from tests.unit.policy import creds

NOW = datetime(2026, 11, 23, tzinfo=UTC)
REALM = "9130350000001"


@pytest.fixture
def qb_state() -> VendorState:
    return VendorState(
        client_id=creds.qb_client_id(),
        client_secret=creds.qb_secret(),
        refresh_token=creds.intuit_refresh_token(),
        realm_id=REALM,
    )


@pytest.fixture
def xero_state() -> VendorState:
    return VendorState(client_id=creds.xero_client_id(), client_secret=creds.xero_secret())


def _serve(state: VendorState) -> Iterator[VendorStandin]:
    standin = start_vendor_standin(state)
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def qb_vendor(qb_state: VendorState) -> Iterator[VendorStandin]:
    yield from _serve(qb_state)


@pytest.fixture
def xero_vendor(xero_state: VendorState) -> Iterator[VendorStandin]:
    yield from _serve(xero_state)


def _probe(
    vendor: VendorStandin,
    tmp_path: Path,
    *,
    platform: str,
    secret: str | None = None,
    realm: str | None = REALM,
    refresh: str | None = "",
    timeout: float = 2.0,
    unverified: str = "warn",
) -> Report:
    policy_file = tmp_path / "probe-policy.toml"
    policy_file.write_text(vendor.policy_toml(timeout=timeout, unverified=unverified))
    state = vendor.state
    if refresh == "":
        refresh = state.refresh_token or None
    facts = HandoverFacts(
        platform=platform,
        client_id=state.client_id,
        client_secret=Secret((secret or state.client_secret) + "\n"),
        environment="production",
        attested_by="Ana Lima",
        attestation=None,
        lifetime=timedelta(days=7),
        context=SandboxContext(realm_id=realm if platform == "quickbooks" else None),
        probe_refresh_token=Secret(refresh + "\n") if refresh else None,
    )
    return evaluate(load_policy(policy_file), facts, now=NOW, probe=True)


def _probe_finding(report: Report) -> tuple[Outcome, str]:
    finding = report.findings[-1]
    assert finding.rule_id == "live-probe"
    return finding.outcome, finding.message


def test_quickbooks_production_key_passes(qb_vendor: VendorStandin, tmp_path: Path) -> None:
    report = _probe(qb_vendor, tmp_path, platform="quickbooks")
    assert report.verdict == Verdict.PASS, report.findings
    outcome, message = _probe_finding(report)
    assert outcome == Outcome.PASS
    assert REALM in message
    # the client credential went only to the token endpoint; the API saw a bearer token
    assert qb_vendor.state.requests == [
        ("/intuit/oauth2/v1/tokens/bearer", "Basic"),
        (f"/qbo-prod/v3/company/{REALM}/companyinfo/{REALM}", "Bearer"),
    ]


@pytest.mark.parametrize("denial", [403, 401])
def test_quickbooks_development_key_is_rejected(
    qb_vendor: VendorStandin, tmp_path: Path, denial: int
) -> None:
    qb_vendor.state.development_key = True
    qb_vendor.state.prod_denial_status = denial
    report = _probe(qb_vendor, tmp_path, platform="quickbooks")
    assert report.rejected == ("live-probe",)
    outcome, message = _probe_finding(report)
    assert outcome == Outcome.REJECT
    assert f"HTTP {denial}" in message
    assert "sandbox API accepted it" in message
    assert [path for path, _ in qb_vendor.state.requests][-1].startswith("/qbo-sandbox/")
    assert all(scheme != "Basic" for path, scheme in qb_vendor.state.requests if "qbo" in path)


def test_quickbooks_wrong_secret_is_rejected(qb_vendor: VendorStandin, tmp_path: Path) -> None:
    report = _probe(qb_vendor, tmp_path, platform="quickbooks", secret=creds.qb_secret())
    assert report.rejected == ("live-probe",)
    assert "refused the client ID and secret (HTTP 401)" in _probe_finding(report)[1]
    assert len(qb_vendor.state.requests) == 1


def test_quickbooks_bad_refresh_token_is_unverified(
    qb_vendor: VendorStandin, tmp_path: Path
) -> None:
    report = _probe(
        qb_vendor, tmp_path, platform="quickbooks", refresh=creds.intuit_refresh_token()
    )
    assert report.verdict == Verdict.WARN
    assert report.warned == ("live-probe",)
    outcome, message = _probe_finding(report)
    assert outcome == Outcome.UNVERIFIED
    assert "invalid_grant" in message
    strict = _probe(
        qb_vendor, tmp_path, platform="quickbooks", refresh="AB11000", unverified="reject"
    )
    assert strict.rejected == ("live-probe",)
    assert _probe_finding(strict)[0] == Outcome.UNVERIFIED


def test_quickbooks_probe_without_realm_or_token_sends_nothing(
    qb_vendor: VendorStandin, tmp_path: Path
) -> None:
    for kwargs in ({"realm": None}, {"refresh": None}):
        report = _probe(qb_vendor, tmp_path, platform="quickbooks", **kwargs)  # type: ignore[arg-type]
        outcome, message = _probe_finding(report)
        assert outcome == Outcome.UNVERIFIED
        assert "--realm-id" in message
    assert qb_vendor.state.requests == []


def test_xero_real_organisation_passes(xero_vendor: VendorStandin, tmp_path: Path) -> None:
    report = _probe(xero_vendor, tmp_path, platform="xero")
    assert report.verdict == Verdict.PASS, report.findings
    assert xero_vendor.state.requests == [
        ("/xero/connect/token", "Basic"),
        ("/xero-api/api.xro/2.0/Organisation", "Bearer"),
    ]


def test_xero_demo_company_is_rejected(xero_vendor: VendorStandin, tmp_path: Path) -> None:
    xero_vendor.state.demo_company = True
    report = _probe(xero_vendor, tmp_path, platform="xero")
    assert report.rejected == ("live-probe",)
    assert "IsDemoCompany: true" in _probe_finding(report)[1]


def test_xero_wrong_secret_is_rejected(xero_vendor: VendorStandin, tmp_path: Path) -> None:
    report = _probe(xero_vendor, tmp_path, platform="xero", secret=creds.xero_secret())
    assert report.rejected == ("live-probe",)
    assert "refused" in _probe_finding(report)[1]


def test_xero_app_without_custom_connection_is_unverified(
    xero_vendor: VendorStandin, tmp_path: Path
) -> None:
    xero_vendor.state.custom_connection = False
    report = _probe(xero_vendor, tmp_path, platform="xero")
    outcome, message = _probe_finding(report)
    assert outcome == Outcome.UNVERIFIED
    assert "unauthorized_client" in message
    assert report.verdict == Verdict.WARN


def test_timeout_is_unverified(xero_vendor: VendorStandin, tmp_path: Path) -> None:
    xero_vendor.state.delay_seconds = 1.5
    report = _probe(xero_vendor, tmp_path, platform="xero", timeout=0.3)
    outcome, message = _probe_finding(report)
    assert outcome == Outcome.UNVERIFIED
    assert "did not answer within 0.3 s" in message


@pytest.mark.parametrize(
    ("fault", "needle"),
    [
        ("token", "malformed JSON"),
        ("organisation", "malformed JSON"),
    ],
)
def test_malformed_json_is_unverified(
    xero_vendor: VendorStandin, tmp_path: Path, fault: str, needle: str
) -> None:
    xero_vendor.state.malformed.add(fault)
    report = _probe(xero_vendor, tmp_path, platform="xero")
    outcome, message = _probe_finding(report)
    assert outcome == Outcome.UNVERIFIED
    assert needle in message


def test_malformed_company_info_is_unverified(qb_vendor: VendorStandin, tmp_path: Path) -> None:
    qb_vendor.state.malformed.add("company")
    outcome, message = _probe_finding(_probe(qb_vendor, tmp_path, platform="quickbooks"))
    assert outcome == Outcome.UNVERIFIED
    assert "malformed JSON" in message


@pytest.mark.parametrize(("key", "status"), [("company", 500), ("token", 503), ("token", 307)])
def test_server_errors_and_redirects_are_unverified(
    qb_vendor: VendorStandin, tmp_path: Path, key: str, status: int
) -> None:
    qb_vendor.state.force_status[key] = status
    outcome, message = _probe_finding(_probe(qb_vendor, tmp_path, platform="quickbooks"))
    assert outcome == Outcome.UNVERIFIED
    assert f"HTTP {status}" in message
    if key == "token":
        assert len(qb_vendor.state.requests) == 1  # nothing followed


def test_unreachable_endpoint_is_unverified(tmp_path: Path, xero_state: VendorState) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on ``port`` any more
    policy = tmp_path / "p.toml"
    policy.write_text(
        "[rules.live-probe]\ntimeout_seconds = 1.0\n"
        f'xero_token_url = "http://127.0.0.1:{port}/connect/token"\n'
    )
    facts = HandoverFacts(
        platform="xero",
        client_id=xero_state.client_id,
        client_secret=Secret(xero_state.client_secret),
        environment="production",
        attested_by="Ana",
        attestation=None,
        lifetime=None,
        context=SandboxContext(),
    )
    report = evaluate(load_policy(policy), facts, now=NOW, probe=True)
    outcome, message = _probe_finding(report)
    assert outcome == Outcome.UNVERIFIED
    assert "could not complete" in message


def _exit(result: object) -> int:
    exc = getattr(result, "exception", None)
    if isinstance(exc, Error):
        return int(exc.exit_code)
    return int(getattr(result, "exit_code", 1))


def test_check_probe_through_the_cli(qb_vendor: VendorStandin, tmp_path: Path) -> None:
    state = qb_vendor.state
    (tmp_path / "secret").write_text(state.client_secret + "\n")
    (tmp_path / "refresh").write_text(state.refresh_token + "\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(qb_vendor.policy_toml())
    args = [
        "check", "--json", "--probe", "--policy", str(policy),
        "--platform", "quickbooks", "--client-id", state.client_id,
        "--client-secret-file", str(tmp_path / "secret"),
        "--probe-refresh-token-file", str(tmp_path / "refresh"),
        "--realm-id", REALM, "--environment", "production", "--attested-by", "Ana",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert _exit(result) == 0, result.output
    assert json.loads(result.stdout)["findings"][-1]["outcome"] == "pass"
    state.development_key = True
    result = CliRunner().invoke(cli, args)
    assert _exit(result) == 7
    assert json.loads(result.stdout)["rejected"] == ["live-probe"]
    for value in (state.client_secret, state.refresh_token, *state.issued):
        assert value not in result.output
    # the refresh token may also come from the environment
    env_args = [
        a for a in args if a not in ("--probe-refresh-token-file", str(tmp_path / "refresh"))
    ]
    state.development_key = False
    result = CliRunner().invoke(
        cli, env_args, env={"KEYCOURIER_PROBE_REFRESH_TOKEN": state.refresh_token}
    )
    assert _exit(result) == 0, result.output


def test_unusable_access_token_is_unverified(xero_vendor: VendorStandin, tmp_path: Path) -> None:
    """A token with a newline or non-ASCII character is never put into a header."""
    xero_vendor.state.bad_token = "abc\r\nX-Injected: 1"
    outcome, message = _probe_finding(_probe(xero_vendor, tmp_path, platform="xero"))
    assert outcome == Outcome.UNVERIFIED
    assert "without a usable access_token" in message
    assert len(xero_vendor.state.requests) == 1
