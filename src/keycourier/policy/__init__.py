"""keycourier.policy: the handover policy (rules, loader, live probes).

Core package: never imports click, hvac, sqlite_utils, aiohttp or keycourier.cli.
"""

from keycourier.policy.context import (
    SandboxContext,
    make_context,
    merge_contexts,
    parse_context,
    parse_context_file,
)
from keycourier.policy.model import (
    RULE_IDS,
    Policy,
    RuleSetting,
    Severity,
    builtin_text,
    load_policy,
    parse_duration,
    policy_in_force,
)
from keycourier.policy.rules import (
    Finding,
    HandoverFacts,
    Outcome,
    Report,
    Verdict,
    credential_fingerprint,
    evaluate,
    normalise_secret,
)

__all__ = [
    "RULE_IDS",
    "Finding",
    "HandoverFacts",
    "Outcome",
    "Policy",
    "Report",
    "RuleSetting",
    "SandboxContext",
    "Severity",
    "Verdict",
    "builtin_text",
    "credential_fingerprint",
    "evaluate",
    "load_policy",
    "make_context",
    "merge_contexts",
    "normalise_secret",
    "parse_context",
    "parse_context_file",
    "parse_duration",
    "policy_in_force",
]
