"""CLI for partner tokens: ``token``, ``exec`` and the token helper ``serve``."""

from __future__ import annotations

import sys

import click

from keycourier.cli.common import info
from keycourier.cli.helper_ops import exec_with_token, print_token
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
@click.option(
    "--timeout",
    default=None,
    metavar="DURATION",
    help="Give up (exit 6) after this long (90s, 2m; default 30s): waiting for another "
    "process refreshing the token, the helper or the token endpoint.",
)
@click.pass_context
def token(
    ctx: click.Context,
    profile: str,
    fmt: str,
    env_name: str | None,
    no_cache: bool,
    timeout: str | None,
) -> None:
    """Print a partner access token for PROFILE (cached, refreshed ahead of expiry).

    With KEYCOURIER_HELPER_URL set, the running helper is asked instead of the
    platform (client key from KEYCOURIER_HELPER_KEY or KEYCOURIER_HELPER_KEY_FILE).
    When another process is refreshing the same profile's token, this one waits
    for it (saying so after a second) and uses its token, up to --timeout.

    \b
    Examples:
      keycourier token --profile ci --format json
      eval "$(keycourier token --profile ci --format env --env-name MONITE_TOKEN)"
      keycourier token --profile ci --format github     # in GitHub Actions
      keycourier token --profile ci --format credential-process
    """
    print_token(settings_from(ctx), profile, fmt, env_name, no_cache=no_cache, timeout=timeout)


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
@click.option(
    "--keep-env",
    "keep_env",
    multiple=True,
    metavar="NAME",
    help="Pass this credential variable (e.g. VAULT_TOKEN) to the command; repeatable.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(
    ctx: click.Context,
    profile: str,
    env_name: str | None,
    no_mask: bool,
    no_cache: bool,
    keep_env: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with a partner token in its environment; return its exit code.

    The token (and the client secret or helper client key, when known here) is replaced by
    <concealed by keycourier> in the command's stdout and stderr, raw and in
    its URL, JSON, hex and base64 encodings, unless --no-mask is given. Signals are
    forwarded. The token never appears in the command's argv.

    The credentials keycourier itself reads (VAULT_TOKEN, KEYCOURIER_PASSPHRASE,
    KEYCOURIER_PROBE_REFRESH_TOKEN, KEYCOURIER_HELPER_KEY[_FILE], the AppRole
    variables and every profile's client ID/secret variables) are removed from
    the command's environment; --keep-env NAME passes one through.

    \b
    Example:
      keycourier exec --profile ci --env-name MONITE_TOKEN -- ./deploy.sh --stage prod
      keycourier exec --profile ci --keep-env VAULT_TOKEN -- ./needs-vault-too.sh
    """
    code = exec_with_token(
        settings_from(ctx),
        profile,
        env_name,
        no_mask=no_mask,
        no_cache=no_cache,
        keep_env=keep_env,
        command=command,
    )
    sys.exit(code)


@click.command()
@click.option("--listen", default=None, help="HOST:PORT to listen on (default 127.0.0.1:8377).")
@click.option(
    "--socket", "socket_path", default=None, help="Listen on a Unix socket (0600) instead."
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a non-loopback address (needs --tls-cert/--tls-key).",
)
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False), default=None, help="TLS certificate (PEM)."
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False), default=None, help="TLS private key (PEM)."
)
@click.option(
    "--workers",
    default="1",
    show_default=True,
    metavar="N|auto",
    help="Worker processes on the one socket, under a supervisor (auto: one per CPU).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    listen: str | None,
    socket_path: str | None,
    allow_remote: bool,
    tls_cert: str | None,
    tls_key: str | None,
    workers: str,
) -> None:
    """Run the authenticated token helper (POST /v1/token, GET /healthz, GET /metrics).

    Clients authenticate with a key from 'keycourier helper client add'. Tokens
    stay in memory; token_issued and token_handed_out go to the ledger. Stops
    cleanly on SIGINT/SIGTERM after delivering every queued event.

    With --workers N (N > 1) a supervisor runs N worker processes on the same
    socket: one upstream call per refresh, rates and hand-out records for all
    of them together; it restarts a worker that dies, and SIGHUP makes every
    worker re-read the client keys.

    \b
    Example:
      keycourier serve --listen 127.0.0.1:8377
      keycourier serve --listen 127.0.0.1:8377 --workers auto
      KEYCOURIER_HELPER_URL=http://127.0.0.1:8377 KEYCOURIER_HELPER_KEY_FILE=ci.key \\
        keycourier token --profile ci
    """
    # lazy: the server's aiohttp and asyncio cost every token and exec 60 ms
    from keycourier.helper.server import run
    from keycourier.helper.server_config import server_config
    from keycourier.helper.workers import parse_workers, run_supervised

    count = parse_workers(workers)
    settings = settings_from(ctx)
    cfg = server_config(
        settings,
        listen=listen,
        socket_path=socket_path,
        allow_remote=allow_remote,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )

    def announce(where: str) -> None:
        info(f"token helper listening on {where}")

    if count == 1:
        summary = run(settings, cfg, announce=announce)
    else:
        summary = run_supervised(settings, cfg, workers=count, announce=announce)
    info(
        f"stopped: {summary['recorded']} events recorded, {summary['failed']} failed, "
        f"{summary['upstream_calls']} upstream calls"
    )
