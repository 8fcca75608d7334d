"""``keycourier serve``: the authenticated token helper (aiohttp, loopback by default).

Routes:

* ``GET /healthz``: no authentication; ``{"status": "ok"}``.
* ``POST /v1/token`` with ``{"profile": "NAME"}``: the ``--format json`` shape.
* ``GET /metrics``: Prometheus text format; per-profile series only for the
  caller's profiles.

Every route but ``/healthz`` needs ``Authorization: Bearer <client key>``
(from ``keycourier helper client add``), or, when ``[helper] vault_policy`` is
set, ``X-Vault-Token: <token>`` carrying that policy (checked with
``auth/token/lookup-self``, cached briefly). Replies: 401 missing or wrong
credentials; 429 over the client's rate (with ``Retry-After``); 413 body over
``max_body``; 408 body not received within ``body_timeout``; 400 malformed
body; 404 unknown profile; 403 profile outside the client's scope; 502 the
platform refused the profile's credentials (or the profile is misconfigured);
503 the platform is unavailable and there is no valid cached token (with
``Retry-After`` when known). Tokens live in memory only. Connections are
accepted and bounded by ``keycourier.helper.connections`` (read deadlines, a
connection cap, eviction of the slowest request).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import math
import os
import re
import secrets
import signal
import socket as socketlib
import ssl
import stat
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from aiohttp import hdrs, web
from multidict import CIMultiDict

from keycourier.errors import AuthError, ConfigError, Error, UnavailableError, UsageError
from keycourier.helper.cache import TokenCache, fresh_until
from keycourier.helper.clients import ClientStore
from keycourier.helper.connections import ConnectionGuard, Limits
from keycourier.helper.vault_lookup import lookup_self
from keycourier.partner.profiles import Profile
from keycourier.partner.tokens import Token, UpstreamUnavailableError, json_payload
from keycourier.redact import Secret
from keycourier.urls import is_loopback_host

if TYPE_CHECKING:
    import socket as socketlib

    import aiohttp

    from keycourier.config import Settings
    from keycourier.helper.recording import EventSink

DEFAULT_PORT: Final = 8377
DEFAULT_MAX_BODY: Final = 1024
VAULT_CACHE_SECONDS: Final = 30.0
VAULT_LOOKUPS_PER_SECOND: Final = 20.0  # uncached lookup-self calls, whole helper
JSON_TYPE: Final = "application/json"
MAX_AUTH_HEADER: Final = 300  # "Bearer " + a client key is 63 characters
STORE_CHECK_SECONDS: Final = 0.5  # how often the client store is stat()ed for changes
# An unknown key re-checks the store at once (a client just added is known to every
# worker on its first request), but not more often than this under a flood of bad keys.
MISS_CHECK_SECONDS: Final = 0.05
MAX_CALLERS: Final = 10_000  # cached authenticated keys
MAX_READY_BODIES: Final = 16  # per key: distinct request bodies with a ready reply
DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True, slots=True)
class Principal:
    name: str  # "client:NAME" or "vault:DISPLAY_NAME"
    key: str  # rate-limit bucket key
    profiles: tuple[str, ...]
    rate: float

    def allows(self, profile: str) -> bool:
        return "*" in self.profiles or profile in self.profiles


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str | None
    port: int
    socket_path: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    max_body: int = DEFAULT_MAX_BODY
    vault_policy: str | None = None
    vault_profiles: tuple[str, ...] = ("*",)
    vault_rate: float = 50.0
    vault_cache_seconds: float = VAULT_CACHE_SECONDS
    limits: Limits = DEFAULT_LIMITS


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit():
        raise UsageError(f"--listen must be HOST:PORT, not {value[:100]!r}")
    host = host.strip("[]")
    port = int(port_s)
    if not 0 <= port <= 65535 or not host:
        raise UsageError(f"--listen must be HOST:PORT, not {value[:100]!r}")
    return host, port


def server_config(
    settings: Settings,
    *,
    listen: str | None,
    socket_path: str | None,
    allow_remote: bool,
    tls_cert: str | None,
    tls_key: str | None,
) -> ServerConfig:
    """Validate flags + ``[helper]``: loopback unless --allow-remote with TLS."""
    table = dict(settings.helper)
    allowed = {
        "listen",
        "socket",
        "max_body",
        "vault_policy",
        "vault_profiles",
        "vault_rate",
        "vault_cache_seconds",
        "clients_file",
        "tls_cert",
        "tls_key",
        *LIMIT_KEYS,
    }
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown key helper.{key}")
    if listen and socket_path:
        raise UsageError("give --listen or --socket, not both")
    socket_path = socket_path or (None if listen else table.get("socket"))
    tls_cert = tls_cert or table.get("tls_cert")
    tls_key = tls_key or table.get("tls_key")
    max_body = table.get("max_body", DEFAULT_MAX_BODY)
    if not isinstance(max_body, int) or isinstance(max_body, bool) or not 64 <= max_body <= 65536:
        raise ConfigError("helper.max_body must be an integer between 64 and 65536")
    policy = table.get("vault_policy")
    if policy is not None and (not isinstance(policy, str) or not policy):
        raise ConfigError("helper.vault_policy must be a policy name")
    vprofiles = table.get("vault_profiles", ["*"])
    if not isinstance(vprofiles, list) or not all(isinstance(p, str) for p in vprofiles):
        raise ConfigError("helper.vault_profiles must be a list of profile names")
    vrate = table.get("vault_rate", 50.0)
    vcache = table.get("vault_cache_seconds", VAULT_CACHE_SECONDS)
    for key, value, lo, hi in (
        ("vault_rate", vrate, 0.001, 1e6),
        ("vault_cache_seconds", vcache, 0, 300),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ConfigError(f"helper.{key} must be a number between {lo} and {hi}")
    limits = _limits(table)
    if socket_path:
        if tls_cert or allow_remote:
            raise UsageError("--socket is local only: no --allow-remote or TLS")
        return ServerConfig(
            None,
            0,
            Path(socket_path).expanduser(),
            None,
            None,
            max_body,
            policy,
            tuple(vprofiles),
            float(vrate),
            float(vcache),
            limits,
        )
    host, port = parse_listen(listen or table.get("listen") or f"127.0.0.1:{DEFAULT_PORT}")
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if not is_loopback_host(host):
        if not allow_remote:
            raise UsageError(
                f"refusing to listen on the non-loopback address {host}",
                hints=["the helper hands out tokens: keep it on 127.0.0.1, or use "
                       "--allow-remote with --tls-cert and --tls-key"],
            )  # fmt: skip
        if not tls_cert:
            raise UsageError("--allow-remote needs --tls-cert and --tls-key")
    return ServerConfig(
        host,
        port,
        None,
        Path(tls_cert).expanduser() if tls_cert else None,
        Path(tls_key).expanduser() if tls_key else None,
        max_body,
        policy,
        tuple(vprofiles),
        float(vrate),
        float(vcache),
        limits,
    )


# [helper] key -> (Limits field, lowest, highest, whole number)
LIMIT_KEYS: Final[dict[str, tuple[str, float, float, bool]]] = {
    "header_timeout": ("header_timeout", 0.1, 300.0, False),
    "body_timeout": ("body_timeout", 0.1, 300.0, False),
    "idle_timeout": ("idle_timeout", 0.1, 3600.0, False),
    "max_connections": ("max_connections", 1, 1_000_000, True),
    "max_connections_per_peer": ("max_per_peer", 1, 1_000_000, True),
}


def _limits(table: Mapping[str, Any]) -> Limits:
    values: dict[str, float | int] = {}
    for key, (name, lo, hi, whole) in LIMIT_KEYS.items():
        if key not in table:
            continue
        value = table[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (whole and not isinstance(value, int))
            or not lo <= value <= hi
        ):
            kind = "an integer" if whole else "a number"
            raise ConfigError(f"helper.{key} must be {kind} between {lo:g} and {hi:g}")
        values[name] = value if whole else float(value)
    return Limits(**values)  # type: ignore[arg-type]


class _Bucket:
    """A token bucket: ``rate`` requests per second, bursts of twice that."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * 2)
        self.tokens = self.burst
        self.last = now

    def take(self, now: float) -> float | None:
        """None if allowed; otherwise the seconds to wait."""
        tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if tokens >= 1:
            self.tokens = tokens - 1
            return None
        self.tokens = tokens
        return (1 - tokens) / self.rate


class RateBucket(Protocol):
    """What a caller's rate limit needs: ``_Bucket``, or a bucket shared by worker processes."""

    rate: float

    def take(self, now: float) -> float | None: ...


class _Reply:
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


class _Caller:
    """A client key that authenticated, found by the keyed digest of its Authorization header.

    ``ready`` maps request bodies that already passed the parse and scope
    checks for this key to the reply last handed to it.
    """

    __slots__ = ("bucket", "principal", "ready")

    def __init__(self, principal: Principal, bucket: RateBucket) -> None:
        self.principal = principal
        self.bucket = bucket
        self.ready: dict[bytes, _Reply] = {}


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
        self._callers: dict[bytes, _Caller] = {}
        self._store_generation = -2
        self._store_check_at = 0.0
        self._miss_check_at = 0.0
        self._replies: dict[str, _Reply] = {}  # profile -> reply for its current token
        self._buckets: dict[str, RateBucket] = {}
        # Hooks for ``serve --workers N`` (keycourier.helper.workers); None in one process.
        self.bucket_factory: Callable[[Principal, float], RateBucket] | None = None
        self.metrics_merge: Callable[[], Awaitable[str]] | None = None
        self._vault_cache: dict[str, tuple[float, Principal | None]] = {}
        self.started = time.monotonic()
        self.guard: ConnectionGuard | None = None  # set while serving

    # -- upstream

    async def _fetch(self, profile: Profile) -> Token:
        from keycourier.helper.credentials import load_credentials
        from keycourier.partner.tokens import fetch_token

        loop = asyncio.get_running_loop()
        creds = await loop.run_in_executor(None, load_credentials, profile, self.settings)
        return await fetch_token(profile, creds, session=self.session, clock=self.clock)

    def _issued(self, profile: Profile, token: Token) -> None:
        old = self._replies.pop(profile.name, None)
        if old is not None:
            old.until = 0.0  # keys holding it go back through the cache
        if self.recorder is not None:
            from keycourier.helper.recording import issued_event

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
            from keycourier.helper.recording import handed_out_event

            self.recorder.submit(handed_out_event(principal.name, profile, token))

    def reply(self, profile: Profile, token: Token, now: float) -> _Reply:
        """The rendered reply for ``token``, re-rendered when ``expires_in`` changes."""
        reply = self._replies.get(profile.name)
        if reply is None or reply.token is not token:
            if reply is not None:
                reply.until = 0.0
            reply = self._replies[profile.name] = _Reply(token)
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
                _Bucket(principal.rate, now)
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

    def caller(self, auth: str | None, now: float) -> _Caller | None:
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
        found = _Caller(principal, self._bucket(principal, now))
        # Remember only the one canonical spelling of each key's header ("Bearer KEY"), so
        # the map holds at most one entry per client key however a client spells it.
        canonical = auth.startswith("Bearer ") and auth[7:] == auth[7:].strip()
        if canonical and len(self._callers) < MAX_CALLERS:
            self._callers[digest] = found
        return found

    async def serve_token(self, request: web.Request) -> web.Response:
        """``POST /v1/token``: 401, 429, 413, 400, 403, 404, then a token (or 502/503).

        The common case, a known key asking again for a profile whose current
        token it already got, is one keyed digest, one rate-limit step, two
        dict lookups and a clock comparison; everything else goes through
        ``_token``: parse, scope, cache, render, record the hand-out.
        """
        now_m = time.monotonic()
        auth = request.headers.get(hdrs.AUTHORIZATION)
        if auth is None and self.cfg.vault_policy:
            got = await _guard(self, request, "token")
            if isinstance(got, web.Response):
                return got
            found: _Caller | None = None
            principal = got
        else:
            found = self.caller(auth, now_m)
            if found is None:
                return _unauthorized(self, "token")
            wait = found.bucket.take(now_m)
            if wait is not None:
                return _too_many(self, "token", wait)
            principal = found.principal
        limit = self.cfg.max_body
        content = request.content
        if content.is_eof():  # all of it has arrived (the usual case): no await
            data = content.read_nowait(limit + 1)
            body = data if len(data) <= limit else None
        else:
            try:
                async with asyncio.timeout(self.cfg.limits.body_timeout):
                    body = await _read_body(request, limit)
            except (TimeoutError, ConnectionError):
                return _error(
                    self, "token", 408, "the request body did not arrive in time",
                    {"Connection": "close"},
                )  # fmt: skip
        if body is None:
            return _error(self, "token", 413, f"request body over {limit} bytes")
        if found is not None:
            ready = found.ready.get(body)
            if ready is not None and self.clock() < ready.until:
                self.ready_served += 1
                return web.Response(body=ready.body, headers=_TOKEN_HEADERS)
        return await _token(self, principal, found, body)

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

    # -- metrics

    def metrics_text(self, principal: Principal) -> str:
        """The Prometheus page as ``principal`` may see it.

        Series labelled with a profile appear only for the profiles the
        principal may use; the helper-wide totals name no profile and are
        shown to every client.
        """
        s = self.cache.stats
        lines = [
            "# HELP keycourier_helper_requests_total Requests by route and status.",
            "# TYPE keycourier_helper_requests_total counter",
        ]
        counts = Counter(self.requests)
        if self.token_ok or self.ready_served:
            counts[("token", 200)] += self.token_ok + self.ready_served
        for (route, status), n in sorted(counts.items()):
            lines.append(
                f'keycourier_helper_requests_total{{route="{route}",status="{status}"}} {n}'
            )
        for name, help_text, value in (
            (
                "cache_hits_total",
                "Token requests served from the cache.",
                s.hits + self.ready_served,
            ),
            ("cache_misses_total", "Token requests that waited for the platform.", s.misses),
            ("upstream_calls_total", "Token requests sent to the platform.", s.upstream_calls),
            ("upstream_errors_total", "Failed token refreshes.", s.upstream_errors),
            (
                "handouts_first_total",
                "First hand-out of a token to a client (recorded).",
                self.handouts_first,
            ),
            (
                "handouts_repeat_total",
                "Repeated hand-outs of a token to the same client.",
                self.handouts_repeat + self.ready_served,
            ),
        ):
            lines += [
                f"# HELP keycourier_helper_{name} {help_text}",
                f"# TYPE keycourier_helper_{name} counter",
                f"keycourier_helper_{name} {value}",
            ]
        lines += [
            "# HELP keycourier_helper_token_age_seconds Age of the cached token per profile.",
            "# TYPE keycourier_helper_token_age_seconds gauge",
        ]
        for name, age in sorted(self.cache.token_ages().items()):
            if not principal.allows(name):
                continue  # another client's profile: not even its name
            lines.append(f'keycourier_helper_token_age_seconds{{profile="{name}"}} {age:.3f}')
        if self.guard is not None:
            g = self.guard
            lines += [
                "# HELP keycourier_helper_connections_open Client connections open now.",
                "# TYPE keycourier_helper_connections_open gauge",
                f"keycourier_helper_connections_open {g.open}",
                "# HELP keycourier_helper_connections_closed_total Connections the helper closed "
                "early, by reason.",
                "# TYPE keycourier_helper_connections_closed_total counter",
                f'keycourier_helper_connections_closed_total{{reason="refused"}} {g.refused}',
                f'keycourier_helper_connections_closed_total{{reason="evicted"}} {g.evicted}',
                f'keycourier_helper_connections_closed_total{{reason="timeout"}} {g.timed_out}',
            ]
        if self.recorder is not None:
            lines += [
                "# HELP keycourier_helper_events_pending Provenance events queued for the ledger.",
                "# TYPE keycourier_helper_events_pending gauge",
                f"keycourier_helper_events_pending {self.recorder.pending()}",
                "# HELP keycourier_helper_events_failed_total Events the ledger refused.",
                "# TYPE keycourier_helper_events_failed_total counter",
                f"keycourier_helper_events_failed_total {self.recorder.failed}",
            ]
        return "\n".join(lines) + "\n"


_PROFILE_LABEL = re.compile(r'profile="([^"]*)"')
EVERY_PROFILE = Principal("every-profile", "every-profile", ("*",), 0.0)


def scope_metrics(text: str, principal: Principal) -> str:
    """``text`` (a metrics page of every profile) without the samples of profiles that
    ``principal`` may not use: as ``metrics_text(principal)`` would have drawn it."""
    kept = []
    for line in text.splitlines():
        found = None if line.startswith("#") else _PROFILE_LABEL.search(line)
        if found is None or principal.allows(found.group(1)):
            kept.append(line)
    return "\n".join(kept) + "\n"


class LookupThrottledError(UnavailableError):
    """Too many uncached Vault-token checks right now."""

    def __init__(self, wait: float) -> None:
        super().__init__("too many Vault token checks; retry shortly")
        self.wait = wait


_VAULT_LOOKUPS = Principal("vault-lookups", "vault-lookups", (), VAULT_LOOKUPS_PER_SECOND)

STATE: web.AppKey[HelperState] = web.AppKey("keycourier_helper", HelperState)


def _error(
    state: HelperState,
    route: str,
    status: int,
    reason: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    state.requests[(route, status)] += 1
    return web.Response(
        body=json.dumps({"error": reason}).encode(),
        status=status,
        content_type=JSON_TYPE,
        headers=headers,
    )


_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="keycourier"'}
_TOKEN_HEADERS: Final = CIMultiDict({"Content-Type": JSON_TYPE, "Cache-Control": "no-store"})


async def _guard(state: HelperState, request: web.Request, route: str) -> Principal | web.Response:
    try:
        principal = await state.authenticate(request)
    except LookupThrottledError as exc:
        retry = str(max(1, math.ceil(exc.wait)))
        return _error(state, route, 429, exc.message, {"Retry-After": retry})
    except UnavailableError as exc:
        return _error(state, route, 503, exc.message, {"Retry-After": "5"})
    return _admit(state, principal, route)


def _admit(state: HelperState, principal: Principal | None, route: str) -> Principal | web.Response:
    """401 without a principal, 429 over its rate; else the principal."""
    if principal is None:
        return _unauthorized(state, route)
    wait = state.take(principal)
    if wait is not None:
        return _too_many(state, route, wait)
    return principal


def _unauthorized(state: HelperState, route: str) -> web.Response:
    return _error(state, route, 401, "missing or invalid credentials", _UNAUTHORIZED)


def _too_many(state: HelperState, route: str, wait: float) -> web.Response:
    return _error(
        state, route, 429, "rate limit exceeded", {"Retry-After": str(max(1, math.ceil(wait)))}
    )


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.requests[("healthz", 200)] += 1
    return web.Response(body=b'{"status":"ok"}', content_type=JSON_TYPE)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    got = await _guard(state, request, "metrics")
    if isinstance(got, web.Response):
        return got
    state.requests[("metrics", 200)] += 1
    if state.metrics_merge is not None:  # several worker processes: their sum
        text = scope_metrics(await state.metrics_merge(), got)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")
    return web.Response(text=state.metrics_text(got), content_type="text/plain", charset="utf-8")


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body when it has not all arrived yet, or None (413) when over ``limit``."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    content = request.content
    chunks: list[bytes] = []
    size = 0
    while size <= limit:  # a body may arrive in several pieces
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks) if size <= limit else None


async def _token(
    state: HelperState, principal: Principal, found: _Caller | None, body: bytes
) -> web.Response:
    route = "token"
    name = state.parsed_bodies.get(body)
    if name is None:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(state, route, 400, 'the body must be JSON: {"profile": "NAME"}')
        if (
            not isinstance(doc, dict)
            or set(doc) != {"profile"}
            or not isinstance(doc["profile"], str)
        ):
            return _error(state, route, 400, 'the body must be exactly {"profile": "NAME"}')
        name = doc["profile"]
        if name in state.profiles and len(state.parsed_bodies) < 256:
            state.parsed_bodies[body] = name  # same bytes, same parse: skip json next time
    if not principal.allows(name):
        return _error(state, route, 403, "this client may not use that profile")
    profile = state.profiles.get(name)
    if profile is None:
        return _error(state, route, 404, "no such profile")
    now = state.clock()
    tok = state.cache.fresh(profile, now)
    if tok is None:
        try:
            tok = (await state.cache.get(profile)).token
        except AuthError as exc:
            return _error(
                state, route, 502, f"upstream refused the profile's credentials: {exc.message}"
            )
        except UpstreamUnavailableError as exc:
            headers = (
                {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
                if exc.retry_after
                else None
            )
            return _error(state, route, 503, f"upstream unavailable: {exc.message}", headers)
        except UnavailableError as exc:
            return _error(
                state, route, 503, f"upstream unavailable: {exc.message}", {"Retry-After": "5"}
            )
        except Error as exc:
            return _error(state, route, 502, f"cannot get a token: {exc.message}")
        now = state.clock()
    reply = state.reply(profile, tok, now)
    state.handed_out(principal, name, tok, reply.fingerprint)
    if found is not None and (body in found.ready or len(found.ready) < MAX_READY_BODIES):
        found.ready[body] = reply  # passed the parse and scope checks: next time, sent as is
    state.token_ok += 1
    return web.Response(body=reply.body, headers=_TOKEN_HEADERS)


_ALLOWED: Final = {"/healthz": "GET, HEAD", "/metrics": "GET, HEAD", "/v1/token": "POST"}


async def unrouted(request: web.Request) -> web.Response:
    """Unknown paths (404) and wrong methods (405) answer a JSON error like every route.

    A catch-all route registered last, rather than a middleware, so that the
    hot token route pays nothing for it.
    """
    state = request.app[STATE]
    allowed = _ALLOWED.get(request.path)
    if allowed is not None:
        return _error(state, "unrouted", 405, "method not allowed", {"Allow": allowed})
    return _error(state, "unrouted", 404, "no such endpoint")


def make_app(state: HelperState) -> web.Application:
    app = web.Application(client_max_size=state.cfg.max_body)
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/token", state.serve_token)
    app.router.add_route("*", "/{tail:.*}", unrouted)  # must stay the last route

    async def on_startup(_app: web.Application) -> None:
        import aiohttp

        state.session = aiohttp.ClientSession()

    async def on_cleanup(_app: web.Application) -> None:
        if state.session is not None:
            await state.session.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def _tls_context(cfg: ServerConfig) -> ssl.SSLContext | None:
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the TLS certificate or key ({type(exc).__name__})"
        ) from None
    return ctx


def _prepare_socket(path: Path) -> None:
    if not path.exists():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise UsageError(f"{path} exists and is not a socket")
    import socket as socketlib

    probe = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # stale socket from a previous run
        return
    finally:
        probe.close()
    raise UsageError(f"another helper is already listening on {path}")


def _unix_socket(path: Path) -> socketlib.socket:
    """A Unix stream socket bound at ``path``, mode 0600 from the start."""
    sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


async def _tcp_sockets(host: str, port: int) -> list[socketlib.socket]:
    """Sockets bound to every address of ``host`` (as ``loop.create_server`` would)."""
    loop = asyncio.get_running_loop()
    sockets: list[socketlib.socket] = []
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socketlib.SOCK_STREAM, flags=socketlib.AI_PASSIVE
        )
        seen = set()
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socketlib.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socketlib.SOL_SOCKET, socketlib.SO_REUSEADDR, 1)
            if family == socketlib.AF_INET6:
                sock.setsockopt(socketlib.IPPROTO_IPV6, socketlib.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sockets


def _where(cfg: ServerConfig, sock: socketlib.socket) -> str:
    """How a socket bound by the worker supervisor is announced."""
    if sock.family == socketlib.AF_UNIX:
        return f"unix:{cfg.socket_path}"
    host, port = sock.getsockname()[:2]
    scheme = "https" if cfg.tls_cert else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def _serve(
    state: HelperState,
    announce: Callable[[str], None],
    sock: socketlib.socket | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; ``sock``: a listening socket bound by the worker supervisor."""
    cfg = state.cfg
    app = make_app(state)
    limits = cfg.limits
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=limits.idle_timeout,  # answered and silent this long: closed
        lingering_time=limits.body_timeout,  # an unread body is drained this long at most
    )
    await runner.setup()
    assert runner.server is not None  # noqa: S101 - set by setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    guard: ConnectionGuard | None = None
    try:
        tls = None
        if sock is not None:  # bound (and, at exit, removed) by keycourier.helper.workers
            tls = _tls_context(cfg)
            sockets = [sock]
            where = _where(cfg, sock)
        elif cfg.socket_path is not None:
            _prepare_socket(cfg.socket_path)
            sockets = [_unix_socket(cfg.socket_path)]
            where = f"unix:{cfg.socket_path}"
        else:
            assert cfg.host is not None  # noqa: S101 - set for TCP by server_config
            tls = _tls_context(cfg)
            sockets = await _tcp_sockets(cfg.host, cfg.port)
            port = sockets[0].getsockname()[1] if sockets else cfg.port
            scheme = "https" if cfg.tls_cert else "http"
            host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
            where = f"{scheme}://{host}:{port}"
        guard = state.guard = ConnectionGuard(limits, runner.server, ssl=tls, report=_warn)
        guard.serve(sockets)
        gc.collect()
        gc.freeze()  # start-up objects never need collecting: cheaper GC passes per request
        announce(where)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if guard is not None:
            await guard.stop()  # no new connections; runner.cleanup() ends the open ones
        await runner.cleanup()
        if cfg.socket_path is not None and sock is None:
            with contextlib.suppress(FileNotFoundError):
                cfg.socket_path.unlink()


def _warn(message: str) -> None:
    sys.stderr.write(f"keycourier: warning: {message}\n")


def run(
    settings: Settings, cfg: ServerConfig, *, announce: Callable[[str], None]
) -> dict[str, int]:
    """Serve until SIGINT/SIGTERM; drain the recorder; return a summary."""
    from keycourier.helper.recording import BatchRecorder, open_recorder
    from keycourier.partner.profiles import load_profiles

    profiles = load_profiles(settings.profiles, settings.config_path)
    if not profiles:
        raise ConfigError(
            "no profiles configured", hints=["add a [profiles.NAME] table (docs/token-helper.md)"]
        )
    from keycourier.helper.clients import default_store_path

    store = ClientStore(default_store_path(settings))
    store.refresh(max_age=0)  # fail now on a malformed or world-readable store

    def report(message: str) -> None:
        sys.stderr.write(f"keycourier: warning: {message}\n")

    recorder = BatchRecorder(lambda: open_recorder(settings), on_error=report)
    state = HelperState(settings, profiles, store, cfg, recorder=recorder)
    try:
        asyncio.run(_serve(state, announce))
    finally:
        recorder.close()
    return {
        "recorded": recorder.recorded,
        "failed": recorder.failed,
        "upstream_calls": state.cache.stats.upstream_calls,
    }
