"""`keycourier check` / `policy show|deny` through the CLI.

The table drives more than forty credential cases through click's CliRunner
(asserting the exit code and exactly which rules rejected or warned); a few
real subprocesses check the exit codes of the installed entry point.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from keycourier.cli.main import cli
from keycourier.errors import Error
from keycourier.policy import RULE_IDS
from keycourier.redact import fingerprint
from tests.support.openbao import BaoServer
from tests.unit.policy import creds

ALL_RULES_PASS: frozenset[str] = frozenset()


def exit_code(result: Result) -> int:
    """The exit code the real entry point (cli.main.main) would give."""
    if isinstance(result.exception, Error):
        return int(result.exception.exit_code)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code


def invoke(
    args: Sequence[str], *, stdin: bytes | None = None, env: Mapping[str, str] | None = None
) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin, env=dict(env or {}))


@dataclass
class Handover:
    """One credential case: built fresh (random keys) for each test run."""

    platform: str = "quickbooks"
    client_id: str = ""
    secret: bytes = b""
    extra: list[str] = field(default_factory=list)
    environment: str | None = "production"
    attested_by: str | None = "Ana Lima"
    expires_in: str | None = "7d"
    policy_toml: str | None = None
    context: dict[str, object] | None = None
    stdin: bool = False


def qb(**kw: object) -> Handover:
    h = Handover(client_id=creds.qb_client_id(), secret=(creds.qb_secret() + "\n").encode())
    for k, v in kw.items():
        setattr(h, k, v)
    return h


def xero(**kw: object) -> Handover:
    h = Handover(
        platform="xero",
        client_id=creds.xero_client_id(),
        secret=(creds.xero_secret() + "\n").encode(),
    )
    for k, v in kw.items():
        setattr(h, k, v)
    return h


def with_secret(make: Callable[[], str], *, newline: bool = True) -> Callable[[], Handover]:
    return lambda: qb(secret=(make() + ("\n" if newline else "")).encode())


def _insert(run: str) -> str:
    base = creds.qb_secret()
    return base[:10] + run + base[10 + len(run) :]


def _swapped_qb() -> Handover:
    cid, sec = creds.qb_client_id(), creds.qb_secret()
    return qb(client_id=sec, secret=cid.encode())


def _swapped_xero() -> Handover:
    cid, sec = creds.xero_client_id(), creds.xero_secret()
    return xero(client_id=sec, secret=cid.encode())


def _secret_bytes(make: Callable[[str], str]) -> Callable[[], Handover]:
    return lambda: qb(secret=make(creds.qb_secret()).encode("utf-8"))


def _low_entropy() -> str:
    return ("ab12" * 10)[:40]


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Handover]
    code: int
    rejected: frozenset[str] = ALL_RULES_PASS
    warned: frozenset[str] = ALL_RULES_PASS
    message: str | None = None  # a substring the report must contain


def R(*ids: str) -> frozenset[str]:  # noqa: N802 - reads as a set literal
    return frozenset(ids)


WARN_SANDBOX_HOST = '[rules.sandbox-api-host]\nseverity = "warn"\n'
WARN_ENTROPY = '[rules.entropy]\nseverity = "warn"\n'
WARN_ENV = '[rules.environment]\nseverity = "warn"\n'
LONG_LIFETIME = '[rules.lifetime]\nmax = "30d"\n'
REJECT_AGAIN = '[rules.sandbox-api-host]\nseverity = "reject"\n'
XERO_ONLY = '[rules.platform]\nallowed = ["xero"]\n'
PLAYGROUND = "https://developer.intuit.com/v2/OAuth2Playground/RedirectUrl"

CASES: list[Case] = [
    # valid production keys
    Case("qb-valid-AB", qb, 0, message="one trailing newline was removed"),
    Case("qb-valid-Q0", lambda: qb(client_id=creds.qb_client_id("Q0")), 0),
    Case("qb-valid-no-newline", lambda: qb(secret=creds.qb_secret().encode()), 0),
    Case("qb-valid-stdin", lambda: qb(stdin=True), 0),
    Case(
        "qb-valid-production-context",
        lambda: qb(
            extra=[
                "--api-base",
                "https://quickbooks.api.intuit.com/",
                "--userinfo-host",
                "accounts.platform.intuit.com",
                "--redirect-uri",
                "https://partner.example/callback",
                "--realm-id",
                "9130350000001",
            ]
        ),
        0,
    ),
    Case("xero-valid", xero, 0),
    Case("xero-valid-min-length", lambda: xero(secret=creds.xero_secret(40).encode()), 0),
    Case("xero-valid-real-tenant", lambda: xero(extra=["--xero-tenant-name", "Acme Ltd"]), 0),
    Case("environment-case-insensitive", lambda: qb(environment="Production"), 0),
    Case("lifetime-at-maximum", lambda: qb(expires_in="14d"), 0),
    Case("lifetime-not-given", lambda: qb(expires_in=None), 0),
    # platform, environment, attestation
    Case("platform-unknown", lambda: qb(platform="sage"), 7, R("platform")),
    Case("platform-not-in-policy", lambda: qb(policy_toml=XERO_ONLY), 7, R("platform")),
    Case("environment-missing", lambda: qb(environment=None), 7, R("environment")),
    Case("environment-sandbox", lambda: qb(environment="sandbox"), 7, R("environment")),
    Case("environment-development", lambda: qb(environment="development"), 7, R("environment")),
    Case("attestation-missing", lambda: qb(attested_by=None), 7, R("attestation")),
    Case("attestation-blank", lambda: qb(attested_by="   "), 7, R("attestation")),
    Case(
        "attestation-statement-blank", lambda: qb(extra=["--attestation", " "]), 7, R("attestation")
    ),
    # sandbox indicators
    Case(
        "sandbox-api-host",
        lambda: qb(extra=["--api-base", "https://sandbox-quickbooks.api.intuit.com/v3"]),
        7,
        R("sandbox-api-host"),
    ),
    Case(
        "sandbox-api-host-bare",
        lambda: qb(extra=["--api-base", "SANDBOX-QUICKBOOKS.API.INTUIT.COM"]),
        7,
        R("sandbox-api-host"),
    ),
    Case(
        "sandbox-userinfo-host",
        lambda: qb(
            extra=[
                "--userinfo-host",
                "https://sandbox-accounts.platform.intuit.com/v1/openid_connect/userinfo",
            ]
        ),
        7,
        R("sandbox-userinfo-host"),
    ),
    Case(
        "playground-redirect",
        lambda: qb(extra=["--redirect-uri", PLAYGROUND]),
        7,
        R("playground-redirect"),
    ),
    Case(
        "playground-redirect-trailing-slash",
        lambda: qb(extra=["--redirect-uri", PLAYGROUND + "/"]),
        7,
        R("playground-redirect"),
    ),
    Case(
        "sandbox-realm",
        lambda: qb(extra=["--realm-id", "4620816365000000000", "--sandbox-realm"]),
        7,
        R("sandbox-realm"),
    ),
    Case(
        "xero-demo-tenant-name",
        lambda: xero(extra=["--xero-tenant-name", "Demo Company (NZ)"]),
        7,
        R("xero-demo-tenant"),
    ),
    Case(
        "xero-demo-company-flag",
        lambda: xero(extra=["--xero-demo-company"]),
        7,
        R("xero-demo-company"),
    ),
    Case(
        "context-file-quickbooks",
        lambda: qb(
            context={
                "api_base": "https://sandbox-quickbooks.api.intuit.com",
                "redirect_uri": PLAYGROUND,
            }
        ),
        7,
        R("sandbox-api-host", "playground-redirect"),
    ),
    Case(
        "context-file-xero-demo",
        lambda: xero(
            context={
                "xero_is_demo_company": True,
                "xero_tenant_name": "Demo Company (UK)",
            }
        ),
        7,
        R("xero-demo-company", "xero-demo-tenant"),
    ),
    Case(
        "context-file-clean",
        lambda: xero(
            context={
                "xero_is_demo_company": False,
                "xero_tenant_name": "Acme Ltd",
            }
        ),
        0,
    ),
    # placeholders and weak values
    Case(
        "placeholder-changeme",
        with_secret(lambda: "changeme"),
        7,
        R("placeholder", "secret-format", "entropy"),
    ),
    Case(
        "placeholder-your-client-secret",
        with_secret(lambda: "your_client_secret"),
        7,
        R("placeholder", "secret-format", "entropy"),
    ),
    Case(
        "placeholder-xxxx",
        with_secret(lambda: "x" * 40),
        7,
        R("placeholder", "weak-pattern", "entropy"),
    ),
    Case(
        "placeholder-angle-brackets",
        with_secret(lambda: "<client_secret>"),
        7,
        R("placeholder", "secret-format", "entropy"),
    ),
    Case(
        "placeholder-word-inside-valid-shape",
        with_secret(lambda: _insert("Example")),
        7,
        R("placeholder"),
    ),
    Case(
        "placeholder-client-id",
        lambda: qb(client_id="YOUR_CLIENT_ID"),
        7,
        R("placeholder", "client-id-format"),
    ),
    Case("weak-repeated", with_secret(lambda: _insert("QQQQQQQ")), 7, R("weak-pattern")),
    Case("weak-sequential-letters", with_secret(lambda: _insert("defghij")), 7, R("weak-pattern")),
    Case("weak-sequential-digits", with_secret(lambda: _insert("9876543")), 7, R("weak-pattern")),
    Case("low-entropy", with_secret(_low_entropy), 7, R("entropy")),
    # swapped fields and pasted tokens
    Case(
        "swapped-quickbooks",
        _swapped_qb,
        7,
        R("swapped-fields", "client-id-format", "secret-format"),
    ),
    Case(
        "swapped-xero", _swapped_xero, 7, R("swapped-fields", "client-id-format", "secret-format")
    ),
    Case(
        "refresh-token-as-client-id",
        lambda: qb(client_id=creds.intuit_refresh_token()),
        7,
        R("pasted-token"),
        message="Intuit refresh token",
    ),
    Case(
        "jwt-as-client-id",
        lambda: qb(client_id=creds.fake_jwt()),
        7,
        R("pasted-token", "client-id-format"),
        message="access token",
    ),
    Case(
        "jwt-as-secret",
        lambda: xero(secret=creds.fake_jwt().encode()),
        7,
        R("pasted-token", "secret-format"),
    ),
    # whitespace and lookalikes
    Case(
        "secret-trailing-space",
        _secret_bytes(lambda s: s + " \n"),
        7,
        R("whitespace", "secret-format"),
        message="U+0020 SPACE at position 41",
    ),
    Case(
        "secret-two-newlines",
        _secret_bytes(lambda s: s + "\n\n"),
        7,
        R("whitespace", "secret-format"),
        message="U+000A LINE FEED (newline) at position 41",
    ),
    Case(
        "secret-crlf",
        _secret_bytes(lambda s: s + "\r\n"),
        7,
        R("whitespace", "secret-format"),
        message="CARRIAGE RETURN at position 41",
    ),
    Case(
        "secret-leading-newline",
        _secret_bytes(lambda s: "\n" + s),
        7,
        R("whitespace", "secret-format"),
        message="at position 1",
    ),
    Case(
        "secret-inner-tab",
        _secret_bytes(lambda s: s[:5] + "\t" + s[6:]),
        7,
        R("whitespace", "secret-format"),
        message="TAB at position 6",
    ),
    Case(
        "secret-nbsp",
        _secret_bytes(lambda s: s[:20] + "\u00a0" + s[21:]),
        7,
        R("whitespace", "secret-format"),
        message="NO-BREAK SPACE at position 21",
    ),
    Case(
        "secret-cyrillic-lookalike",
        _secret_bytes(lambda s: s[:3] + "\u0430" + s[4:]),
        7,
        R("whitespace", "secret-format"),
        message="CYRILLIC SMALL LETTER A at position 4",
    ),
    Case(
        "client-id-zero-width-space",
        lambda: qb(client_id=creds.qb_client_id()[:49] + "\u200b"),
        7,
        R("whitespace", "client-id-format"),
        message="U+200B ZERO WIDTH SPACE at position 50",
    ),
    Case(
        "client-id-leading-space",
        lambda: qb(client_id=" " + creds.qb_client_id()),
        7,
        R("whitespace", "client-id-format"),
        message="at position 1",
    ),
    Case(
        "secret-not-utf8",
        lambda: qb(secret=b"\xff" + creds.qb_secret().encode()[1:]),
        7,
        R("whitespace", "secret-format", "entropy"),
        message="not valid UTF-8",
    ),
    Case("secret-empty", lambda: qb(secret=b""), 7, R("whitespace", "secret-format", "entropy")),
    # formats
    Case(
        "qb-client-id-wrong-prefix",
        lambda: qb(client_id="XY" + creds.qb_client_id()[2:]),
        7,
        R("client-id-format"),
    ),
    Case(
        "qb-secret-too-short",
        lambda: qb(secret=creds.qb_secret()[:39].encode()),
        7,
        R("secret-format"),
    ),
    Case(
        "xero-client-id-lowercase",
        lambda: xero(client_id=creds.xero_client_id().lower()),
        7,
        R("client-id-format"),
    ),
    Case(
        "xero-secret-too-short",
        lambda: xero(secret=creds.xero_secret(39).encode()),
        7,
        R("secret-format"),
    ),
    # lifetimes
    Case("lifetime-too-long", lambda: qb(expires_in="15d"), 7, R("lifetime")),
    Case("lifetime-too-long-hours", lambda: qb(expires_in="337h"), 7, R("lifetime")),
    Case("lifetime-within-hours", lambda: qb(expires_in="36h"), 0),
    # policy overrides: reject -> warn -> reject
    Case(
        "override-sandbox-host-warn",
        lambda: qb(
            policy_toml=WARN_SANDBOX_HOST,
            extra=["--api-base", "https://sandbox-quickbooks.api.intuit.com"],
        ),
        0,
        warned=R("sandbox-api-host"),
    ),
    Case(
        "override-sandbox-host-back-to-reject",
        lambda: qb(
            policy_toml=WARN_SANDBOX_HOST.replace("warn", "reject"),
            extra=["--api-base", "https://sandbox-quickbooks.api.intuit.com"],
        ),
        7,
        R("sandbox-api-host"),
    ),
    Case(
        "override-entropy-warn",
        lambda: qb(policy_toml=WARN_ENTROPY, secret=_low_entropy().encode()),
        0,
        warned=R("entropy"),
    ),
    Case(
        "override-environment-warn",
        lambda: qb(policy_toml=WARN_ENV, environment="sandbox"),
        0,
        warned=R("environment"),
    ),
    Case("override-lifetime-30d", lambda: qb(policy_toml=LONG_LIFETIME, expires_in="30d"), 0),
    Case(
        "override-lifetime-30d-exceeded",
        lambda: qb(policy_toml=LONG_LIFETIME, expires_in="31d"),
        7,
        R("lifetime"),
    ),
]


def _args(h: Handover, tmp_path: Path) -> tuple[list[str], bytes | None]:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_bytes(h.secret)
    args = ["check", "--json", "--platform", h.platform, "--client-id", h.client_id]
    stdin = None
    if h.stdin:
        args += ["--client-secret-file", "-"]
        stdin = h.secret
    else:
        args += ["--client-secret-file", str(secret_file)]
    if h.environment is not None:
        args += ["--environment", h.environment]
    if h.attested_by is not None:
        args += ["--attested-by", h.attested_by]
    if h.expires_in is not None:
        args += ["--expires-in", h.expires_in]
    if h.policy_toml is not None:
        policy = tmp_path / "policy.toml"
        policy.write_text(h.policy_toml)
        args += ["--policy", str(policy)]
    if h.context is not None:
        ctx = tmp_path / "context.json"
        ctx.write_text(json.dumps(h.context))
        args += ["--context-file", str(ctx)]
    return args + h.extra, stdin


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_credential_case(case: Case, tmp_path: Path) -> None:
    h = case.build()
    args, stdin = _args(h, tmp_path)
    result = invoke(args, stdin=stdin)
    assert exit_code(result) == case.code, result.output
    report = json.loads(result.stdout)
    assert frozenset(report["rejected"]) == case.rejected
    assert frozenset(report["warned"]) == case.warned
    assert report["verdict"] == ("reject" if case.rejected else "warn" if case.warned else "pass")
    # every rule is listed, each with an outcome; failing ones carry a hint
    assert len(report["findings"]) == len(RULE_IDS)
    for finding in report["findings"]:
        if finding["effect"] != "pass":
            assert finding["hint"]
    if case.message is not None:
        assert case.message in result.stdout
    # no secret is ever printed: not the secret, and not the client ID unless masked
    secret_text = h.secret.decode("utf-8", "replace").strip()
    if len(secret_text) >= 8:
        assert secret_text not in result.output
        assert secret_text[:12] not in result.output
    if case.code == 7:
        assert "rejected by the policy" in str(result.exception)


def test_human_report_lists_every_rule_with_hints(tmp_path: Path) -> None:
    h = qb(extra=["--redirect-uri", PLAYGROUND])
    args, _ = _args(h, tmp_path)
    args.remove("--json")
    result = invoke(args)
    assert exit_code(result) == 7
    lines = result.stdout.splitlines()
    assert any(line.startswith("REJECT") and "playground-redirect" in line for line in lines)
    assert sum(1 for line in lines if line.startswith("PASS")) == 19
    assert any("hint: the redirect URI is Intuit's OAuth Playground" in line for line in lines)
    assert h.secret.decode().strip() not in result.output
    assert h.client_id not in result.output  # only masked
    assert f"{h.client_id[:4]}…{h.client_id[-4:]}" in result.stdout


def test_swapped_fields_never_show_the_secret_even_masked(tmp_path: Path) -> None:
    h = _swapped_qb()
    args, _ = _args(h, tmp_path)
    result = invoke(args)
    report = json.loads(result.stdout)
    assert report["masked_client_id"] == "****"
    assert h.client_id[:4] not in result.stdout  # the "client ID" here is really the secret


def test_weak_secret_gets_no_fingerprint(tmp_path: Path) -> None:
    args, _ = _args(qb(secret=b"changeme\n"), tmp_path)
    report = json.loads(invoke(args).stdout)
    assert report["fingerprint"] is None


def test_sample_value_fingerprint_in_policy(tmp_path: Path) -> None:
    h = qb()
    sample = fingerprint("sample", h.secret.strip())
    h.policy_toml = f'[rules.sample-value]\nfingerprints = ["{sample}"]\n'
    args, _ = _args(h, tmp_path)
    result = invoke(args)
    assert exit_code(result) == 7
    assert json.loads(result.stdout)["rejected"] == ["sample-value"]


def test_shipped_sample_fingerprints_are_well_formed() -> None:
    from keycourier.policy import load_policy

    shipped = load_policy(None).param("sample-value", "fingerprints")
    assert len(shipped) >= 2  # Intuit PHP SDK example ID and secret, kept as fingerprints only
    assert len(set(shipped)) == len(shipped)
    assert all(fp.startswith("kc1:") and len(fp) == 36 for fp in shipped)


def test_handover_options_give_seal_the_documented_keys() -> None:
    import click

    from keycourier.cli.handover_args import facts_from_options, handover_options

    seen: dict[str, object] = {}

    @click.command()
    @handover_options
    def probe_cmd(**options: object) -> None:
        seen.update(options)
        facts = facts_from_options(options)
        assert facts.client_secret.reveal_bytes() == b"s\n"
        assert facts.lifetime is not None

    result = CliRunner().invoke(
        probe_cmd,
        [
            "--platform",
            "xero",
            "--client-id",
            "X",
            "--client-secret-file",
            "-",
            "--expires-in",
            "2d",
        ],
        input=b"s\n",
    )
    assert result.exit_code == 0, result.output
    assert set(seen) == {
        "platform", "client_id", "client_secret_file", "environment", "attested_by",
        "attestation", "expires_in", "api_base", "userinfo_host", "redirect_uri", "realm_id",
        "sandbox_realm", "xero_tenant_name", "xero_demo_company", "context_file", "policy",
        "probe", "probe_refresh_token_file",
    }  # fmt: skip


def test_policy_env_var_selects_the_policy(tmp_path: Path) -> None:
    h = qb(extra=["--api-base", "https://sandbox-quickbooks.api.intuit.com"])
    args, _ = _args(h, tmp_path)
    policy = tmp_path / "env-policy.toml"
    policy.write_text(WARN_SANDBOX_HOST)
    result = invoke(args, env={"KEYCOURIER_POLICY": str(policy)})
    assert exit_code(result) == 0
    report = json.loads(result.stdout)
    assert report["warned"] == ["sandbox-api-host"]
    assert report["policy_source"] == str(policy)
    # the flag wins over the environment
    strict = tmp_path / "strict.toml"
    strict.write_text(REJECT_AGAIN)
    result = invoke([*args, "--policy", str(strict)], env={"KEYCOURIER_POLICY": str(policy)})
    assert exit_code(result) == 7


@pytest.mark.parametrize(
    ("extra", "stdin", "needle"),
    [
        (["--expires-in", "2 weeks"], None, "--expires-in"),
        (["--realm-id", "12ab"], None, "realm ID"),
        (["--client-secret-file", "-", "--probe-refresh-token-file", "-"], b"x", "stdin"),
    ],
)
def test_usage_errors(extra: list[str], stdin: bytes | None, needle: str, tmp_path: Path) -> None:
    args, _ = _args(qb(), tmp_path)
    result = invoke(args + extra, stdin=stdin)
    assert exit_code(result) == 2
    assert needle in str(result.exception)


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ('{"api_base": "x", "colour": 1}', "unknown field 'colour'"),
        ('{"realm_is_sandbox": "yes"}', "realm_is_sandbox must be true or false"),
        ('{"api_base": 5}', "api_base must be a string"),
        ("[1]", "JSON object"),
        ("{", "not valid UTF-8 JSON"),
    ],
)
def test_bad_context_file(doc: str, needle: str, tmp_path: Path) -> None:
    ctx = tmp_path / "bad.json"
    ctx.write_text(doc)
    args, _ = _args(qb(), tmp_path)
    result = invoke([*args, "--context-file", str(ctx)])
    assert exit_code(result) == 2
    assert needle in str(result.exception)


def test_context_file_conflicting_with_option_is_refused(tmp_path: Path) -> None:
    h = qb(context={"api_base": "https://sandbox-quickbooks.api.intuit.com"})
    args, _ = _args(h, tmp_path)
    result = invoke([*args, "--api-base", "https://quickbooks.api.intuit.com"])
    assert exit_code(result) == 2
    assert "conflicts" in str(result.exception)


def test_oversized_context_file_is_refused(tmp_path: Path) -> None:
    ctx = tmp_path / "big.json"
    ctx.write_text(json.dumps({"xero_tenant_name": "a" * 70_000}))
    args, _ = _args(qb(), tmp_path)
    result = invoke([*args, "--context-file", str(ctx)])
    assert exit_code(result) == 2
    assert "larger than" in str(result.exception)


# --- policy show ---------------------------------------------------------------


def test_policy_show_json_digest_and_override() -> None:
    result = invoke(["policy", "show", "--json"])
    assert result.exit_code == 0
    shown = json.loads(result.stdout)
    assert shown["source"] == "builtin"
    assert shown["digest"].startswith("sha256:")
    assert shown["policy"]["rules"]["lifetime"]["max"] == "14d"


def test_policy_show_human(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(WARN_ENTROPY)
    result = invoke(["policy", "show", "--policy", str(policy)])
    assert result.exit_code == 0
    assert f"source: {policy}" in result.stdout
    assert "[entropy] warn" in result.stdout
    default = invoke(["policy", "show"]).stdout
    assert "[entropy] reject" in default
    digest_line = next(line for line in result.stdout.splitlines() if line.startswith("digest:"))
    assert digest_line not in default  # a different policy, a different digest


BAD_POLICIES = [
    ("colour = 1\n", "unknown key colour"),
    ("[rules.nope]\nseverity = 'warn'\n", "unknown key rules.nope"),
    ("[rules.entropy]\nmin_bits = 2.0\n", "unknown key rules.entropy.min_bits"),
    ("[rules.platform]\nseverity = 1\n", "rules.platform.severity must be a string"),
    (
        "[rules.platform]\nseverity = 'block'\n",
        "rules.platform.severity must be 'reject' or 'warn'",
    ),
    ("[rules.platform]\nallowed = 'xero'\n", "rules.platform.allowed must be a list of strings"),
    ("[rules.platform]\nallowed = [1]\n", "rules.platform.allowed[0] must be a string"),
    ("[rules.platform]\nallowed = ['sage']\n", "rules.platform.allowed must list only"),
    ("[rules.lifetime]\nmax = 14\n", "rules.lifetime.max must be a string"),
    ("[rules.lifetime]\nmax = 'two weeks'\n", "rules.lifetime.max must look like 14d"),
    (
        "[rules.live-probe]\ntimeout_seconds = '10'\n",
        "rules.live-probe.timeout_seconds must be a number",
    ),
    ("[rules.live-probe]\nunverified = 'ignore'\n", "rules.live-probe.unverified"),
    (
        "[rules.live-probe]\nquickbooks_token_url = 'http://oauth.example.com/token'\n",
        "rules.live-probe.quickbooks_token_url must use https",
    ),
    (
        "[rules.client-id-format]\nquickbooks = '('\n",
        "rules.client-id-format.quickbooks is not a valid regex",
    ),
    (
        "[rules.placeholder]\npatterns = ['^[a-z--0-9]+$']\n",
        "rules.placeholder.patterns[0] is ambiguous and would change meaning",
    ),
    (
        "[rules.client-id-format]\nxero = '^[[A-F]]{32}$'\n",
        "rules.client-id-format.xero is ambiguous",
    ),
    ("[rules.entropy]\nmin_total_bits = true\n", "rules.entropy.min_total_bits must be a number"),
    ("[rules.secret-format]\nxero_min_length = 99\n", "rules.secret-format.xero_min_length"),
    ("[rules.sample-value]\nfingerprints = ['abc']\n", "rules.sample-value.fingerprints[0]"),
    ("[rules.sender-policy]\ndigests = ['sha256:abc']\n", "rules.sender-policy.digests[0]"),
    ("[rules.placeholder]\nhint = ''\n", "rules.placeholder.hint"),
    ("version = 2\n", "version must be 1"),
    ("rules = 5\n", "rules must be a table"),
    ("[rules\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_POLICIES, ids=[n for _, n in BAD_POLICIES])
def test_bad_policy_file_is_a_config_error(text: str, needle: str, tmp_path: Path) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text(text)
    for args in (
        ["policy", "show", "--policy", str(policy)],
        _args(qb(), tmp_path)[0] + ["--policy", str(policy)],
    ):
        result = invoke(args)
        assert exit_code(result) == 3
        assert needle in str(result.exception)


def test_a_bad_policy_is_reported_before_any_fact_is_read(tmp_path: Path) -> None:
    """The policy in force is loaded first: with a broken policy and a bad fact, the answer
    is the policy's exit 3, and the secret on stdin is never read."""
    policy = tmp_path / "bad.toml"
    policy.write_text("[rules\n")
    args, _ = _args(qb(client_id="A" * 3000), tmp_path)
    result = invoke([*args, "--policy", str(policy)])
    assert exit_code(result) == 3
    assert "not valid TOML" in str(result.exception)


# --- real subprocesses for exit codes -----------------------------------------------


def _run(
    args: list[str], tmp_path: Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYCOURIER_", "VAULT_"))}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "home" / ".config")
    env["XDG_DATA_HOME"] = str(tmp_path / "home" / ".local" / "share")
    return subprocess.run(
        [sys.executable, "-m", "keycourier", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_subprocess_exit_codes(tmp_path: Path) -> None:
    good, _ = _args(qb(), tmp_path)
    proc = _run(good, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "pass"

    h = qb(extra=["--api-base", "https://sandbox-quickbooks.api.intuit.com"])
    bad, _ = _args(h, tmp_path)
    proc = _run(bad, tmp_path)
    assert proc.returncode == 7
    assert b"keycourier: error: the handover is rejected by the policy" in proc.stderr
    assert h.secret.strip() not in proc.stdout + proc.stderr

    broken = tmp_path / "broken.toml"
    broken.write_text("[rules.entropy]\nmin_bits = 1.0\n")
    proc = _run(["policy", "show", "--policy", str(broken)], tmp_path)
    assert proc.returncode == 3
    assert b"unknown key rules.entropy.min_bits" in proc.stderr

    proc = _run([*good, "--expires-in", "forever"], tmp_path)
    assert proc.returncode == 2


def test_subprocess_secret_from_stdin(tmp_path: Path) -> None:
    h = qb(stdin=True)
    args, stdin = _args(h, tmp_path)
    proc = _run(args, tmp_path, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["notes"] == [
        "one trailing newline was removed from the client secret"
    ]


# --- deny-list (needs the ledger service) ----------------------------------------------


def test_policy_deny_then_check_rejects(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    env = {"KEYCOURIER_LEDGER": str(ledger)}
    h = qb()
    args, _ = _args(h, tmp_path)
    first = invoke(args, env=env)
    assert exit_code(first) == 0
    fp = json.loads(first.stdout)["fingerprint"]
    assert fp.startswith("kc1:")

    denied = invoke(
        ["policy", "deny", fp, "--reason", "sandbox key sent by mistake", "--json"], env=env
    )
    assert denied.exit_code == 0, denied.output
    assert json.loads(denied.stdout)["fingerprint"] == fp

    again = invoke(args, env=env)
    assert exit_code(again) == 7
    report = json.loads(again.stdout)
    assert report["rejected"] == ["denied-fingerprint"]
    assert "sandbox key sent by mistake" in again.stdout

    from keycourier.cli.record import open_recorder
    from keycourier.config import load
    from keycourier.ledger.interface import EventType

    recorder = open_recorder(load(ledger_path=ledger))
    try:
        events = [s.event for s in recorder.history(fingerprint=fp)]
    finally:
        recorder.close()
    assert [e.type for e in events] == [EventType.DENIED_FINGERPRINT]  # check recorded nothing
    assert events[0].data["reason"] == "sandbox key sent by mistake"


@pytest.mark.parametrize(
    ("fp", "reason"),
    [
        ("kc1:XYZ", "ok"),
        ("sha256:" + "0" * 64, "ok"),
        ("kc1:" + "0" * 32, " "),
        ("kc1:" + "0" * 32, "a\x01b"),
    ],
)
def test_policy_deny_validates_input(fp: str, reason: str, tmp_path: Path) -> None:
    result = invoke(
        ["policy", "deny", fp, "--reason", reason],
        env={"KEYCOURIER_LEDGER": str(tmp_path / "l.db")},
    )
    assert exit_code(result) == 2
    assert not (tmp_path / "l.db").exists()


def test_check_without_ledger_creates_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "none" / "ledger.db"
    args, _ = _args(qb(), tmp_path)
    assert exit_code(invoke(args, env={"KEYCOURIER_LEDGER": str(ledger)})) == 0
    assert not ledger.exists()


def test_help_has_examples() -> None:
    for args in (
        ["check", "--help"],
        ["policy", "--help"],
        ["policy", "show", "--help"],
        ["policy", "deny", "--help"],
    ):
        result = invoke(args)
        assert result.exit_code == 0
        assert "Example" in result.stdout


def test_policy_deny_is_recorded_in_vault(bao_dev: BaoServer, tmp_path: Path) -> None:
    """With Vault configured the denial reaches Vault too, and the command says so."""
    env = {
        "KEYCOURIER_LEDGER": str(tmp_path / "ledger.db"),
        "VAULT_ADDR": bao_dev.addr,
        "VAULT_TOKEN": bao_dev.token,
    }
    fp = "kc1:" + secrets.token_hex(16)
    result = invoke(["policy", "deny", fp, "--reason", "leaked in a ticket", "--json"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["vault_status"] == "recorded"
    assert "recorded in the local ledger and in Vault" in result.stderr


def test_overlong_client_id_is_a_usage_error(tmp_path: Path) -> None:
    args, _ = _args(qb(client_id="A" * 513), tmp_path)
    result = invoke(args)
    assert exit_code(result) == 2
    assert "longer than 512" in str(result.exception)
