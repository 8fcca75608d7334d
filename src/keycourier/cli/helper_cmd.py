"""CLI for the token helper: ``token``, ``exec``, ``serve`` and ``helper client``."""

from __future__ import annotations

import sys
import time

import click

from keycourier.cli.main import settings_from


@click.command()
@click.option(
    "--profile",
    "-p",
    "profile",
    required=True,
    help="Profile name ([profiles.NAME] in the config).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["raw", "json", "env", "github", "credential-process"]),
    default="raw",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--env-name",
    default=None,
    help="Variable name for env/github formats (default: the profile's env_name).",
)
@click.option("--no-cache", is_flag=True, help="Do not read or write the 0600 token cache file.")
@click.pass_context
def token(ctx: click.Context, profile: str, fmt: str, env_name: str | None, no_cache: bool) -> None:
    """Print a partner access token for PROFILE (cached, refreshed ahead of expiry).

    With KEYCOURIER_HELPER_URL set, the running helper is asked instead of the
    platform (client key from KEYCOURIER_HELPER_KEY or KEYCOURIER_HELPER_KEY_FILE).

    \b
    Examples:
      keycourier token --profile ci --format json
      eval "$(keycourier token --profile ci --format env --env-name MONITE_TOKEN)"
      keycourier token --profile ci --format github     # in GitHub Actions
      keycourier token --profile ci --format credential-process
    """
    from keycourier.cli.common import warn
    from keycourier.helper.formats import Format, check_env_name, render, write_github_env
    from keycourier.helper.service import obtain_token

    settings = settings_from(ctx)
    if env_name is not None:
        check_env_name(env_name)
    got = obtain_token(settings, profile, use_cache=not no_cache)
    if got.warning:
        warn(got.warning)
    name = env_name or got.env_name
    out = Format(fmt)
    now = time.time()
    if out is Format.GITHUB:
        write_github_env(got.token, name, settings.env)
    sys.stdout.write(render(got.token, out, now=now, env_name=name))
    sys.stdout.flush()


@click.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--profile", "-p", "profile", required=True, help="Profile name.")
@click.option(
    "--env-name",
    default=None,
    help="Variable that receives the token (default: the profile's env_name).",
)
@click.option(
    "--no-mask", is_flag=True, help="Do not conceal the token in the command's stdout/stderr."
)
@click.option("--no-cache", is_flag=True, help="Do not read or write the 0600 token cache file.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(
    ctx: click.Context,
    profile: str,
    env_name: str | None,
    no_mask: bool,
    no_cache: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with a partner token in its environment; return its exit code.

    The token (and the client secret, when it was read here) is replaced by
    <concealed by keycourier> in the command's stdout and stderr, raw and in
    its URL, JSON and base64 encodings, unless --no-mask is given. Signals are
    forwarded. The token never appears in the command's argv.

    \b
    Example:
      keycourier exec --profile ci --env-name MONITE_TOKEN -- ./deploy.sh --stage prod
    """
    from keycourier.cli.common import warn
    from keycourier.helper.execrun import NotRunnableError, run_with_secrets
    from keycourier.helper.formats import check_env_name
    from keycourier.helper.service import obtain_token
    from keycourier.redact import Secret

    settings = settings_from(ctx)
    if env_name is not None:
        check_env_name(env_name)
    got = obtain_token(settings, profile, use_cache=not no_cache)
    if got.warning:
        warn(got.warning)
    name = env_name or got.env_name
    conceal: list[Secret] = []
    if got.credentials is not None:
        conceal.append(got.credentials.client_secret)
    try:
        code = run_with_secrets(
            command, {name: got.token.access_token}, conceal=conceal, mask=not no_mask
        )
    except NotRunnableError as exc:
        sys.stderr.write(f"keycourier: error: {exc.message}\n")
        sys.exit(exc.status)
    sys.exit(code)
