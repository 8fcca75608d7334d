"""Parsers under attack: the policy file, the sandbox context and the config file.

Generated TOML (the real schema with values replaced, removed or added, plus
raw byte mutations of the shipped policy): only keycourier errors escape, and
a policy that loads can be evaluated without an exception.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import tempfile
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keycourier import config
from keycourier.errors import ConfigError, Error, UsageError
from keycourier.policy import load_policy, parse_context
from keycourier.policy.context import MAX_CONTEXT_BYTES, make_context
from keycourier.policy.model import builtin_text
from keycourier.policy.rules import HandoverFacts, evaluate
from keycourier.redact import Secret
from tests.fuzz.bounds import measure
from tests.fuzz.mutate import mutated
from tests.fuzz.tomlgen import dumps, edited, toml_text, toml_values
from tests.support.fuzz import FUZZ_EXAMPLES

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
POLICY_TEXT = builtin_text()
POLICY_DOC: dict[str, Any] = tomllib.loads(POLICY_TEXT.decode())
# tmpfs when there is one: rewriting a file on ext4 (auto_da_alloc) costs ~1 ms a time.
WORK = Path(
    tempfile.mkdtemp(prefix="kc-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
)
atexit.register(shutil.rmtree, WORK, True)
BUILTIN = load_policy(None)
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
FACTS = (
    HandoverFacts(
        platform="quickbooks",
        client_id="AB" + "q7Xk2Lm9Pz4Rt8Vw1Yb6Nc3Hd5Jf0Gs2Ke7Ua9Wi4Oy1Tr",
        client_secret=Secret("h4Kp9Zq2Wm7Xr3Tb8Nv1Lc6Yd0Jf5Gs2Ue7Ai9Oo"),
        environment="production",
        attested_by="Fuzz Lead",
        attestation=None,
        lifetime=timedelta(days=1),
        context=make_context(),
    ),
    HandoverFacts(
        platform="xero",
        client_id="placeholder",
        client_secret=Secret(b"\xff\x00 sandbox\r\n"),
        environment="sandbox",
        attested_by=None,
        attestation=None,
        lifetime=timedelta(days=900),
        context=make_context(api_base="https://sandbox-quickbooks.api.intuit.com"),
    ),
)


@pytest.fixture(autouse=True, scope="module")
def _shipped_policy_parsed_once() -> Iterator[None]:
    """Parse the shipped policy once, not once per example.

    load_policy re-reads the packaged handover.toml on every call (4-5 ms, the
    whole cost of an example); it is constant, so the test caches that one
    step and runs everything else (reading, overlay, validation, build) for
    real. load_policy deep-copies the result before changing it.
    """
    from keycourier.policy import model

    parsed = model._builtin_doc()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "_builtin_doc", lambda: copy.deepcopy(parsed))
        yield


def _write(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def _policy(data: bytes) -> None:
    path = _write("policy.toml", data)
    try:
        policy = load_policy(path)
    except ConfigError:
        return
    for facts in FACTS:
        evaluate(policy, facts, now=NOW)


def test_shipped_policy_loads() -> None:
    _policy(POLICY_TEXT)
    assert load_policy(_write("policy.toml", POLICY_TEXT)).canonical


@st.composite
def policy_overlays(draw: st.DrawFn) -> bytes:
    """Either a schema-shaped overlay (a few tables of the shipped policy, edited) or
    the shipped file with byte-level mutations. Overlays are small on purpose:
    load_policy always parses the shipped file too, and that is the cost."""
    if draw(st.booleans()):
        return draw(mutated(POLICY_TEXT))
    tables = draw(st.sets(st.sampled_from(sorted(POLICY_DOC["rules"])), min_size=1, max_size=3))
    base: dict[str, Any] = {"rules": {t: POLICY_DOC["rules"][t] for t in tables}}
    if draw(st.booleans()):
        base["version"] = POLICY_DOC["version"]
    return dumps(draw(edited(base))).encode()


@FUZZ
@given(data=policy_overlays())
@example(data=b'version = 1\n[rules.platform]\nallowed = ["quickbooks", 1]\n')
@example(data=b'[rules.client-id-format]\nquickbooks = "(a+)+$"\n')
@example(data=b'[rules.client-id-format]\nquickbooks = "["\n')
def test_policy_files(data: bytes) -> None:
    _policy(data)


def test_policy_size_limit_is_bounded() -> None:
    from keycourier.policy.model import MAX_POLICY_BYTES

    big = POLICY_TEXT + b"\n# " + b"x" * MAX_POLICY_BYTES
    seconds, peak, caught = measure(lambda: load_policy(_write("big.toml", big)))
    assert isinstance(caught, ConfigError)
    assert seconds < 2.0
    assert peak < 8 * MAX_POLICY_BYTES


context_values = st.dictionaries(
    st.sampled_from(
        [
            "api_base",
            "userinfo_host",
            "redirect_uri",
            "realm_id",
            "xero_tenant_name",
            "realm_is_sandbox",
            "xero_is_demo_company",
        ]
    )
    | toml_text,
    toml_values,
    max_size=5,
)


@FUZZ
@given(doc=context_values, raw=st.binary(max_size=64), use_raw=st.booleans())
def test_parse_context(doc: dict[str, Any], raw: bytes, use_raw: bool) -> None:
    try:
        data = raw if use_raw else json.dumps(doc, allow_nan=True).encode()
    except ValueError:
        return
    try:
        ctx = parse_context(data)
    except UsageError:
        return
    from dataclasses import replace

    evaluate(BUILTIN, replace(FACTS[0], context=ctx), now=NOW)


def test_context_size_limit() -> None:
    with pytest.raises(UsageError):
        parse_context(b'{"realm_id": "' + b"1" * MAX_CONTEXT_BYTES + b'"}')


CONFIG_DOC: dict[str, Any] = {
    "ledger": {"path": "/tmp/kc-fuzz/ledger.db"},
    "policy": {"path": "/tmp/kc-fuzz/policy.toml"},
    "vault": {
        "addr": "http://127.0.0.1:8200",
        "mount": "secret",
        "namespace": "ns",
        "cacert": "/tmp/ca.pem",
        "timeout": 5,
        "auth": "approle",
        "auth_mount": "approle",
        "token_env": "VAULT_TOKEN",
        "token_file": "/tmp/token",
        "role_id": "r",
        "secret_id_file": "/tmp/sid",
        "jwt_file": "/tmp/jwt",
        "jwt_role": "ci",
        "transit_key": "kc",
    },
    "profiles": {"ci": {"dialect": "monite", "base_url": "http://127.0.0.1:1/v1"}},
    "helper": {"listen": "127.0.0.1:0"},
}
ENV_NAMES = [
    "KEYCOURIER_LEDGER",
    "KEYCOURIER_POLICY",
    "KEYCOURIER_VAULT_TIMEOUT",
    "KEYCOURIER_VAULT_AUTH",
    "VAULT_ADDR",
    "VAULT_CACERT",
]


def _config(data: bytes, env: dict[str, str]) -> None:
    path = _write("config.toml", data)
    try:
        config.load(config_path=path, env={"HOME": str(WORK), **env})
    except Error:
        return


@FUZZ
@given(
    doc=edited(CONFIG_DOC),
    env=st.dictionaries(st.sampled_from(ENV_NAMES), toml_text.filter(lambda s: "\x00" not in s)),
)
def test_generated_config_files(doc: dict[str, Any], env: dict[str, str]) -> None:
    _config(dumps(doc).encode(), env)


@FUZZ
@given(data=mutated(dumps(CONFIG_DOC).encode()))
def test_mutated_config_bytes(data: bytes) -> None:
    _config(data, {})


@pytest.mark.parametrize(
    ("doc", "env"),
    [
        ({"ledger": {"path": "~nosuchuser/ledger.db"}}, {}),
        ({"policy": {"path": "~nosuchuser/policy.toml"}}, {}),
        ({"vault": {"cacert": "~nosuchuser/ca.pem"}}, {}),
        ({}, {"KEYCOURIER_LEDGER": "~nosuchuser/ledger.db"}),
    ],
)
def test_regression_unknown_user_home(doc: dict[str, Any], env: dict[str, str]) -> None:
    """Found by test_generated_config_files: ``~nosuchuser/...`` raised RuntimeError."""
    with pytest.raises(ConfigError):
        config.load(config_path=_write("config.toml", dumps(doc).encode()), env=env)
