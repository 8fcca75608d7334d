"""What one helper process holds: profiles, the token cache, rendered replies, clients.

``HelperState`` fetches tokens through ``TokenCache`` (or, in a ``serve --workers N``
worker, through the supervisor), renders the ``POST /v1/token`` reply once per token,
records hand-outs, authenticates callers (client keys, or Vault tokens checked with
``keycourier.vault.token_lookup`` and cached briefly) and keeps their rate limits and
the request counters that ``/metrics`` shows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from aiohttp import hdrs

from keycourier.errors import UnavailableError
from keycourier.helper.cache import TokenCache, fresh_until
from keycourier.helper.clients import ClientStore
from keycourier.helper.connections import ConnectionGuard
from keycourier.helper.credentials import load_credentials
from keycourier.helper.principals import LocalBucket, Principal, RateBucket
from keycourier.helper.recording import EventSink, handed_out_event, issued_event
from keycourier.helper.server_config import ServerConfig
from keycourier.partner.profiles import Profile
from keycourier.partner.tokens import Token, fetch_token, json_payload
from keycourier.redact import Secret
from keycourier.vault.token_lookup import lookup_self

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

    from keycourier.config import Settings

VAULT_LOOKUPS_PER_SECOND: Final = 20.0  # uncached lookup-self calls, whole helper
MAX_AUTH_HEADER: Final = 300  # "Bearer " + a client key is 63 characters
STORE_CHECK_SECONDS: Final = 0.5  # how often the client store is stat()ed for changes
# An unknown key re-checks the store at once (a client just added is known to every
# worker on its first request), but not more often than this under a flood of bad keys.
MISS_CHECK_SECONDS: Final = 0.05
MAX_CALLERS: Final = 10_000  # cached authenticated keys


class LookupThrottledError(UnavailableError):
    """Too many uncached Vault-token checks right now."""

    def __init__(self, wait: float) -> None:
        super().__init__("too many Vault token checks; retry shortly")
        self.wait = wait


_VAULT_LOOKUPS = Principal("vault-lookups", "vault-lookups", (), VAULT_LOOKUPS_PER_SECOND)


class Reply:
    """The rendered ``POST /v1/token`` reply for one profile's current token.

    ``body`` is exact while ``now < exact_until`` (``expires_in`` is whole
    seconds); ``until`` is the earlier of that and the token's refresh point:
    before it, the bytes can be sent again without asking the cache.
    """

    __slots__ = ("body", "exact_until", "fingerprint", "token", "until")

    def __init__(self, token: Token) -> None:
        self.token = token
        self.fingerprint = token.fingerprint
        self.body = b""
        self.exact_until = 0.0
        self.until = 0.0


class Caller:
    """A client key that authenticated, found by the keyed digest of its Authorization header.

    ``ready`` maps request bodies that already passed the parse and scope
    checks for this key to the reply last handed to it.
    """

    __slots__ = ("bucket", "principal", "ready")

    def __init__(self, principal: Principal, bucket: RateBucket) -> None:
        self.principal = principal
        self.bucket = bucket
        self.ready: dict[bytes, Reply] = {}


class HelperState:
    """Everything one helper process holds: profiles, cache, clients, counters."""

    def __init__(
        self,
        settings: Settings,
        profiles: Mapping[str, Profile],
        store: ClientStore,
        cfg: ServerConfig,
        *,
        recorder: EventSink | None = None,
        fetcher: Callable[[Profile], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.profiles = dict(profiles)
        self.store = store
        self.cfg = cfg
        self.recorder = recorder
        self.clock = clock
        self.cache = TokenCache(fetcher or self._fetch, clock=clock, on_issued=self._issued)
        self.session: aiohttp.ClientSession | None = None
        self.requests: Counter[tuple[str, int]] = Counter()
        self.handouts_first = 0
        self.handouts_repeat = 0
        self._handed: dict[tuple[str, str], float] = {}
        self.parsed_bodies: dict[bytes, str] = {}
        self.token_ok = 0  # 200s of /v1/token outside the ready path
        # 200s of /v1/token from a ready reply: each is also a cache hit and a repeat hand-out
        self.ready_served = 0
        # keyed BLAKE2s of an Authorization header that authenticated -> the caller; the key
        # is random per process, and the map is emptied whenever the client store changes
        self._digest_key = secrets.token_bytes(32)
        self._callers: dict[bytes, Caller] = {}
        self._store_generation = -2
        self._store_check_at = 0.0
        self._miss_check_at = 0.0
        self._replies: dict[str, Reply] = {}  # profile -> reply for its current token
        self._buckets: dict[str, RateBucket] = {}
        # Hooks for ``serve --workers N`` (keycourier.helper.workers); None in one process.
        self.bucket_factory: Callable[[Principal, float], RateBucket] | None = None
        self.metrics_merge: Callable[[], Awaitable[str]] | None = None
        self._vault_cache: dict[str, tuple[float, Principal | None]] = {}
        self.started = time.monotonic()
        self.guard: ConnectionGuard | None = None  # set while serving

    # -- upstream

    async def _fetch(self, profile: Profile) -> Token:
        loop = asyncio.get_running_loop()
        creds = await loop.run_in_executor(None, load_credentials, profile, self.settings)
        return await fetch_token(profile, creds, session=self.session, clock=self.clock)

    def _issued(self, profile: Profile, token: Token) -> None:
        old = self._replies.pop(profile.name, None)
        if old is not None:
            old.until = 0.0  # keys holding it go back through the cache
        if self.recorder is not None:
            self.recorder.submit(
                issued_event(profile.name, token, environment=profile.environment.value)
            )

    def handed_out(
        self, principal: Principal, profile: str, token: Token, fingerprint: str
    ) -> None:
        key = (principal.name, fingerprint)
        if key in self._handed:
            self.handouts_repeat += 1
            return
        self.handouts_first += 1
        self._handed[key] = token.expires_at
        if len(self._handed) > 10_000:  # forget hand-outs of expired tokens
            now = self.clock()
            self._handed = {k: v for k, v in self._handed.items() if v > now}
        if self.recorder is not None:
            self.recorder.submit(handed_out_event(principal.name, profile, token))

    def reply(self, profile: Profile, token: Token, now: float) -> Reply:
        """The rendered reply for ``token``, re-rendered when ``expires_in`` changes."""
        reply = self._replies.get(profile.name)
        if reply is None or reply.token is not token:
            if reply is not None:
                reply.until = 0.0
            reply = self._replies[profile.name] = Reply(token)
        if now >= reply.exact_until:
            remaining = token.remaining(now)
            reply.body = json.dumps(json_payload(token, now=now)).encode()
            reply.exact_until = token.expires_at - remaining  # until expires_in ticks down
        reply.until = min(reply.exact_until, fresh_until(token, profile.refresh_fraction))
        return reply

    # -- rate limit

    def _bucket(self, principal: Principal, now: float) -> RateBucket:
        bucket = self._buckets.get(principal.key)
        if bucket is None or bucket.rate != principal.rate:
            bucket = self._buckets[principal.key] = (
                LocalBucket(principal.rate, now)
                if self.bucket_factory is None
                else self.bucket_factory(principal, now)
            )
        return bucket

    def take(self, principal: Principal) -> float | None:
        """None if allowed; otherwise the seconds to wait."""
        now = time.monotonic()
        return self._bucket(principal, now).take(now)

    # -- authentication

    def _check_store(self, now: float) -> None:
        """Forget every cached key when the client store changed (stat at most twice a second)."""
        self._store_check_at = now + STORE_CHECK_SECONDS
        self.store.refresh(max_age=STORE_CHECK_SECONDS)
        self._forget_callers_if_reloaded()

    def _forget_callers_if_reloaded(self) -> None:
        generation = self.store.generation()
        if generation != self._store_generation:
            self._callers.clear()
            self._store_generation = generation

    def caller(self, auth: str | None, now: float) -> Caller | None:
        """The caller for an ``Authorization`` header, or None (401).

        A header seen before is found by its keyed digest; a new one is
        checked against the store (constant-time) and remembered if valid.
        """
        if now >= self._store_check_at:
            self._check_store(now)
        if auth is None or len(auth) > MAX_AUTH_HEADER or not auth.isascii():
            return None
        digest = hashlib.blake2s(auth.encode(), key=self._digest_key).digest()
        cached = self._callers.get(digest)
        if cached is not None:
            return cached
        principal = self.bearer(auth)
        if principal is None and now >= self._miss_check_at:
            self._miss_check_at = now + MISS_CHECK_SECONDS
            self.store.refresh(max_age=0)
            principal = self.bearer(auth)
        if principal is None:
            return None
        self._forget_callers_if_reloaded()  # authenticate() may have re-read the store
        found = Caller(principal, self._bucket(principal, now))
        # Remember only the one canonical spelling of each key's header ("Bearer KEY"), so
        # the map holds at most one entry per client key however a client spells it.
        canonical = auth.startswith("Bearer ") and auth[7:] == auth[7:].strip()
        if canonical and len(self._callers) < MAX_CALLERS:
            self._callers[digest] = found
        return found

    def bearer(self, auth: str | None) -> Principal | None:
        """The principal for an ``Authorization: Bearer <client key>`` header, or None."""
        if auth is None:
            return None
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value or len(value) > 256:
            return None
        presented = value.strip()
        if not (presented.isascii() and presented.isprintable()):
            return None  # client keys are printable ASCII; anything else is simply wrong
        client = self.store.authenticate(presented)
        if client is None:
            return None
        return Principal(f"client:{client.name}", client.id, client.profiles, client.rate)

    async def authenticate(self, request: web.Request) -> Principal | None:
        auth = request.headers.get(hdrs.AUTHORIZATION)
        if auth is not None:
            found = self.caller(auth, time.monotonic())
            return found.principal if found is not None else None
        vault_token = request.headers.get("X-Vault-Token")
        if vault_token is not None and self.cfg.vault_policy:
            return await self._vault_principal(vault_token)
        return None

    async def _vault_principal(self, token: str) -> Principal | None:
        if not token or len(token) > 512:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._vault_cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        # Uncached tokens cost a Vault call each: cap them for the whole helper, so that a
        # flood of made-up tokens cannot turn into a flood of lookup-self requests.
        wait = self.take(_VAULT_LOOKUPS)
        if wait is not None:
            raise LookupThrottledError(wait)
        principal, ttl = await self._ask_vault(token)
        if len(self._vault_cache) > 10_000:
            self._vault_cache = {k: v for k, v in self._vault_cache.items() if v[0] > now}
        keep = (
            min(self.cfg.vault_cache_seconds, ttl)
            if principal
            else min(5.0, self.cfg.vault_cache_seconds)
        )
        self._vault_cache[digest] = (now + keep, principal)
        return principal

    async def _ask_vault(self, token: str) -> tuple[Principal | None, float]:
        """The principal of a Vault token carrying ``vault_policy`` and Vault's TTL for it;
        (None, 0.0) for any other token."""
        vault = self.settings.vault
        if not vault.addr or self.session is None:
            return None, 0.0
        info = await lookup_self(
            self.session,
            vault.addr,
            Secret(token),
            namespace=vault.namespace,
            cacert=vault.cacert,
            timeout=vault.timeout,
        )
        if info is None or self.cfg.vault_policy not in info.policies:
            return None, 0.0
        ttl_s = float(info.ttl) if info.ttl is not None else self.cfg.vault_cache_seconds
        return Principal(
            f"vault:{info.display_name}",
            f"vault:{info.accessor}",
            self.cfg.vault_profiles,
            self.cfg.vault_rate,
        ), ttl_s
