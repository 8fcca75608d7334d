"""In-memory token cache with single-flight refresh (the ``serve`` process and ``exec``).

Rules:

* a token is fresh until ``issued_at + refresh_fraction * expires_in``
  (default 80% of the lifetime); after that a refresh starts, and until the
  new token arrives the old one keeps being served while it is still valid;
* a token is never served at or past its expiry;
* any number of concurrent callers cause exactly one upstream call per
  refresh: they all await the same task;
* after a failed refresh, no new attempt is made before a short back-off
  (so an outage does not turn into a flood of upstream calls), and a caller
  with no valid token gets the refresh error (an ``Error`` subclass).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from keycourier.errors import Error, UnavailableError
from keycourier.partner.profiles import Profile
from keycourier.partner.tokens import Token, UpstreamUnavailableError

FAILURE_BACKOFF: Final = 5.0  # seconds between refresh attempts after a failure
MIN_SERVE_SECONDS: Final = 1.0  # never hand out a token with less than this left


@dataclass(frozen=True, slots=True)
class CacheResult:
    token: Token
    hit: bool  # served from the cache (no upstream wait)


@dataclass(slots=True)
class _Slot:
    token: Token | None = None
    inflight: asyncio.Task[Token] | None = None
    last_error: Error | None = None
    next_attempt: float = 0.0


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    upstream_calls: int = 0
    upstream_errors: int = 0
    by_profile_issued: dict[str, float] = field(default_factory=dict)


Fetcher = Callable[[Profile], Awaitable[Token]]


def fresh_until(token: Token, refresh_fraction: float) -> float:
    """The instant a cached token stops being a hit: its refresh point, or 1 s before expiry."""
    return min(token.refresh_at(refresh_fraction), token.expires_at - MIN_SERVE_SECONDS)


class TokenCache:
    """Per-profile token slots. Use from one event loop."""

    def __init__(
        self,
        fetcher: Fetcher,
        *,
        clock: Callable[[], float] = time.time,
        on_issued: Callable[[Profile, Token], None] | None = None,
        background_refresh: bool = True,
        failure_backoff: float = FAILURE_BACKOFF,
    ) -> None:
        self._fetcher = fetcher
        self._clock = clock
        self._on_issued = on_issued
        self._background = background_refresh
        self._failure_backoff = failure_backoff
        self._slots: dict[str, _Slot] = {}
        self.stats = CacheStats()

    def peek(self, name: str) -> Token | None:
        slot = self._slots.get(name)
        return slot.token if slot else None

    def _usable(self, token: Token | None, now: float) -> bool:
        return token is not None and now < token.expires_at - MIN_SERVE_SECONDS

    def fresh(self, profile: Profile, now: float | None = None) -> Token | None:
        """The cached token if it is before its refresh point (a hit), else None. No await."""
        slot = self._slots.get(profile.name)
        token = slot.token if slot is not None else None
        if token is None:
            return None
        if now is None:
            now = self._clock()
        if now < fresh_until(token, profile.refresh_fraction):
            self.stats.hits += 1
            return token
        return None

    async def get(self, profile: Profile) -> CacheResult:
        slot = self._slots.setdefault(profile.name, _Slot())
        now = self._clock()
        token = slot.token
        if token is not None and self._usable(token, now):
            if now < token.refresh_at(profile.refresh_fraction):
                self.stats.hits += 1
                return CacheResult(token, True)
            # In the refresh window: one refresh, old token served meanwhile.
            if self._background:
                self._start_refresh(profile, slot, now)
                self.stats.hits += 1
                return CacheResult(token, True)
            try:
                fresh = await self._await_refresh(profile, slot, now)
            except Error:
                now = self._clock()
                if self._usable(slot.token, now) and slot.token is not None:
                    self.stats.hits += 1
                    return CacheResult(slot.token, True)
                raise
            self.stats.misses += 1
            return CacheResult(fresh, False)
        self.stats.misses += 1
        return CacheResult(await self._await_refresh(profile, slot, now), False)

    def _start_refresh(
        self, profile: Profile, slot: _Slot, now: float
    ) -> asyncio.Task[Token] | None:
        if slot.inflight is not None:
            return slot.inflight
        if now < slot.next_attempt:
            return None
        task = asyncio.get_running_loop().create_task(self._refresh(profile, slot))
        slot.inflight = task
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "never retrieved"
        return task

    async def _await_refresh(self, profile: Profile, slot: _Slot, now: float) -> Token:
        task = self._start_refresh(profile, slot, now)
        if task is None:
            err = slot.last_error
            wait = max(1, int(slot.next_attempt - now) + 1)
            if isinstance(err, UpstreamUnavailableError) or err is None:
                raise UpstreamUnavailableError(
                    f"profile {profile.name}: no valid token and the last refresh failed: "
                    + (err.message if err else "unknown reason"),
                    retry_after=float(wait),
                )
            raise err
        # shield: one caller giving up (client disconnect) must not cancel the refresh
        return await asyncio.shield(task)

    async def _refresh(self, profile: Profile, slot: _Slot) -> Token:
        self.stats.upstream_calls += 1
        try:
            token = await self._fetcher(profile)
        except Error as exc:
            self.stats.upstream_errors += 1
            slot.last_error = exc
            slot.next_attempt = self._clock() + self._failure_backoff
            raise
        except Exception as exc:  # noqa: BLE001 - a fetcher bug must not kill the slot
            self.stats.upstream_errors += 1
            err = UnavailableError(
                f"profile {profile.name}: token refresh failed ({type(exc).__name__})"
            )
            slot.last_error = err
            slot.next_attempt = self._clock() + self._failure_backoff
            raise err from None
        finally:
            slot.inflight = None
        slot.token = token
        slot.last_error = None
        slot.next_attempt = 0.0
        self.stats.by_profile_issued[profile.name] = token.issued_at
        if self._on_issued is not None:
            self._on_issued(profile, token)
        return token

    def token_ages(self) -> dict[str, float]:
        now = self._clock()
        return {
            name: now - slot.token.issued_at
            for name, slot in self._slots.items()
            if slot.token is not None
        }
