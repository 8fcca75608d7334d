"""The handover policy: loading, validation and the canonical digest.

The packaged ``handover.toml`` is the single source of every default. A policy
file chosen by the user overrides it key by key and may only use keys that
the packaged file has, with the same types; anything else is a
``ConfigError`` that names the key.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import json
import re
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from keycourier.durations import format_seconds, parse_seconds
from keycourier.errors import ConfigError
from keycourier.files import read_limited
from keycourier.urls import base_url_problem

MAX_POLICY_BYTES: Final = 256 * 1024
POLICY_VERSION: Final = 1
BUILTIN: Final = "builtin"

# Rules about what accompanies a credential (API host, realm, Xero tenant). The
# receiver cannot re-check them: it only has the sender's warnings (rules.py).
CONTEXT_RULE_IDS: Final = (
    "sandbox-api-host",
    "sandbox-userinfo-host",
    "playground-redirect",
    "sandbox-realm",
    "xero-demo-tenant",
    "xero-demo-company",
)

RULE_IDS: Final = (
    "platform",
    "environment",
    "attestation",
    "whitespace",
    "pasted-token",
    "swapped-fields",
    "client-id-format",
    "secret-format",
    "placeholder",
    "sample-value",
    "weak-pattern",
    "entropy",
    *CONTEXT_RULE_IDS,
    "denied-fingerprint",
    "lifetime",
    "sender-policy",
    "live-probe",
)

_PROBE_URL_KEYS: Final = (
    "quickbooks_token_url",
    "quickbooks_api_base",
    "quickbooks_sandbox_api_base",
    "xero_token_url",
    "xero_api_base",
)
_REGEX_KEYS: Final = {
    "pasted-token": ("quickbooks_refresh_token", "access_token"),
    "client-id-format": ("quickbooks", "xero"),
    "secret-format": ("quickbooks", "xero_charset"),
    "xero-demo-tenant": ("pattern",),
}
_FINGERPRINT = re.compile(r"^kc1:[0-9a-f]{32}\Z")
_POLICY_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")


class Severity(enum.StrEnum):
    REJECT = "reject"
    WARN = "warn"


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """A bundle lifetime or an age: ``14d`` / ``36h`` / ``90m`` as a positive ``timedelta``
    (``keycourier.durations``; ValueError otherwise)."""
    return timedelta(seconds=parse_seconds(text, what=what, units=("d", "h", "m")))


def format_duration(value: timedelta) -> str:
    """``14d`` / ``36h`` / ``90m`` / ``45s``: the shortest exact form."""
    return format_seconds(value.total_seconds())


def check_endpoint_url(url: str) -> str | None:
    """Return why ``url`` is not an acceptable vendor endpoint, or None.

    HTTPS is required unless the host is loopback (tests and local stand-ins).
    """
    return base_url_problem(url)


@dataclass(frozen=True, slots=True)
class RuleSetting:
    """One rule as the policy configures it."""

    id: str
    severity: Severity
    hint: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated handover policy. ``digest`` covers everything but ``source``."""

    source: str
    rules: Mapping[str, RuleSetting]
    digest: str
    canonical: str  # canonical JSON text the digest is computed over

    def rule(self, rule_id: str) -> RuleSetting:
        return self.rules[rule_id]

    def param(self, rule_id: str, key: str) -> Any:  # noqa: ANN401 - types checked on load
        return self.rules[rule_id].params[key]

    @property
    def max_lifetime(self) -> timedelta:
        return parse_duration(str(self.param("lifetime", "max")))

    @property
    def allowed_platforms(self) -> tuple[str, ...]:
        return tuple(self.param("platform", "allowed"))

    @property
    def unverified_severity(self) -> Severity:
        return Severity(self.param("live-probe", "unverified"))

    def to_dict(self) -> dict[str, Any]:
        """The policy in force, as plain JSON-able data (the canonical form)."""
        data: dict[str, Any] = json.loads(self.canonical)
        return data


def _read(path: Path) -> dict[str, Any]:
    raw = read_limited(path, f"policy file {path}", MAX_POLICY_BYTES, error=ConfigError)
    return _parse_text(raw, str(path))


def _parse_text(raw: bytes, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"policy file {where} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policy file {where} is not valid TOML: {exc}") from None


def builtin_text() -> bytes:
    """The packaged default policy file, byte for byte."""
    from importlib import resources  # about 6 ms: only when the built-in policy is read

    return resources.files("keycourier.policy").joinpath("handover.toml").read_bytes()


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list of strings"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__  # pragma: no cover - TOML has no other types


def _same_type(base: object, value: object) -> bool:
    if isinstance(base, bool) or isinstance(value, bool):
        return isinstance(base, bool) and isinstance(value, bool)
    if isinstance(base, float):
        return isinstance(value, int | float)
    if isinstance(base, int):
        return isinstance(value, int)
    if isinstance(base, list):
        return isinstance(value, list)
    return isinstance(value, type(base))


def _overlay(base: dict[str, Any], doc: Mapping[str, Any], prefix: str, where: str) -> None:
    """Merge ``doc`` into ``base`` in place, refusing unknown keys and wrong types."""
    for key, value in doc.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(
                f"{where}: unknown key {dotted}",
                hints=["see 'keycourier policy show' for every key the policy accepts"],
            )
        current = base[key]
        if not _same_type(current, value):
            raise ConfigError(f"{where}: {dotted} must be {_type_name(current)}")
        if isinstance(current, dict):
            _overlay(current, value, f"{dotted}.", where)
        elif isinstance(current, list):
            for index, item in enumerate(value):
                if not isinstance(item, str):
                    raise ConfigError(f"{where}: {dotted}[{index}] must be a string")
            base[key] = list(value)
        else:
            base[key] = float(value) if isinstance(current, float) else value


def _check_regex(pattern: str, label: str) -> None:
    """Compile a policy regex; reject it if it is invalid or its meaning is ambiguous.

    ``re`` emits a FutureWarning for syntax whose meaning a later Python will
    change (a nested set or a set operation such as ``[a--b]``); a policy rule
    that could start matching something else after an upgrade is refused now.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{label} is not a valid regex: {exc}") from None
        except FutureWarning as exc:
            raise ConfigError(
                f"{label} is ambiguous and would change meaning in a later Python: {exc}",
                hints=[r"escape the character: \[ \- \& \~ \| inside a [...] set"],
            ) from None


def _validate(merged: Mapping[str, Any], where: str) -> None:
    """Semantic checks on the merged document; every message names its key."""
    if merged.get("version") != POLICY_VERSION:
        raise ConfigError(f"{where}: version must be {POLICY_VERSION}")
    rules = merged["rules"]
    for rule_id, table in rules.items():
        prefix = f"rules.{rule_id}"
        if table.get("severity") not in set(Severity):
            raise ConfigError(f"{where}: {prefix}.severity must be 'reject' or 'warn'")
        hint = table.get("hint")
        if not isinstance(hint, str) or not hint.strip():
            raise ConfigError(f"{where}: {prefix}.hint must be a non-empty string")
    for rule_id, keys in _REGEX_KEYS.items():
        for key in keys:
            _check_regex(rules[rule_id][key], f"{where}: rules.{rule_id}.{key}")
    for index, pattern in enumerate(rules["placeholder"]["patterns"]):
        _check_regex(pattern, f"{where}: rules.placeholder.patterns[{index}]")
    for index, word in enumerate(rules["placeholder"]["words"]):
        if len(word) < 3:
            raise ConfigError(f"{where}: rules.placeholder.words[{index}] is shorter than 3")
    for index, fp in enumerate(rules["sample-value"]["fingerprints"]):
        if not _FINGERPRINT.match(fp):
            raise ConfigError(
                f"{where}: rules.sample-value.fingerprints[{index}] must look like kc1:<32 hex>"
            )
    for index, digest in enumerate(rules["sender-policy"]["digests"]):
        if not _POLICY_DIGEST.match(digest):
            raise ConfigError(
                f"{where}: rules.sender-policy.digests[{index}] must look like sha256:<64 hex>"
            )
    platforms = rules["platform"]["allowed"]
    if not platforms or any(p not in ("quickbooks", "xero") for p in platforms):
        raise ConfigError(
            f"{where}: rules.platform.allowed must list only 'quickbooks' and/or 'xero'"
        )
    secret = rules["secret-format"]
    if not 1 <= secret["xero_min_length"] <= secret["xero_max_length"] <= 4096:
        raise ConfigError(
            f"{where}: rules.secret-format.xero_min_length/xero_max_length must satisfy "
            "1 <= min <= max <= 4096"
        )
    weak = rules["weak-pattern"]
    for key in ("max_repeat_run", "max_sequential_run"):
        if weak[key] < 2:
            raise ConfigError(f"{where}: rules.weak-pattern.{key} must be at least 2")
    entropy = rules["entropy"]
    if not 0 <= entropy["min_bits_per_char"] <= 8:
        raise ConfigError(f"{where}: rules.entropy.min_bits_per_char must be between 0 and 8")
    if not 0 <= entropy["min_total_bits"] <= 4096:
        raise ConfigError(f"{where}: rules.entropy.min_total_bits must be between 0 and 4096")
    try:
        parse_duration(rules["lifetime"]["max"], what="rules.lifetime.max")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    probe = rules["live-probe"]
    if probe["unverified"] not in set(Severity):
        raise ConfigError(f"{where}: rules.live-probe.unverified must be 'reject' or 'warn'")
    if not 0 < probe["timeout_seconds"] <= 120:
        raise ConfigError(f"{where}: rules.live-probe.timeout_seconds must be in (0, 120]")
    for key in _PROBE_URL_KEYS:
        problem = check_endpoint_url(probe[key])
        if problem:
            raise ConfigError(f"{where}: rules.live-probe.{key} {problem}")
    for key in ("hosts",):
        for rule_id in ("sandbox-api-host", "sandbox-userinfo-host"):
            for index, host in enumerate(rules[rule_id][key]):
                if not host or "/" in host or host != host.strip():
                    raise ConfigError(
                        f"{where}: rules.{rule_id}.{key}[{index}] must be a host name"
                    )


def canonical_json(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _build(merged: dict[str, Any], source: str) -> Policy:
    canonical = canonical_json(merged)
    digest = "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()
    rules: dict[str, RuleSetting] = {}
    for rule_id, table in merged["rules"].items():
        params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in table.items()}
        severity = Severity(str(params.pop("severity")))
        hint = str(params.pop("hint"))
        rules[rule_id] = RuleSetting(rule_id, severity, hint, MappingProxyType(params))
    return Policy(source=source, rules=MappingProxyType(rules), digest=digest, canonical=canonical)


def _builtin_doc() -> dict[str, Any]:
    doc = _parse_text(builtin_text(), "(builtin)")
    rules = doc.get("rules", {})
    missing = [r for r in RULE_IDS if r not in rules]
    extra = [r for r in rules if r not in RULE_IDS]
    if missing or extra:  # pragma: no cover - packaging error, caught by the tests
        raise ConfigError(f"the packaged policy is damaged (missing {missing}, extra {extra})")
    return doc


def policy_in_force(path: Path | None) -> Policy | None:
    """The policy in force for stamping the events of commands that do not apply it
    (tokens, connections, receipts, revocations): ``load_policy(path)``, or None when it
    cannot be loaded, so that those commands never lose their events over a policy file."""
    try:
        return load_policy(path)
    except ConfigError:
        return None


def load_policy(path: Path | None) -> Policy:
    """Load the policy in force: the packaged default, overridden by ``path`` if given."""
    base = _builtin_doc()
    if path is None:
        _validate(base, "(builtin policy)")
        return _build(base, BUILTIN)
    doc = _read(path)
    merged = copy.deepcopy(base)
    _overlay(merged, doc, "", str(path))
    _validate(merged, str(path))
    return _build(merged, str(path))
