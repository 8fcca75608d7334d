"""A local stand-in of the platform's token endpoints (test and demo code, never production).

It follows the documented contracts (``docs/platform-apis.md`` 1.2 and 1.5):

* Monite ``POST /v1/auth/token`` (profile ``base_url`` = ``{url}/v1``): JSON
  body, ``additionalProperties: false`` (an extra field, a non-UUID
  ``client_id``, a missing field or a wrong ``grant_type`` gives 422 with a
  FastAPI ``HTTPValidationError`` body); a missing ``x-monite-version`` gives
  400 ``{"error":{"type":"missing_api_version","message":"Missing the
  x-monite-version HTTP header"}}``; wrong credentials give 401
  ``{"error":{"message":...}}``; ``expires_in`` is ``state.monite_lifetime``
  (1800 as in the setup guides, or 86400 as in the API reference).
* Tesouro ``POST /openid/connect/token`` (profile ``base_url`` = ``{url}``):
  form-encoded ``grant_type=client_credentials&client_id=..&client_secret=..``,
  a JWT-shaped token, ``expires_in`` 3600; ``GET /v1/standin/whoami`` with
  ``Authorization: Bearer`` answers 200, or 400 ``{"error":{"message":"The
  token has been expired."}}`` for an expired token, or 401.

Every reply carries ``x-request-id``, the rate-limit headers
(``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset``,
``X-RateLimit-Limit-Second``, ``X-RateLimit-Remaining-Second``) and echoes
the version header. Faults are queued with ``state.inject(status, ...)``
(for example 429 with ``Retry-After``, or 503), and ``state.delay`` slows the
token route down (to widen races in single-flight tests).

Stable API (the connections tests compose on it):

* ``StandinState(clients={client_id: secret})``: thread-safe; ``issued``
  maps every issued token to an ``IssuedToken``; ``token_calls`` counts
  token requests that reached the handler; ``is_valid(token)`` checks a
  bearer token (constant time, unexpired); ``inject()``; ``lock``.
* ``make_app(state) -> aiohttp.web.Application``: add more routes to it
  before starting (``app.router.add_get(...)``); ``app[STATE_KEY]`` is the state.
* ``start_standin(state, app=None) -> RunningStandin``: runs the app on
  127.0.0.1 port 0 in a background thread with its own loop;
  ``.url`` (``http://127.0.0.1:PORT``), ``.port``, ``.stop()``.

Run it on its own::

    python -m tests.support.platform_standin --clients-file clients.json

prints ``url=http://127.0.0.1:PORT`` and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MONITE_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TOKEN_FIELDS = {"grant_type", "client_id", "client_secret", "entity_user_id"}
EXPIRED_BODY = {"error": {"message": "The token has been expired."}}
MISSING_VERSION_BODY = {
    "error": {"type": "missing_api_version", "message": "Missing the x-monite-version HTTP header"}
}


@dataclass(frozen=True)
class IssuedToken:
    token: str
    client_id: str
    dialect: str  # "monite" or "tesouro"
    issued_at: float
    expires_at: float


@dataclass
class Fault:
    status: int
    retry_after: str | None = None
    body: dict[str, Any] | None = None


@dataclass
class StandinState:
    clients: dict[str, str] = field(default_factory=dict)  # client_id -> secret
    monite_lifetime: int = 1800
    tesouro_lifetime: int = 3600
    delay: float = 0.0
    rate_limit: int = 30
    token_suffix: str = ""  # appended to Monite tokens (e.g. "+/=" to exercise URL encoding)
    clock: Callable[[], float] = time.time
    issued: dict[str, IssuedToken] = field(default_factory=dict)
    token_calls: int = 0
    requests: list[dict[str, Any]] = field(
        default_factory=list
    )  # headers/body seen (no secrets kept)
    faults: deque[Fault] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(
        self,
        status: int,
        *,
        count: int = 1,
        retry_after: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        with self.lock:
            for _ in range(count):
                self.faults.append(Fault(status, retry_after, body))

    def _next_fault(self) -> Fault | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def _check_client(self, client_id: str, secret: str) -> bool:
        expected = self.clients.get(client_id)
        ok = hmac.compare_digest((expected or "\x00").encode(), secret.encode())
        return expected is not None and ok

    def _issue(self, client_id: str, dialect: str, lifetime: int) -> IssuedToken:
        if dialect == "tesouro":
            header = _b64({"alg": "RS256", "typ": "JWT"})
            payload = _b64(
                {"sub": client_id, "exp": int(self.clock()) + lifetime, "jti": secrets.token_hex(8)}
            )
            token = f"{header}.{payload}.{secrets.token_urlsafe(32)}"
        else:
            token = secrets.token_urlsafe(32) + self.token_suffix
        now = self.clock()
        issued = IssuedToken(token, client_id, dialect, now, now + lifetime)
        with self.lock:
            self.issued[token] = issued
        return issued

    def is_valid(self, token: str) -> bool:
        return self.lookup(token) == "valid"

    def lookup(self, token: str) -> str:
        """ "valid", "expired" or "unknown" (constant-time over the issued set)."""
        with self.lock:
            candidates = list(self.issued.values())
        found: IssuedToken | None = None
        for item in candidates:
            if hmac.compare_digest(item.token.encode(), token.encode()):
                found = item
        if found is None:
            return "unknown"
        return "valid" if self.clock() < found.expires_at else "expired"


def _b64(doc: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


STATE_KEY: web.AppKey[StandinState] = web.AppKey("standin_state", StandinState)


def _headers(state: StandinState, request: web.Request, version_header: str) -> dict[str, str]:
    headers = {
        "x-request-id": str(uuid.uuid4()),
        "RateLimit-Limit": str(state.rate_limit),
        "RateLimit-Remaining": str(state.rate_limit - 1),
        "RateLimit-Reset": "1",
        "X-RateLimit-Limit-Second": str(state.rate_limit),
        "X-RateLimit-Remaining-Second": str(state.rate_limit - 1),
    }
    version = request.headers.get(version_header)
    if version is not None:
        headers[version_header] = version
    return headers


def _validation(loc: list[str], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}


async def _prelude(
    state: StandinState, request: web.Request, version_header: str
) -> web.Response | None:
    with state.lock:
        state.token_calls += 1
        state.requests.append(
            {
                "path": request.path,
                "content_type": request.content_type,
                "headers": {
                    k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"
                },
                "has_basic": request.headers.get("authorization", "").startswith("Basic "),
            }
        )
    if state.delay:
        await asyncio.sleep(state.delay)
    fault = state._next_fault()
    if fault is None:
        return None
    headers = _headers(state, request, version_header)
    if fault.retry_after is not None:
        headers["Retry-After"] = fault.retry_after
    body = fault.body or {"error": {"message": f"injected HTTP {fault.status}"}}
    return web.json_response(body, status=fault.status, headers=headers)


async def monite_token(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    vh = "x-monite-version"
    early = await _prelude(state, request, vh)
    if early is not None:
        return early
    headers = _headers(state, request, vh)
    version = request.headers.get(vh)
    if version is None:
        return web.json_response(MISSING_VERSION_BODY, status=400, headers=headers)
    if not MONITE_VERSION_RE.match(version):
        return web.json_response(
            {"error": {"type": "invalid_api_version", "message": "Invalid x-monite-version"}},
            status=400,
            headers=headers,
        )
    raw = await request.read()
    try:
        doc = json.loads(raw) if request.content_type == "application/json" else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return web.json_response(
            {"detail": [_validation(["body"], "Input should be a valid dictionary", "dict_type")]},
            status=422,
            headers=headers,
        )
    errors = [
        _validation(["body", key], "Extra inputs are not permitted", "extra_forbidden")
        for key in sorted(set(doc) - TOKEN_FIELDS)
    ]
    errors.extend(
        _validation(["body", key], "Field required", "missing")
        for key in ("grant_type", "client_id", "client_secret")
        if key not in doc
    )
    if "grant_type" in doc and doc["grant_type"] not in ("client_credentials", "entity_user"):
        errors.append(
            _validation(
                ["body", "grant_type"],
                "Input should be 'client_credentials' or 'entity_user'",
                "enum",
            )
        )
    cid = doc.get("client_id")
    if "client_id" in doc:
        try:
            uuid.UUID(str(cid))
        except ValueError:
            errors.append(
                _validation(["body", "client_id"], "Input should be a valid UUID", "uuid_parsing")
            )
    if "client_secret" in doc and not isinstance(doc["client_secret"], str):
        errors.append(
            _validation(["body", "client_secret"], "Input should be a valid string", "string_type")
        )
    if errors:
        return web.json_response({"detail": errors}, status=422, headers=headers)
    if not state._check_client(str(cid), str(doc["client_secret"])):
        return web.json_response(
            {"error": {"message": "Invalid client credentials"}}, status=401, headers=headers
        )
    issued = state._issue(str(cid), "monite", state.monite_lifetime)
    return web.json_response(
        {"access_token": issued.token, "token_type": "Bearer", "expires_in": state.monite_lifetime},
        headers=headers,
    )


async def tesouro_token(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    vh = "x-tesouro-version"
    early = await _prelude(state, request, vh)
    if early is not None:
        return early
    headers = _headers(state, request, vh)
    if "x-finops-version" in request.headers:
        headers["x-finops-version"] = request.headers["x-finops-version"]
    if request.content_type != "application/x-www-form-urlencoded":
        return web.json_response(
            {"error": {"message": "Content-Type must be application/x-www-form-urlencoded"}},
            status=400,
            headers=headers,
        )
    form = await request.post()
    grant = form.get("grant_type")
    cid = form.get("client_id")
    secret = form.get("client_secret")
    if grant != "client_credentials":
        return web.json_response(
            {"error": {"message": "unsupported_grant_type"}}, status=400, headers=headers
        )
    if not isinstance(cid, str) or not isinstance(secret, str):
        return web.json_response(
            {"error": {"message": "client_id and client_secret are required"}},
            status=400,
            headers=headers,
        )
    if not state._check_client(cid, secret):
        return web.json_response(
            {"error": {"message": "Invalid client credentials"}}, status=401, headers=headers
        )
    issued = state._issue(cid, "tesouro", state.tesouro_lifetime)
    return web.json_response(
        {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": state.tesouro_lifetime,
        },
        headers=headers,
    )


async def whoami(request: web.Request) -> web.Response:
    """A protected resource: 200 for a valid token, 400 expired (Tesouro's body), 401 otherwise."""
    state = request.app[STATE_KEY]
    auth = request.headers.get("authorization", "")
    token = auth[7:] if auth.startswith("Bearer ") else ""
    status = state.lookup(token) if token else "unknown"
    if status == "expired":
        return web.json_response(EXPIRED_BODY, status=400)
    if status == "unknown":
        return web.json_response({"error": {"message": "Unauthorized"}}, status=401)
    return web.json_response({"ok": True})


def make_app(state: StandinState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[STATE_KEY] = state
    app.router.add_post("/v1/auth/token", monite_token)
    app.router.add_post("/openid/connect/token", tesouro_token)
    app.router.add_get("/v1/standin/whoami", whoami)
    return app


class RunningStandin:
    """The stand-in on 127.0.0.1, in a daemon thread with its own event loop."""

    def __init__(self, state: StandinState, app: web.Application | None = None) -> None:
        self.state = state
        self._app = app or make_app(state)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="platform-standin", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the platform stand-in did not start")
        if self._error is not None:
            raise RuntimeError("the platform stand-in failed to start") from self._error

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - surfaced in __init__
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None)
        assert sockets
        self.port = int(sockets[0].getsockname()[1])

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def _cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        fut = asyncio.run_coroutine_threadsafe(_cleanup(), self._loop)
        fut.result(timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=15)

    def __enter__(self) -> RunningStandin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_standin(state: StandinState, app: web.Application | None = None) -> RunningStandin:
    return RunningStandin(state, app)


def main() -> None:  # pragma: no cover - manual/demo use
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(description="platform token stand-in (test/demo only)")
    parser.add_argument("--clients-file", required=True, help='JSON {"client_id": "secret"}')
    parser.add_argument("--monite-lifetime", type=int, default=1800)
    args = parser.parse_args()
    with open(args.clients_file, encoding="utf-8") as fh:
        clients = json.load(fh)
    state = StandinState(clients=dict(clients), monite_lifetime=args.monite_lifetime)
    running = start_standin(state)
    sys.stdout.write(f"url={running.url}\n")
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    running.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
