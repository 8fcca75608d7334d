"""The options and parsing that seal, check, open and ingest share: the handover facts, the
sender's identity, the deny list and the policy report."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from keycourier.cli.common import emit_json, read_secret_source
from keycourier.errors import PolicyError, UsageError
from keycourier.policy import (
    HandoverFacts,
    Report,
    Verdict,
    make_context,
    merge_contexts,
    parse_context_file,
    parse_duration,
)
from keycourier.policy.rules import MAX_CLIENT_ID_CHARS
from keycourier.redact import Secret

if TYPE_CHECKING:
    from keycourier.config import Settings


F = TypeVar("F", bound=Callable[..., Any])
REFRESH_TOKEN_ENV: Final = "KEYCOURIER_PROBE_REFRESH_TOKEN"  # noqa: S105 - a variable name


_HANDOVER_OPTIONS: Final[list[Callable[[Any], Any]]] = [
    click.option("--platform", required=True, help="quickbooks or xero."),
    click.option("--client-id", required=True, help="The app's client ID (not secret)."),
    click.option(
        "--client-secret-file",
        required=True,
        type=click.Path(dir_okay=False, allow_dash=True),
        help="File holding the client secret ('-' for stdin). One final newline is allowed.",
    ),
    click.option("--environment", default=None, help="Declared environment; must be production."),
    click.option("--attested-by", default=None, help="Who attests that these are production keys."),
    click.option(
        "--attestation",
        default=None,
        help="The attested statement (default: the policy's statement).",
    ),
    click.option("--expires-in", default=None, help="Bundle lifetime, e.g. 7d or 36h."),
    click.option("--api-base", default=None, help="API base URL that comes with the key."),
    click.option("--userinfo-host", default=None, help="OpenID userinfo host or URL in use."),
    click.option("--redirect-uri", default=None, help="OAuth redirect URI registered for the app."),
    click.option("--realm-id", default=None, help="QuickBooks company (realm) ID."),
    click.option(
        "--sandbox-realm", is_flag=True, default=False, help="The realm is a sandbox company."
    ),
    click.option("--xero-tenant-name", default=None, help="Name of the connected Xero tenant."),
    click.option(
        "--xero-demo-company",
        is_flag=True,
        default=None,
        help="The Xero organisation reports IsDemoCompany: true.",
    ),
    click.option(
        "--context-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="JSON file with the same context fields (api_base, realm_id, ...).",
    ),
    click.option(
        "--policy",
        "policy",
        type=click.Path(dir_okay=False),
        default=None,
        help="Policy file (default: the shipped policy; env KEYCOURIER_POLICY).",
    ),
    click.option("--probe", is_flag=True, help="Also run the live vendor probe (network)."),
    click.option(
        "--probe-refresh-token-file",
        type=click.Path(dir_okay=False, allow_dash=True),
        default=None,
        help=f"QuickBooks refresh token for the probe ('-' for stdin; or env {REFRESH_TOKEN_ENV}).",
    ),
]


def handover_options(f: F) -> F:
    """Add the handover options (shared by `check` and `seal`).

    The command receives them as keyword arguments named after the options
    (``platform``, ``client_id``, ``client_secret_file``, ..., ``policy``,
    ``probe``, ``probe_refresh_token_file``); pass them to ``facts_from_options``.
    """
    for option in reversed(_HANDOVER_OPTIONS):
        f = option(f)
    return f


def facts_from_options(options: Mapping[str, Any]) -> HandoverFacts:
    """Read the secret sources and build the facts the policy evaluates."""
    secret_src = str(options["client_secret_file"])
    token_src = options.get("probe_refresh_token_file")
    if secret_src == "-" and token_src == "-":  # noqa: S105 - "-" means stdin
        raise UsageError("--client-secret-file - and --probe-refresh-token-file - both read stdin")
    if len(str(options["client_id"])) > MAX_CLIENT_ID_CHARS:
        raise UsageError(f"--client-id is longer than {MAX_CLIENT_ID_CHARS} characters")
    secret = Secret(read_secret_source(secret_src, "client secret"))
    refresh: Secret | None = None
    if token_src is not None:
        refresh = Secret(read_secret_source(str(token_src), "probe refresh token", limit=8192))
    elif os.environ.get(REFRESH_TOKEN_ENV):
        refresh = Secret(os.environ[REFRESH_TOKEN_ENV])
    lifetime = None
    if options.get("expires_in"):
        try:
            lifetime = parse_duration(str(options["expires_in"]), what="--expires-in")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    ctx = make_context(
        api_base=options.get("api_base"),
        userinfo_host=options.get("userinfo_host"),
        redirect_uri=options.get("redirect_uri"),
        realm_id=options.get("realm_id"),
        realm_is_sandbox=bool(options.get("sandbox_realm")),
        xero_tenant_name=options.get("xero_tenant_name"),
        xero_is_demo_company=True if options.get("xero_demo_company") else None,
    )
    if options.get("context_file"):
        ctx = merge_contexts(parse_context_file(Path(str(options["context_file"]))), ctx)
    return HandoverFacts(
        platform=str(options["platform"]),
        client_id=str(options["client_id"]),
        client_secret=secret,
        environment=options.get("environment"),
        attested_by=options.get("attested_by"),
        attestation=options.get("attestation"),
        lifetime=lifetime,
        context=ctx,
        probe_refresh_token=refresh,
    )


def denied_lookup(settings: Settings) -> Callable[[str], str | None]:
    """A deny-list lookup over `denied_fingerprint` events: the local ledger, then Vault.

    With no ledger file yet no file is created; a deny another ledger recorded in
    Vault still counts when Vault is configured and reachable.
    """
    # lazy: the ledger and its checkpoints, for the commands that check a credential only
    from keycourier.ledger.state import denied_lookup as lookup

    return lookup(settings)


_OUTCOME_LABEL: Final = {
    "pass": "PASS",
    "warn": "WARN",
    "reject": "REJECT",
    "unverified": "UNVERIFIED",
    "skip": "skip",
}


def render_report(report: Report, *, as_json: bool) -> None:
    """The report to stdout: a table for people, or JSON. Never the secret."""
    if as_json:
        emit_json(report.to_dict())
        return
    click.echo(f"verdict:        {report.verdict}")
    click.echo(f"platform:       {report.platform}")
    click.echo(f"client ID:      {report.masked_client_id}")
    click.echo(f"fingerprint:    {report.fingerprint or '(withheld)'}")
    click.echo(f"policy:         {report.policy_digest} ({report.policy_source})")
    if report.attested_by:
        click.echo(f"attested by:    {report.attested_by}")
    for note in report.notes:
        click.echo(f"note:           {note}")
    click.echo("")
    width = max(len(f.rule_id) for f in report.findings)
    for finding in report.findings:
        label = _OUTCOME_LABEL[str(finding.outcome)]
        click.echo(f"{label:<10} {finding.rule_id:<{width}}  {finding.message}")
        if finding.effect != Verdict.PASS:
            click.echo(f"{'':<10} {'':<{width}}  hint: {finding.hint}")


def rejection_error(report: Report) -> PolicyError:
    rules = ", ".join(report.rejected)
    return PolicyError(
        f"the handover is rejected by the policy (rules: {rules})",
        hints=["see the report above: each rejected rule has a hint"],
    )
