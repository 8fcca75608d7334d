"""`keycourier check` and `keycourier policy show|deny`; the options `seal` reuses."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from keycourier.cli.common import emit_json
from keycourier.cli.handover_args import (
    denied_lookup,
    facts_from_options,
    handover_options,
    rejection_error,
    render_report,
)
from keycourier.cli.main import settings_from
from keycourier.cli.record import recording, report_outcome
from keycourier.handover.checking import CheckRequest
from keycourier.handover.checking import check as run_check
from keycourier.handover.denying import Denied, DenyRequest, check_denial
from keycourier.handover.denying import deny as run_deny
from keycourier.policy import (
    Verdict,
    load_policy,
)

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.policy import Policy

F = TypeVar("F", bound=Callable[..., Any])


def _settings(ctx: click.Context, policy_file: str | None) -> Settings:

    settings: Settings = settings_from(ctx, policy_path=policy_file)
    return settings


@click.command()
@handover_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def check(ctx: click.Context, /, as_json: bool, **options: object) -> None:
    """Run the handover policy without sealing anything (a dry run: nothing is recorded).

    Exit status 0 when the handover would pass (warnings allowed), 7 when a
    reject rule fires. The report lists every rule with its outcome and hint;
    it never shows the secret, only a masked client ID and a fingerprint.

    \b
    Example:
      keycourier check --platform quickbooks --client-id AB... \\
        --client-secret-file secret.txt --environment production \\
        --attested-by "Ana Lima" --expires-in 7d
    """
    policy_file = options.pop("policy")
    settings = _settings(ctx, str(policy_file) if policy_file else None)
    probe = bool(options.pop("probe"))
    policy = load_policy(settings.policy_path)  # a broken policy is exit 3 before any input
    request = CheckRequest(
        facts=facts_from_options(options),
        policy=policy,
        denied=denied_lookup(settings),
        probe=probe,
    )
    report = run_check(request)
    render_report(report, as_json=as_json)
    if report.verdict == Verdict.REJECT:
        raise rejection_error(report)


@click.group()
def policy() -> None:
    """Show the handover policy in force; deny credential fingerprints.

    \b
    Example:
      keycourier policy show --json
      keycourier policy deny kc1:0123... --reason "sandbox key sent by mistake"
    """


def _policy_option(f: F) -> F:
    return click.option(
        "--policy",
        "policy_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="Policy file (default: the shipped policy; env KEYCOURIER_POLICY).",
    )(f)


def _render_policy(pol: Policy) -> None:
    click.echo(f"source: {pol.source}")
    click.echo(f"digest: {pol.digest}")
    for rule_id, setting in pol.rules.items():
        click.echo(f"\n[{rule_id}] {setting.severity}")
        for key, value in setting.params.items():
            shown = ", ".join(value) if isinstance(value, tuple) else value
            click.echo(f"  {key} = {shown}")
        click.echo(f"  hint: {setting.hint}")


@policy.command("show")
@_policy_option
@click.option("--json", "as_json", is_flag=True, help="Print the policy as JSON.")
@click.pass_context
def show(ctx: click.Context, policy_file: str | None, as_json: bool) -> None:
    """Print the policy in force and its digest.

    \b
    Example:
      keycourier policy show
      KEYCOURIER_POLICY=strict.toml keycourier policy show --json
    """
    pol = load_policy(_settings(ctx, policy_file).policy_path)
    if as_json:
        emit_json({"source": pol.source, "digest": pol.digest, "policy": pol.to_dict()})
    else:
        _render_policy(pol)


@policy.command("deny")
@click.argument("fingerprint")
@click.option("--reason", required=True, help="Why: e.g. 'sandbox key', 'leaked in a ticket'.")
@click.option("--by", "actor", default=None, help="Who denies it (default: the login name).")
@_policy_option
@click.option("--json", "as_json", is_flag=True, help="Print the recorded event as JSON.")
@click.pass_context
def deny(
    ctx: click.Context,
    fingerprint: str,
    reason: str,
    actor: str | None,
    policy_file: str | None,
    as_json: bool,
) -> None:
    """Deny a credential fingerprint forever (recorded as a denied_fingerprint event).

    Any later check, seal or open of that credential is rejected by the
    denied-fingerprint rule.

    \b
    Example:
      keycourier policy deny kc1:4f0c2a9e1b7d3c5a8e6f0b2d4c6a8e0f \\
        --reason "development key, sent by mistake"
    """

    check_denial(fingerprint, reason, actor or _login_name())  # before anything is loaded
    settings = _settings(ctx, policy_file)
    pol = load_policy(settings.policy_path)
    request = DenyRequest(fingerprint, reason, actor or _login_name(), pol.digest)
    with recording(settings) as recorder:
        denied = run_deny(request, recorder=recorder)
    report_outcome(denied.event, denied.outcome)
    if as_json:
        emit_json(_denied_json(denied))
    else:
        click.echo(f"denied {fingerprint}")


def _denied_json(denied: Denied) -> dict[str, Any]:
    event = denied.event
    return {
        "type": str(event.type),
        "fingerprint": event.fingerprint,
        "reason": event.data["reason"],
        "actor": event.actor,
        "seq": denied.outcome.seq,
        "vault_status": str(denied.outcome.vault_status),
        "policy_digest": event.policy_digest,
    }


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
