"""What ``keycourier token`` and ``keycourier exec`` do, without click.

The click commands in ``helper_cmd`` and the console script's fast path
(``keycourier.cli.entry``) both call ``print_token`` and ``exec_with_token``,
so the two ways in share one implementation. These are the commands CI runs
all day, and a cached token is served in a few milliseconds, so start-up is
most of their cost: keep click, asyncio, aiohttp, hvac, sqlite_utils and
keycourier.cli.common (which imports click) off this module's import path.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from keycourier.cli.outcome import say
from keycourier.config import Settings
from keycourier.helper.execrun import NotRunnableError, credential_env_names, run_with_secrets
from keycourier.helper.formats import Format, check_env_name, render, write_github_env
from keycourier.helper.service import obtain_token
from keycourier.redact import Secret

TOKEN_TIMEOUT = 30.0  # seconds: `token --timeout` when not given


def print_token(
    settings: Settings,
    profile: str,
    fmt: str,
    env_name: str | None,
    *,
    no_cache: bool,
    timeout: str | None = None,
) -> None:
    """``keycourier token``: write PROFILE's token to stdout in format ``fmt``.

    ``timeout`` (a ``connection wait --timeout`` duration, default 30 s) bounds the
    whole command: waiting for another process's refresh (announced after a second),
    the helper or the token endpoint.
    """
    limit = TOKEN_TIMEOUT
    if timeout is not None:  # the parser lives with `connection wait`: import it only then
        from keycourier.partner.connections.model import parse_duration

        limit = parse_duration(timeout, "--timeout")
    if env_name is not None:
        check_env_name(env_name)

    def waiting() -> None:
        sys.stderr.write(
            f"keycourier: waiting for another process refreshing the token for profile {profile}"
            " ...\n"
        )

    got = obtain_token(
        settings,
        profile,
        use_cache=not no_cache,
        deadline=time.monotonic() + limit,
        on_lock_wait=waiting,
        lock_timeout_fails=True,
    )
    if got.warning:
        say("warning", got.warning)
    name = env_name or got.env_name
    out = Format(fmt)
    now = time.time()
    if out is Format.GITHUB:
        write_github_env(got.token, name, settings.env)
    sys.stdout.write(render(got.token, out, now=now, env_name=name))
    sys.stdout.flush()


def exec_with_token(
    settings: Settings,
    profile: str,
    env_name: str | None,
    *,
    no_mask: bool,
    no_cache: bool,
    keep_env: Sequence[str],
    command: Sequence[str],
) -> int:
    """``keycourier exec``: run COMMAND with PROFILE's token in its environment.

    Returns the exit status for the process: the command's, or the status of
    ``NotRunnableError`` (reported here) when it could not be started.
    """
    if env_name is not None:
        check_env_name(env_name)
    for kept in keep_env:
        check_env_name(kept)
    got = obtain_token(settings, profile, use_cache=not no_cache)
    if got.warning:
        say("warning", got.warning)
    name = env_name or got.env_name
    credential_names = credential_env_names(settings)
    remove = credential_names - set(keep_env)
    conceal: list[Secret] = []
    if got.credentials is not None:
        conceal.append(got.credentials.client_secret)
    for kept in keep_env:  # a credential passed on deliberately is still masked
        value = os.environ.get(kept, "")
        if kept in credential_names and not kept.endswith("_FILE") and len(value) >= 8:
            conceal.append(Secret(value))
    if got.origin == "helper":  # in case --keep-env passes it on: hide the client key too
        # helper.client brings http.client and ssl: only with a running helper
        from keycourier.helper.client import read_key

        conceal.append(read_key(settings.env))
    try:
        return run_with_secrets(
            command,
            {name: got.token.access_token},
            conceal=conceal,
            mask=not no_mask,
            remove_env=remove,
        )
    except NotRunnableError as exc:
        say("error", exc.message)
        return exc.status
