"""The policy loader: packaged default, strict overrides, canonical digest."""

from __future__ import annotations

import ast
import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest

from keycourier.errors import ConfigError
from keycourier.policy import RULE_IDS, Severity, builtin_text, load_policy, parse_duration
from keycourier.policy.model import check_endpoint_url, format_duration

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "policies" / "handover.toml"
PACKAGED = ROOT / "src" / "keycourier" / "policy" / "handover.toml"


def test_packaged_copy_is_byte_identical_to_the_shipped_policy() -> None:
    assert PACKAGED.read_bytes() == SHIPPED.read_bytes(), (
        "src/keycourier/policy/handover.toml drifted from policies/handover.toml: copy it over"
    )
    assert builtin_text() == SHIPPED.read_bytes()


def test_default_policy_has_every_rule_with_severity_and_hint() -> None:
    policy = load_policy(None)
    assert policy.source == "builtin"
    assert tuple(policy.rules) == RULE_IDS
    for setting in policy.rules.values():
        assert setting.severity in (Severity.REJECT, Severity.WARN)
        assert len(setting.hint) > 20
    assert policy.max_lifetime == timedelta(days=14)
    assert policy.allowed_platforms == ("quickbooks", "xero")
    assert policy.unverified_severity == Severity.WARN


def test_digest_is_sha256_over_the_canonical_form() -> None:
    policy = load_policy(None)
    assert policy.digest == "sha256:" + hashlib.sha256(policy.canonical.encode()).hexdigest()
    # canonical: sorted keys, no whitespace, so it is stable across loads and file layouts
    assert policy.canonical == json.dumps(
        json.loads(policy.canonical), sort_keys=True, separators=(",", ":")
    )
    assert load_policy(None).digest == policy.digest


def test_explicit_copy_of_the_default_has_the_default_digest(tmp_path: Path) -> None:
    copy = tmp_path / "same.toml"
    copy.write_bytes(SHIPPED.read_bytes().replace(b"\n\n", b"\n\n# a comment\n"))
    loaded = load_policy(copy)
    assert loaded.source == str(copy)
    assert loaded.digest == load_policy(None).digest


def test_override_changes_one_key_and_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[rules.lifetime]\nmax = "3d"\n[rules.entropy]\nmin_total_bits = 150\n')
    policy = load_policy(path)
    assert policy.max_lifetime == timedelta(days=3)
    assert policy.param("entropy", "min_total_bits") == 150.0
    assert policy.param("entropy", "min_bits_per_char") == 3.0  # untouched keys keep defaults
    assert policy.digest != load_policy(None).digest


def test_unreadable_and_oversized_policy_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.toml")
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 300_000)
    with pytest.raises(ConfigError, match="larger than"):
        load_policy(big)
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# \xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_policy(latin)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "[rules.live-probe]\nxero_api_base = 'ftp://api.xero.com'\n",
            "rules.live-probe.xero_api_base",
        ),
        (
            "[rules.live-probe]\nxero_token_url = 'https://u:p@identity.xero.com/t'\n",
            "xero_token_url",
        ),
        ("[rules.live-probe]\ntimeout_seconds = 0\n", "rules.live-probe.timeout_seconds"),
        ("[rules.weak-pattern]\nmax_repeat_run = 1\n", "rules.weak-pattern.max_repeat_run"),
        ("[rules.weak-pattern]\nmax_repeat_run = 2.5\n", "rules.weak-pattern.max_repeat_run"),
        ("[rules.entropy]\nmin_bits_per_char = 9\n", "rules.entropy.min_bits_per_char"),
        ("[rules.placeholder]\nwords = ['ab']\n", "rules.placeholder.words[0]"),
        ("[rules.placeholder]\npatterns = ['[']\n", "rules.placeholder.patterns[0]"),
        ("[rules.sandbox-api-host]\nhosts = ['https://x/']\n", "rules.sandbox-api-host.hosts[0]"),
        ("[rules.xero-demo-tenant]\npattern = '(?P<'\n", "rules.xero-demo-tenant.pattern"),
        ("[rules]\nplatform = 'x'\n", "rules.platform must be a table"),
    ],
)
def test_semantic_errors_name_the_key(text: str, key: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert key in info.value.message
    assert str(path) in info.value.message


def test_loopback_http_endpoints_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "local.toml"
    path.write_text(
        "[rules.live-probe]\n"
        "quickbooks_token_url = 'http://127.0.0.1:8080/token'\n"
        "xero_api_base = 'http://localhost:9/'\n"
        "xero_token_url = 'http://[::1]:9/t'\n"
    )
    assert load_policy(path).param("live-probe", "xero_token_url") == "http://[::1]:9/t"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer", True),
        ("http://127.0.0.2/x", True),
        ("http://10.0.0.1/x", False),
        ("http://oauth.platform.intuit.com/x", False),
        ("https://h/x?q=1", False),
        ("https:///x", False),
        ("https://h:99999/", False),
    ],
)
def test_endpoint_url_rule(url: str, ok: bool) -> None:
    assert (check_endpoint_url(url) is None) is ok


@pytest.mark.parametrize(
    ("text", "value"),
    [("14d", timedelta(days=14)), ("36h", timedelta(hours=36)), ("90m", timedelta(minutes=90))],
)
def test_durations(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value
    assert format_duration(value) in (text, "1d12h")


@pytest.mark.parametrize("text", ["0d", "14", "d", "1w", "-1d", "1.5d", "9999999d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="must look like"):
        parse_duration(text)


CORE_FORBIDDEN = ("click", "hvac", "sqlite_utils", "aiohttp", "requests", "keycourier.cli")


def test_policy_package_is_core() -> None:
    """policy/ never imports click, hvac, sqlite_utils, aiohttp, requests or cli."""
    package = ROOT / "src" / "keycourier" / "policy"
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(CORE_FORBIDDEN), f"{source.name} imports {name}"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("10.0.0.1", False),
        ("localhost.example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_one_loopback_check_for_every_caller(host: str | None, loopback: bool) -> None:
    """Policies, token and connection profiles and the helper all ask keycourier.urls."""
    from keycourier.helper import client, server_config
    from keycourier.partner import profiles
    from keycourier.partner.connections import client as connection_client
    from keycourier.partner.connections import model as connection_model
    from keycourier.urls import is_loopback_host

    assert is_loopback_host(host) is loopback
    for module in (server_config, client, connection_model, connection_client):
        assert vars(module)["is_loopback_host"] is is_loopback_host
    assert vars(profiles)["base_url_problem"] is vars(connection_model)["base_url_problem"]
