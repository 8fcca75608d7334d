"""The token helper's HTTP routes: the aiohttp application that ``keycourier serve`` runs.

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
``Retry-After`` when known). Tokens live in memory only
(``keycourier.helper.state``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections.abc import Mapping
from typing import Final

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from keycourier.errors import AuthError, Error, UnavailableError
from keycourier.helper.metrics import metrics_text, scope_metrics
from keycourier.helper.principals import Principal
from keycourier.helper.state import Caller, HelperState, LookupThrottledError
from keycourier.partner.tokens import UpstreamUnavailableError

JSON_TYPE: Final = "application/json"
MAX_READY_BODIES: Final = 16  # per key: distinct request bodies with a ready reply

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
    return web.Response(text=metrics_text(state, got), content_type="text/plain", charset="utf-8")


async def serve_token(state: HelperState, request: web.Request) -> web.Response:
    """``POST /v1/token``: 401, 429, 413, 400, 403, 404, then a token (or 502/503).

    The common case, a known key asking again for a profile whose current
    token it already got, is one keyed digest, one rate-limit step, two
    dict lookups and a clock comparison; everything else goes through
    ``_token``: parse, scope, cache, render, record the hand-out.
    """
    now_m = time.monotonic()
    auth = request.headers.get(hdrs.AUTHORIZATION)
    if auth is None and state.cfg.vault_policy:
        got = await _guard(state, request, "token")
        if isinstance(got, web.Response):
            return got
        found: Caller | None = None
        principal = got
    else:
        found = state.caller(auth, now_m)
        if found is None:
            return _unauthorized(state, "token")
        wait = found.bucket.take(now_m)
        if wait is not None:
            return _too_many(state, "token", wait)
        principal = found.principal
    limit = state.cfg.max_body
    content = request.content
    if content.is_eof():  # all of it has arrived (the usual case): no await
        data = content.read_nowait(limit + 1)
        body = data if len(data) <= limit else None
    else:
        try:
            async with asyncio.timeout(state.cfg.limits.body_timeout):
                body = await _read_body(request, limit)
        except (TimeoutError, ConnectionError):
            return _error(
                state, "token", 408, "the request body did not arrive in time",
                {"Connection": "close"},
            )  # fmt: skip
    if body is None:
        return _error(state, "token", 413, f"request body over {limit} bytes")
    if found is not None:
        ready = found.ready.get(body)
        if ready is not None and state.clock() < ready.until:
            state.ready_served += 1
            return web.Response(body=ready.body, headers=_TOKEN_HEADERS)
    return await _token(state, principal, found, body)


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
    state: HelperState, principal: Principal, found: Caller | None, body: bytes
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
    app.router.add_post("/v1/token", functools.partial(serve_token, state))
    app.router.add_route("*", "/{tail:.*}", unrouted)  # must stay the last route

    async def on_startup(_app: web.Application) -> None:
        state.session = aiohttp.ClientSession()

    async def on_cleanup(_app: web.Application) -> None:
        if state.session is not None:
            await state.session.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
