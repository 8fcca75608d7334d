"""The handover rules and ``evaluate``: facts in, a report out.

Each rule is a small function that returns a ``Finding``. Rules are
fail-closed: a value that cannot be checked is not a pass. No message, hint or
report field ever holds the secret, and the client ID is shown only masked
(and not at all when it looks like a secret or a token).
"""

from __future__ import annotations

import enum
import itertools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from keycourier.policy.context import SandboxContext
from keycourier.policy.model import CONTEXT_RULE_IDS, Policy, Severity, format_duration
from keycourier.redact import Secret, fingerprint, mask

MAX_CLIENT_ID_CHARS: Final = 512  # enforced at the edge (the CLI options)


class Outcome(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - an outcome, not a password
    WARN = "warn"
    REJECT = "reject"
    UNVERIFIED = "unverified"
    SKIP = "skip"


class Verdict(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - an outcome, not a password
    WARN = "warn"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class HandoverFacts:
    """Everything the sender declares about one handover."""

    platform: str
    client_id: str
    client_secret: Secret  # raw bytes as read from the file or stdin
    environment: str | None = None
    attested_by: str | None = None
    attestation: str | None = None
    lifetime: timedelta | None = None
    context: SandboxContext = SandboxContext()  # noqa: RUF009 - frozen: one shared empty
    probe_refresh_token: Secret | None = None
    # Context rules that fired at the sender (a bundle's manifest lists them among
    # its warnings); the receiver has no context of its own to re-check them with.
    reported: frozenset[str] = frozenset()
    # The digest of the policy the bundle was sealed under (from the signed
    # manifest); None when checking before a seal.
    sender_policy: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's result. ``effect`` is what it does to the verdict."""

    rule_id: str
    outcome: Outcome
    message: str
    hint: str
    effect: Verdict = Verdict.PASS

    def to_dict(self) -> dict[str, str]:
        return {
            "rule": self.rule_id,
            "outcome": str(self.outcome),
            "effect": str(self.effect),
            "message": self.message,
            "hint": self.hint if self.effect != Verdict.PASS else "",
        }


@dataclass(frozen=True, slots=True)
class Report:
    verdict: Verdict
    findings: tuple[Finding, ...]
    platform: str
    masked_client_id: str
    fingerprint: str | None
    policy_digest: str
    policy_source: str
    environment: str | None
    attested_by: str | None
    attestation: str | None
    notes: tuple[str, ...] = ()
    secret: Secret | None = field(default=None, repr=False)

    @property
    def rejected(self) -> tuple[str, ...]:
        return tuple(f.rule_id for f in self.findings if f.effect == Verdict.REJECT)

    @property
    def warned(self) -> tuple[str, ...]:
        return tuple(f.rule_id for f in self.findings if f.effect == Verdict.WARN)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary; never holds the secret."""
        return {
            "verdict": str(self.verdict),
            "platform": self.platform,
            "masked_client_id": self.masked_client_id,
            "fingerprint": self.fingerprint,
            "policy_digest": self.policy_digest,
            "policy_source": self.policy_source,
            "environment": self.environment,
            "attested_by": self.attested_by,
            "attestation": self.attestation,
            "rejected": list(self.rejected),
            "warned": list(self.warned),
            "notes": list(self.notes),
            "findings": [f.to_dict() for f in self.findings],
        }


def credential_fingerprint(platform: str, client_id: str, secret: Secret) -> str:
    """The one definition of a credential's fingerprint (no secret can be recovered)."""
    return fingerprint(
        "credential", platform.encode("utf-8"), client_id.encode("utf-8"), secret.reveal_bytes()
    )


# --- helpers -----------------------------------------------------------------


def normalise_secret(raw: bytes) -> tuple[bytes, bool]:
    """Remove exactly one ``\\n`` at the very end (files conventionally end with one)."""
    if raw.endswith(b"\n"):
        return raw[:-1], True
    return raw, False


def _describe_char(ch: str) -> str:
    name = unicodedata.name(ch, "")
    code = f"U+{ord(ch):04X}"
    if ch == "\n":
        name = "LINE FEED (newline)"
    elif ch == "\r":
        name = "CARRIAGE RETURN"
    elif ch == "\t":
        name = "TAB"
    return f"{code} {name}".strip()


def bad_characters(text: str) -> Iterator[tuple[int, str]]:
    """(1-based position, description) of whitespace, control and non-ASCII characters."""
    for index, ch in enumerate(text, start=1):
        if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ord(ch) > 0x7E:
            yield index, _describe_char(ch)


def shannon_bits_per_char(text: str) -> float:
    if not text:
        return 0.0
    counts = Counter(text)
    total = len(text)
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def longest_repeat_run(text: str) -> int:
    best = run = 0
    previous = ""
    for ch in text:
        run = run + 1 if ch == previous else 1
        previous = ch
        best = max(best, run)
    return best


def longest_sequential_run(text: str) -> int:
    """Longest run of consecutive code points going up or down by one (abcd, 4321)."""
    if not text:
        return 0
    best = up = down = 1
    for a, b in itertools.pairwise(text):
        up = up + 1 if ord(b) - ord(a) == 1 else 1
        down = down + 1 if ord(a) - ord(b) == 1 else 1
        best = max(best, up, down)
    return best


def _host_of(value: str) -> str:
    text = value.strip()
    if "://" not in text:
        text = "//" + text
    try:
        host = urlsplit(text).hostname or ""
    except ValueError:
        return ""
    return host.lower().rstrip(".")


def _normalise_uri(value: str) -> str:
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return value.strip()
    host = (parts.hostname or "").lower()
    return f"{parts.scheme.lower()}://{host}{parts.path.rstrip('/')}"


# --- evaluation ----------------------------------------------------------------


class _Run:
    """Collects findings for one evaluation, applying the policy's severities."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.findings: list[Finding] = []

    def ok(self, rule_id: str, message: str) -> None:
        self.findings.append(
            Finding(rule_id, Outcome.PASS, message, self.policy.rule(rule_id).hint)
        )

    def skip(self, rule_id: str, message: str) -> None:
        self.findings.append(
            Finding(rule_id, Outcome.SKIP, message, self.policy.rule(rule_id).hint)
        )

    def fail(self, rule_id: str, message: str) -> None:
        setting = self.policy.rule(rule_id)
        if setting.severity == Severity.REJECT:
            outcome, effect = Outcome.REJECT, Verdict.REJECT
        else:
            outcome, effect = Outcome.WARN, Verdict.WARN
        self.findings.append(Finding(rule_id, outcome, message, setting.hint, effect))

    def unverified(self, rule_id: str, message: str) -> None:
        effect = (
            Verdict.REJECT if self.policy.unverified_severity == Severity.REJECT else Verdict.WARN
        )
        self.findings.append(
            Finding(rule_id, Outcome.UNVERIFIED, message, self.policy.rule(rule_id).hint, effect)
        )

    def rejected(self, *rule_ids: str) -> bool:
        return any(f.rule_id in rule_ids and f.effect == Verdict.REJECT for f in self.findings)


def _field_label(name: str) -> str:
    return "client ID" if name == "client_id" else "client secret"


def _check_platform(run: _Run, platform: str) -> bool:
    allowed = run.policy.allowed_platforms
    if platform in allowed:
        run.ok("platform", f"platform {platform} is allowed")
        return True
    shown = platform if re.fullmatch(r"[a-z0-9_-]{1,32}", platform) else "(unprintable)"
    run.fail("platform", f"platform {shown} is not one of: {', '.join(allowed)}")
    return False


def _check_environment(run: _Run, facts: HandoverFacts) -> None:
    required = str(run.policy.param("environment", "required"))
    env = facts.environment
    if env is None or not env.strip():
        run.fail("environment", f"no environment declared; it must be {required}")
    elif env.strip().casefold() != required.casefold():
        shown = env if re.fullmatch(r"[A-Za-z0-9_-]{1,32}", env) else "(unprintable)"
        run.fail("environment", f"declared environment {shown} is not {required}")
    else:
        run.ok("environment", f"declared environment is {required}")


def _clean_text(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > limit or any(unicodedata.category(c).startswith("C") for c in text):
        return None
    return text


def _check_attestation(run: _Run, facts: HandoverFacts) -> tuple[str | None, str | None]:
    by = _clean_text(facts.attested_by, 200)
    statement = (
        _clean_text(facts.attestation, 2000)
        if facts.attestation is not None
        else str(run.policy.param("attestation", "statement"))
    )
    if facts.attestation is not None and statement is None:
        run.fail(
            "attestation", "the attestation statement is empty, too long or has control characters"
        )
        return by, None
    if by is None:
        why = (
            "missing" if facts.attested_by is None else "empty, too long or has control characters"
        )
        run.fail("attestation", f"no attestation: --attested-by is {why}")
        return None, statement
    run.ok("attestation", f"attested by {by}")
    return by, statement


def _check_whitespace(
    run: _Run, client_id: str, secret_text: str | None, newline_removed: bool
) -> bool:
    problems: list[str] = []
    for name, text in (("client_id", client_id), ("client_secret", secret_text)):
        if text is None:
            problems.append(f"the {_field_label(name)} is not valid UTF-8")
            continue
        bad = list(bad_characters(text))
        if bad:
            where = ", ".join(f"{desc} at position {pos}" for pos, desc in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            problems.append(f"the {_field_label(name)} contains {where}{more}")
    if not client_id:
        problems.append("the client ID is empty")
    if secret_text == "":
        problems.append("the client secret is empty")
    if problems:
        run.fail("whitespace", "; ".join(problems))
        return False
    note = " (one trailing newline was removed from the secret file)" if newline_removed else ""
    run.ok("whitespace", f"no whitespace, control or non-ASCII characters{note}")
    return True


def _looks_like_token(run: _Run, text: str) -> str | None:
    refresh = str(run.policy.param("pasted-token", "quickbooks_refresh_token"))
    access = str(run.policy.param("pasted-token", "access_token"))
    if re.search(refresh, text):
        return "an Intuit refresh token"
    if re.search(access, text) or text.startswith("eyJ"):
        return "an OAuth access token (JWT)"
    return None


def _check_tokens(run: _Run, client_id: str, secret: str) -> bool:
    found = []
    for name, text in (("client_id", client_id), ("client_secret", secret)):
        kind = _looks_like_token(run, text)
        if kind:
            found.append(f"the {_field_label(name)} looks like {kind}")
    if found:
        run.fail("pasted-token", "; ".join(found))
        return True
    run.ok("pasted-token", "neither field looks like a refresh or access token")
    return False


def _id_ok(run: _Run, platform: str, client_id: str) -> bool:
    return re.fullmatch(str(run.policy.param("client-id-format", platform)), client_id) is not None


def _secret_ok(run: _Run, platform: str, secret: str) -> bool:
    if platform == "quickbooks":
        return (
            re.fullmatch(str(run.policy.param("secret-format", "quickbooks")), secret) is not None
        )
    params = run.policy.rule("secret-format").params
    if not params["xero_min_length"] <= len(secret) <= params["xero_max_length"]:
        return False
    return re.fullmatch(str(params["xero_charset"]), secret) is not None


def _check_formats(run: _Run, platform: str, client_id: str, secret: str) -> bool:
    id_ok, secret_ok = _id_ok(run, platform, client_id), _secret_ok(run, platform, secret)
    # The ID field holds a secret-shaped value and the secret field an ID-shaped one.
    swapped = not id_ok and _secret_ok(run, platform, client_id) and _id_ok(run, platform, secret)
    if swapped:
        run.fail("swapped-fields", "the client ID has the secret's format and the secret the ID's")
    else:
        run.ok("swapped-fields", "the fields are not swapped")
    if id_ok:
        run.ok("client-id-format", f"the client ID has the {platform} format")
    else:
        run.fail("client-id-format", f"the client ID does not have the {platform} client ID format")
    if secret_ok:
        run.ok("secret-format", f"the client secret has the {platform} format")
    else:
        run.fail("secret-format", f"the client secret does not have the {platform} secret format")
    return id_ok and not swapped


_STRENGTH_RULES: Final = ("placeholder", "sample-value", "weak-pattern", "entropy")


def _check_strength(run: _Run, client_id: str, secret: str) -> None:
    """Placeholder, sample, weak-pattern and entropy rules."""
    words = [w.casefold() for w in run.policy.param("placeholder", "words")]
    patterns = list(run.policy.param("placeholder", "patterns"))
    hits = []
    for name, text in (("client_id", client_id), ("client_secret", secret)):
        folded = text.casefold()
        if any(w in folded for w in words) or any(
            re.search(p, text, re.IGNORECASE) for p in patterns
        ):
            hits.append(_field_label(name))
    if hits:
        run.fail("placeholder", f"the {' and the '.join(hits)} look like placeholder text")
    else:
        run.ok("placeholder", "no placeholder text")

    samples = set(run.policy.param("sample-value", "fingerprints"))
    sample_hits = [
        _field_label(name)
        for name, text in (("client_id", client_id), ("client_secret", secret))
        if fingerprint("sample", text.encode("utf-8")) in samples
    ]
    if sample_hits:
        run.fail("sample-value", f"the {' and the '.join(sample_hits)} is a published sample value")
    else:
        run.ok("sample-value", "not a known sample value")

    max_repeat = int(run.policy.param("weak-pattern", "max_repeat_run"))
    max_seq = int(run.policy.param("weak-pattern", "max_sequential_run"))
    weak = []
    for name, text in (("client_id", client_id), ("client_secret", secret)):
        if longest_repeat_run(text) > max_repeat:
            weak.append(
                f"the {_field_label(name)} repeats a character over {max_repeat} times in a row"
            )
        if longest_sequential_run(text) > max_seq:
            weak.append(f"the {_field_label(name)} has a sequential run longer than {max_seq}")
    if weak:
        run.fail("weak-pattern", "; ".join(weak))
    else:
        run.ok("weak-pattern", "no long repeated or sequential runs")

    bits = shannon_bits_per_char(secret)
    total = bits * len(secret)
    min_bits = float(run.policy.param("entropy", "min_bits_per_char"))
    min_total = float(run.policy.param("entropy", "min_total_bits"))
    if bits < min_bits or total < min_total:
        run.fail(
            "entropy",
            f"the client secret's estimated entropy is too low (below {min_bits:g} bits per "
            f"character or {min_total:g} bits in total)",
        )
    else:
        run.ok("entropy", "the client secret's estimated entropy is above the threshold")


CONTEXT_RULES: Final = frozenset(CONTEXT_RULE_IDS)


def _check_context(run: _Run, platform: str, ctx: SandboxContext, reported: frozenset[str]) -> None:
    def none_given(rule_id: str, message: str) -> None:
        if rule_id in reported:
            run.fail(rule_id, "the sender's check found this (the bundle lists it as a warning)")
        else:
            run.ok(rule_id, message)

    hosts = {h.lower() for h in run.policy.param("sandbox-api-host", "hosts")}
    if ctx.api_base is None:
        none_given("sandbox-api-host", "no API base given")
    elif _host_of(ctx.api_base) in hosts:
        run.fail(
            "sandbox-api-host", f"the API base host {_host_of(ctx.api_base)} is a sandbox host"
        )
    else:
        run.ok("sandbox-api-host", "the API base is not a sandbox host")

    hosts = {h.lower() for h in run.policy.param("sandbox-userinfo-host", "hosts")}
    if ctx.userinfo_host is None:
        none_given("sandbox-userinfo-host", "no userinfo host given")
    elif _host_of(ctx.userinfo_host) in hosts:
        run.fail(
            "sandbox-userinfo-host",
            f"the userinfo host {_host_of(ctx.userinfo_host)} is a sandbox host",
        )
    else:
        run.ok("sandbox-userinfo-host", "the userinfo host is not a sandbox host")

    uris = {_normalise_uri(u) for u in run.policy.param("playground-redirect", "uris")}
    if ctx.redirect_uri is None:
        none_given("playground-redirect", "no redirect URI given")
    elif _normalise_uri(ctx.redirect_uri) in uris:
        run.fail("playground-redirect", "the redirect URI is the Intuit OAuth Playground's")
    else:
        run.ok("playground-redirect", "the redirect URI is not the OAuth Playground's")

    if ctx.realm_is_sandbox:
        run.fail("sandbox-realm", "the realm is marked as a sandbox company")
    else:
        none_given("sandbox-realm", "the realm is not marked as a sandbox company")

    pattern = str(run.policy.param("xero-demo-tenant", "pattern"))
    if ctx.xero_tenant_name is None:
        none_given("xero-demo-tenant", "no Xero tenant name given")
    elif re.search(pattern, ctx.xero_tenant_name.strip(), re.IGNORECASE):
        run.fail("xero-demo-tenant", "the Xero tenant is named like a Demo Company")
    else:
        run.ok("xero-demo-tenant", "the Xero tenant name is not a Demo Company name")

    if ctx.xero_is_demo_company:
        run.fail("xero-demo-company", "the Xero organisation has IsDemoCompany: true")
    elif ctx.xero_is_demo_company is False:
        run.ok("xero-demo-company", "the Xero organisation has IsDemoCompany: false")
    else:
        none_given("xero-demo-company", "no Xero organisation flag given")
    del platform


def _check_lifetime(run: _Run, lifetime: timedelta | None) -> None:
    maximum = run.policy.max_lifetime
    top = format_duration(maximum)
    if lifetime is None:
        run.ok("lifetime", f"no lifetime requested; the maximum is {top}")
    elif lifetime <= timedelta(0):
        run.fail("lifetime", "the bundle lifetime must be positive")
    elif lifetime > maximum:
        run.fail(
            "lifetime",
            f"the bundle lifetime {format_duration(lifetime)} is longer than the maximum {top}",
        )
    else:
        run.ok(
            "lifetime",
            f"the bundle lifetime {format_duration(lifetime)} is within the maximum {top}",
        )


def _check_sender_policy(run: _Run, digest: str | None) -> None:
    accepted = tuple(run.policy.param("sender-policy", "digests"))
    if digest is None:
        run.skip("sender-policy", "checked when a bundle is opened")
    elif not accepted:
        run.ok("sender-policy", "any sender policy is accepted (no digests listed)")
    elif digest in accepted:
        run.ok("sender-policy", "the bundle was sealed under an accepted policy")
    else:
        run.fail("sender-policy", f"the bundle was sealed under policy {digest}, not accepted")


def evaluate(
    policy: Policy,
    facts: HandoverFacts,
    *,
    now: datetime,
    denied: Callable[[str], str | None] = lambda fp: None,
    probe: bool = False,
) -> Report:
    """Run every rule of ``policy`` against ``facts``. Never raises for a bad credential."""
    del now  # rules are time-independent today; kept for bundle-expiry style rules
    run = _Run(policy)
    platform = facts.platform.strip().lower()
    raw_secret, newline_removed = normalise_secret(facts.client_secret.reveal_bytes())
    secret = Secret(raw_secret)
    try:
        secret_text: str | None = raw_secret.decode("utf-8")
    except UnicodeDecodeError:
        secret_text = None
    client_id = facts.client_id

    platform_ok = _check_platform(run, platform)
    _check_environment(run, facts)
    attested_by, statement = _check_attestation(run, facts)
    clean = _check_whitespace(run, client_id, secret_text, newline_removed)
    text = secret_text or ""
    is_token = _check_tokens(run, client_id, text)
    id_shape_ok = False
    if platform_ok:
        id_shape_ok = _check_formats(run, platform, client_id, text)
    else:
        for rule_id in ("swapped-fields", "client-id-format", "secret-format"):
            run.skip(rule_id, "not checked: the platform is not allowed")
    _check_strength(run, client_id, text)
    strong = not run.rejected(*_STRENGTH_RULES)
    _check_context(run, platform, facts.context, facts.reported)

    fp: str | None = None
    if strong and clean and secret_text:
        fp = credential_fingerprint(platform, client_id, secret)
        reason = denied(fp)
        if reason is not None:
            shown = reason if _clean_text(reason, 500) else "(no printable reason)"
            run.fail("denied-fingerprint", f"this credential was denied: {shown}")
        else:
            run.ok("denied-fingerprint", "the fingerprint is not on the deny-list")
    else:
        # An unkeyed hash of a weak secret could be brute-forced: no fingerprint.
        run.skip("denied-fingerprint", "not checked: the secret failed the strength rules")
    _check_lifetime(run, facts.lifetime)
    _check_sender_policy(run, facts.sender_policy)

    if not probe:
        run.skip("live-probe", "not requested (use --probe)")
    elif any(f.effect == Verdict.REJECT for f in run.findings):
        run.skip("live-probe", "not run: the credential was already rejected offline")
    else:
        # lazy: the probe's http.client, ssl and email cost about 10 ms of every start-up
        from keycourier.policy.probe import ProbeStatus, run_probe

        result = run_probe(
            policy, platform, client_id, secret, facts.context, facts.probe_refresh_token
        )
        if result.status == ProbeStatus.PASS:
            run.ok("live-probe", result.message)
        elif result.status == ProbeStatus.REJECT:
            run.fail("live-probe", result.message)
        else:
            run.unverified("live-probe", result.message)

    effects = {f.effect for f in run.findings}
    verdict = (
        Verdict.REJECT
        if Verdict.REJECT in effects
        else Verdict.WARN
        if Verdict.WARN in effects
        else Verdict.PASS
    )
    show_id = id_shape_ok and clean and not is_token
    notes = ("one trailing newline was removed from the client secret",) if newline_removed else ()
    return Report(
        verdict=verdict,
        findings=tuple(run.findings),
        platform=platform if platform_ok else "(not allowed)",
        masked_client_id=mask(client_id) if show_id else "****",
        fingerprint=fp,
        policy_digest=policy.digest,
        policy_source=policy.source,
        environment=facts.environment,
        attested_by=attested_by,
        attestation=statement,
        notes=notes,
        secret=secret,
    )
