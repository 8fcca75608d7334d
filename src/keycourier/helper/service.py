"""Get a token for the CLI (``token``, ``exec``): from the helper, the file cache or upstream.

Order: if ``KEYCOURIER_HELPER_URL`` is set, ask the running helper (and never
call upstream here). Otherwise use the 0600 file cache (unless disabled):
a token before its refresh point is served as is; otherwise one process,
holding the profile's lock, calls upstream, records ``token_issued``, and
writes the cache; if that call fails while the cached token is still valid,
the cached token is served.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from keycourier._record import record
from keycourier.errors import Error, UnavailableError
from keycourier.helper.credentials import load_credentials
from keycourier.helper.filecache import FileCache, cache_dir
from keycourier.partner.profiles import Profile, get_profile
from keycourier.partner.tokens import ClientCredentials, Token, fetch_token
from keycourier.redact import Secret

HELPER_URL_ENV = "KEYCOURIER_HELPER_URL"

if TYPE_CHECKING:
    from keycourier.config import Settings


@record
class Obtained:
    profile_name: str
    token: Token
    origin: str  # "cache", "upstream" or "helper"
    credentials: ClientCredentials | None = None  # known when we minted or loaded them here
    env_name: str = "PARTNER_TOKEN"
    warning: str | None = None


def obtain_token(
    settings: Settings,
    profile_name: str,
    *,
    use_cache: bool = True,
    clock: Callable[[], float] = time.time,
    record: bool = True,
    deadline: float | None = None,
    on_lock_wait: Callable[[], None] | None = None,
    lock_timeout_fails: bool = False,
) -> Obtained:
    """``deadline`` (``time.monotonic()`` time, for ``--timeout``) bounds a call to the
    helper or the token endpoint and the wait for another process's refresh lock; a
    mint cut short by it fails like an unreachable endpoint (so a still-valid cached
    token is served), and a lock not had by then is given up: the token is minted
    without caching, or with ``lock_timeout_fails`` the cached token is served while it
    is valid, else an ``UnavailableError`` (exit 6) ends the call. ``on_lock_wait`` is
    called once when that wait has lasted a second (``filecache.WAIT_NOTICE``)."""
    helper_url = settings.env.get(HELPER_URL_ENV)
    if helper_url:
        # lazy: the helper client's http.client and ssl cost a cached token 8 ms
        from keycourier.helper.client import TIMEOUT, HelperClient

        timeout = TIMEOUT if deadline is None else min(TIMEOUT, _budget(deadline))
        client = HelperClient.from_env(helper_url, settings.env, timeout=timeout)
        token = client.token(profile_name, clock=clock)
        env_name = "PARTNER_TOKEN"
        if profile_name in settings.profiles:
            env_name = get_profile(settings, profile_name).env_name
        return Obtained(profile_name, token, "helper", None, env_name)

    profile = get_profile(settings, profile_name)
    creds = load_credentials(profile, settings)
    if not use_cache:
        token = _mint(profile, creds, clock, deadline)
        warning = _record_issued(settings, profile, token) if record else None
        return Obtained(profile.name, token, "upstream", creds, profile.env_name, warning)

    cache = FileCache(cache_dir(settings.env), clock=clock)
    cached = cache.read(profile, creds)
    if cached is not None and clock() < cached.refresh_at(profile.refresh_fraction):
        return Obtained(profile.name, cached, "cache", creds, profile.env_name)
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(cache.lock(profile, deadline, on_lock_wait))
        except OSError as exc:
            if lock_timeout_fails and exc.errno == errno.ETIMEDOUT:
                if cached is not None and clock() < cached.expires_at - 1:
                    return Obtained(
                        profile.name,
                        cached,
                        "cache",
                        creds,
                        profile.env_name,
                        warning="another process is still refreshing the token; serving "
                        "the cached token until it expires",
                    )
                raise UnavailableError(
                    f"profile {profile.name}: another process kept refreshing the token "
                    "until the timeout",
                    hints=[
                        "run the command again, or give it longer with --timeout",
                        "--no-cache gets a token without waiting for the other process",
                    ],
                ) from None
            notes.append(f"token cache unavailable ({exc.strerror}); not caching")
        else:
            cached = cache.read(profile, creds)  # another process may have refreshed meanwhile
        now = clock()
        if cached is not None and now < cached.refresh_at(profile.refresh_fraction):
            return Obtained(profile.name, cached, "cache", creds, profile.env_name)
        try:
            token = _mint(profile, creds, clock, deadline)
        except Error as exc:
            if cached is not None and clock() < cached.expires_at - 1:
                return Obtained(
                    profile.name,
                    cached,
                    "cache",
                    creds,
                    profile.env_name,
                    warning="refresh failed, serving the cached token until it expires: "
                    + exc.message,
                )
            raise
        if not notes:
            try:
                cache.write(profile, creds, token)
            except OSError as exc:
                notes.append(f"could not write the token cache ({exc.strerror})")
    recorded = _record_issued(settings, profile, token) if record else None
    if recorded:
        notes.append(recorded)
    warning = "; ".join(notes) or None
    return Obtained(profile.name, token, "upstream", creds, profile.env_name, warning)


MIN_TOKEN_BUDGET = 0.25  # seconds: the least a deadline-bound token call is given


def _budget(deadline: float) -> float:
    return max(deadline - time.monotonic(), MIN_TOKEN_BUDGET)


def _mint(
    profile: Profile,
    creds: ClientCredentials,
    clock: Callable[[], float],
    deadline: float | None = None,
) -> Token:
    import asyncio  # only when minting: a cached token is served without it

    if deadline is None:
        return asyncio.run(fetch_token(profile, creds, clock=clock))
    budget = _budget(deadline)
    try:
        return asyncio.run(asyncio.wait_for(fetch_token(profile, creds, clock=clock), budget))
    except TimeoutError:
        raise UnavailableError(
            f"profile {profile.name}: no token from the token endpoint "
            f"within the time left ({budget:.1f} s)"
        ) from None


def _record_issued(settings: Settings, profile: Profile, token: Token) -> str | None:
    """Record ``token_issued``; return a warning instead of failing the command."""
    # lazy: the ledger (sqlite3, threading) only when a token was minted
    from keycourier.helper.recording import issued_event, open_recorder

    try:
        recorder = open_recorder(settings)
    except ImportError:
        return "the ledger is not available: token_issued was not recorded"
    except Error as exc:
        return f"token_issued was not recorded: {exc.message}"
    import sqlite3

    try:
        outcome = recorder.record(
            issued_event(profile.name, token, environment=profile.environment.value)
        )
    except Error as exc:
        with contextlib.suppress(Error, sqlite3.Error):
            recorder.close()
        return f"token_issued was not recorded: {exc.message}"
    try:
        recorder.close()
    except (Error, sqlite3.Error) as exc:  # the event is committed: bookkeeping only
        detail = exc.message if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
        return f"token_issued is on record, but the ledger bookkeeping after it failed ({detail})"
    if outcome.vault_status.value == "pending":
        return "token_issued is in the local ledger but not yet in Vault (run keycourier sync)"
    return None


class ProfileTokenSource:
    """``partner.connections.client.TokenSource`` backed by the token helper (cache,
    helper or upstream).

    ``invalidate()`` (after a 401 from the platform) drops the cached token,
    so the next ``get()`` mints a new one.
    """

    def __init__(self, settings: Settings, profile: str, *, deadline: float | None = None) -> None:
        self._settings = settings
        self._profile = profile
        self._deadline = deadline  # time.monotonic() time that token calls must not outlive
        self._force = False
        self.warnings: list[str] = []

    def get(self) -> Secret:
        got = obtain_token(
            self._settings, self._profile, use_cache=not self._force, deadline=self._deadline
        )
        if got.origin == "upstream" and self._force and got.credentials is not None:
            FileCache(cache_dir(self._settings.env)).write(
                get_profile(self._settings, self._profile), got.credentials, got.token
            )
        self._force = False
        if got.warning:
            self.warnings.append(got.warning)
        return got.token.access_token

    def invalidate(self) -> None:
        self._force = True
