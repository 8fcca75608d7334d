"""A local stand-in for the platform's accounting-connection API (test and demo code).

It follows the documented contract (``docs/platform-apis.md`` 1.3 and 1.5), for both
dialects at once:

* Monite: ``/v1/accounting_connections`` with ``x-monite-version`` and
  ``x-monite-entity-id``;
* Tesouro: ``/v1/accounting-connections`` with ``x-finops-version`` (or
  ``x-tesouro-version``) and ``x-organization-id``.

Every call needs ``Authorization: Bearer <token>``; tokens are checked by a
validator (a fixed set compared in constant time, or the auth stand-in's
issued tokens when both are composed, see ``make_platform_app``).

The state machine: ``POST`` creates a connection in ``pending_auth`` (201);
only one active (not ``disconnected``) connection per entity, a second
``POST`` gets an undocumented-style 4xx ``{"error": {"message": ...}}``;
opening the ``connection_url`` (``GET /v1/standin/authorize/{id}?state=...``)
or ``ConnectionsState.authorize()`` simulates the entity user authorizing,
giving ``connected`` with ``platform`` set; ``.../disconnect`` gives
``disconnected``; ``deauthorize()`` and ``report_error()`` simulate the user
withdrawing access and the aggregator reporting a problem.

Errors follow the documented shapes: 400 ``missing_api_version``, 401,
404, 422 ``HTTPValidationError``, and 429 with ``Retry-After`` (injected with
``inject``). Every reply carries the rate-limit headers and echoes the
version header.

Run it on its own (127.0.0.1 only; ``--port 0`` picks a free port)::

    python -m tests.support.connections_standin --port 0 --write-token TOKENFILE
    python -m tests.support.connections_standin --port 0 --clients-file clients.json

The first accepts the bearer tokens in ``--tokens-file`` / the fresh one it
writes (0600) to ``--write-token``. The second also serves the token
stand-in's routes (``tests/support/platform_standin.py``: Monite
``/v1/auth/token``, Tesouro ``/openid/connect/token``) for the client IDs and
secrets in the JSON file, and accepts the tokens they issue, so keycourier's
token helper and ``keycourier connection`` work end to end. Both print
``url=http://127.0.0.1:PORT/v1`` (a Monite profile's ``base_url``) and
``root=http://127.0.0.1:PORT`` (a Tesouro profile's) on stdout, then serve
until SIGINT/SIGTERM.

In tests: ``start_standin(state)`` (connections only) or
``start_platform(clients)`` (composed) run it on 127.0.0.1, port 0, in a
background thread; ``.stop()`` ends it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
PLATFORMS = ("xero", "quickbooks_online", "quickbooks_online_sandbox", "quickbooks")
PREFIX = "/v1"


@dataclass(frozen=True, slots=True)
class DialectRules:
    name: str
    path: str
    version_headers: tuple[str, ...]
    scope_header: str


MONITE = DialectRules(
    "monite", "/accounting_connections", ("x-monite-version",), "x-monite-entity-id"
)
TESOURO = DialectRules(
    "tesouro",
    "/accounting-connections",
    ("x-finops-version", "x-tesouro-version"),
    "x-organization-id",
)


@dataclass
class StandinConnection:
    id: str
    dialect: str
    scope_id: str
    created_at: datetime
    updated_at: datetime
    nonce: str
    status: str = "pending_auth"
    platform: str | None = None
    errors: list[str] = field(default_factory=list)
    last_pull: datetime | None = None

    def to_json(self, base_url: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "connection_url": f"{base_url}/standin/authorize/{self.id}?state={self.nonce}",
            "business_info": None,
            "errors": [{"message": m} for m in self.errors] or None,
            "last_pull": _iso(self.last_pull) if self.last_pull else None,
            "platform": self.platform,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class SeenRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names; Authorization reduced to its scheme
    body: bytes


@dataclass
class Fault:
    status: int
    body: Any
    headers: Mapping[str, str]
    times: int
    method: str | None
    path_contains: str | None
    delay: float = 0.0  # seconds to stall before answering


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC)


class ConnectionsState:
    """The stand-in's data, shared by the server thread and the test (locked)."""

    def __init__(
        self,
        *,
        accepted_tokens: Iterable[str] = (),
        token_validator: Callable[[str], bool] | None = None,
        token_lookup: Callable[[str], str] | None = None,
        already_exists_status: int = 400,
        default_platform: str = "xero",
    ) -> None:
        self._lock = threading.Lock()
        self._tokens = [t.encode() for t in accepted_tokens]
        self._validator = token_validator
        self._lookup = token_lookup  # "valid" | "expired" | "unknown" (the auth stand-in's)
        self.already_exists_status = already_exists_status
        self.default_platform = default_platform
        self.connections: dict[str, StandinConnection] = {}
        self.requests: list[SeenRequest] = []
        self._faults: list[Fault] = []
        self.base_url = "http://127.0.0.1"  # set by start_standin / the runner

    # -- tokens

    def accept_token(self, token: str) -> None:
        with self._lock:
            self._tokens.append(token.encode())

    def revoke_token(self, token: str) -> None:
        with self._lock:
            self._tokens = [t for t in self._tokens if not hmac.compare_digest(t, token.encode())]

    def token_ok(self, token: str) -> bool:
        return self.token_status(token) == "valid"

    def token_status(self, token: str) -> str:
        """ "valid", "expired" or "unknown"."""
        with self._lock:
            fixed = any(hmac.compare_digest(t, token.encode()) for t in self._tokens)
        if fixed:
            return "valid"
        if self._lookup is not None:
            return self._lookup(token)
        if self._validator is not None and self._validator(token):
            return "valid"
        return "unknown"

    # -- the simulated world

    def authorize(self, connection_id: str, platform: str | None = None) -> None:
        """The entity user completes the authorization at the connection_url."""
        with self._lock:
            conn = self.connections[connection_id]
            if conn.status != "pending_auth":
                raise ValueError(f"connection is {conn.status}, not pending_auth")
            conn.status = "connected"
            conn.platform = platform or self.default_platform
            conn.updated_at = conn.last_pull = _now()

    def deauthorize(self, connection_id: str) -> None:
        with self._lock:
            conn = self.connections[connection_id]
            conn.status = "deauthorized"
            conn.updated_at = _now()

    def report_error(self, connection_id: str, message: str) -> None:
        with self._lock:
            conn = self.connections[connection_id]
            conn.errors.append(message)
            conn.updated_at = _now()

    def inject(
        self,
        status: int,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        method: str | None = None,
        path_contains: str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``times`` matching calls with this reply instead (after ``delay`` s)."""
        with self._lock:
            self._faults.append(
                Fault(status, body, dict(headers or {}), times, method, path_contains, delay)
            )

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method not in (None, method):
                    continue
                if fault.path_contains is not None and fault.path_contains not in path:
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def status_of(self, connection_id: str) -> str:
        with self._lock:
            return self.connections[connection_id].status

    def of_scope(self, dialect: str, scope_id: str) -> list[StandinConnection]:
        with self._lock:
            return [
                c
                for c in self.connections.values()
                if c.dialect == dialect and c.scope_id == scope_id
            ]

    def record(self, req: SeenRequest) -> None:
        with self._lock:
            self.requests.append(req)


# --------------------------------------------------------------------------- HTTP


def _error(status: int, message: str, kind: str | None = None) -> web.Response:
    from aiohttp import web

    err: dict[str, Any] = {"message": message}
    if kind:
        err["type"] = kind
    return web.json_response({"error": err}, status=status)


def _invalid(loc: list[str], msg: str, kind: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"detail": [{"loc": loc, "msg": msg, "type": kind}]}, status=422)


def _seen(request: web.Request, body: bytes) -> SeenRequest:
    headers = {k.lower(): v for k, v in request.headers.items()}
    if "authorization" in headers:
        headers["authorization"] = headers["authorization"].split(" ", 1)[0] + " ****"
    return SeenRequest(request.method, request.path, headers, body)


def connection_routes(state: ConnectionsState) -> list[web.RouteDef]:
    """The connection endpoints of both dialects plus the simulated authorization page."""
    from aiohttp import web

    def check(rules: DialectRules, request: web.Request) -> tuple[str | None, web.Response | None]:
        """Returns (scope_id, None) or (None, error reply)."""
        version_name = next((h for h in rules.version_headers if h in request.headers), None)
        if version_name is None:
            return None, _error(
                400, f"Missing the {rules.version_headers[0]} HTTP header", "missing_api_version"
            )
        if not DATE_RE.match(request.headers[version_name]):
            return None, _invalid(
                ["header", version_name], "invalid date format", "value_error.date"
            )
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        status = state.token_status(token) if scheme == "Bearer" and token else "unknown"
        if status == "expired" and rules is TESOURO:
            # Tesouro answers an expired token with 400 (docs/platform-apis.md 1.5).
            return None, _error(400, "The token has been expired.")
        if status != "valid":
            return None, _error(401, "Invalid or expired token")
        scope = request.headers.get(rules.scope_header)
        if scope is None:
            return None, _invalid(["header", rules.scope_header], "field required", "missing")
        if not UUID_RE.match(scope):
            return None, _invalid(
                ["header", rules.scope_header], "value is not a valid uuid", "type_error.uuid"
            )
        return scope.lower(), None

    def finish(rules: DialectRules, request: web.Request, resp: web.Response) -> web.Response:
        for name in rules.version_headers:
            if name in request.headers:
                resp.headers[name] = request.headers[name]
        resp.headers["RateLimit-Limit"] = "30"
        resp.headers["RateLimit-Remaining"] = "29"
        resp.headers["RateLimit-Reset"] = "1"
        resp.headers["X-RateLimit-Limit-Second"] = "30"
        resp.headers["X-RateLimit-Remaining-Second"] = "29"
        resp.headers["x-request-id"] = secrets.token_hex(8)
        return resp

    def handler(
        rules: DialectRules,
        action: Callable[[DialectRules, str, web.Request, bytes], web.Response],
    ) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.content.read(64 * 1024)
            state.record(_seen(request, body))
            fault = state.take_fault(request.method, request.path)
            if fault is not None:
                if fault.delay > 0:
                    await asyncio.sleep(fault.delay)
                resp = web.json_response(fault.body, status=fault.status, headers=fault.headers)
                return finish(rules, request, resp)
            scope, err = check(rules, request)
            if err is not None:
                return finish(rules, request, err)
            assert scope is not None
            return finish(rules, request, action(rules, scope, request, body))

        return handle

    def listing(rules: DialectRules, scope: str, request: web.Request, body: bytes) -> web.Response:
        data = [c.to_json(state.base_url) for c in state.of_scope(rules.name, scope)]
        return web.json_response({"data": data})

    def create(rules: DialectRules, scope: str, request: web.Request, body: bytes) -> web.Response:
        platform = None
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError:
                return _invalid(["body"], "JSON decode error", "value_error.jsondecode")
            if not isinstance(doc, dict):
                return _invalid(["body"], "value is not a valid dict", "type_error.dict")
            extra = set(doc) - {"platform"}
            if extra:
                name = sorted(extra)[0]
                return _invalid(["body", name], "extra fields not permitted", "value_error.extra")
            if "platform" in doc and doc["platform"] not in PLATFORMS:
                return _invalid(
                    ["body", "platform"],
                    "value is not a valid enumeration member; permitted: " + ", ".join(PLATFORMS),
                    "type_error.enum",
                )
            platform = doc.get("platform")
        if any(c.status != "disconnected" for c in state.of_scope(rules.name, scope)):
            return _error(
                state.already_exists_status,
                "The entity already has an active accounting connection",
            )
        now = _now()
        conn = StandinConnection(
            id=str(uuid.uuid4()),
            dialect=rules.name,
            scope_id=scope,
            created_at=now,
            updated_at=now,
            nonce=secrets.token_urlsafe(16),
            platform=platform,
        )
        with state._lock:
            state.connections[conn.id] = conn
        return web.json_response(conn.to_json(state.base_url), status=201)

    def find(rules: DialectRules, scope: str, request: web.Request) -> StandinConnection | None:
        cid = request.match_info["cid"].lower()
        conn = state.connections.get(cid)
        if conn is None or conn.dialect != rules.name or conn.scope_id != scope:
            return None
        return conn

    def get_one(rules: DialectRules, scope: str, request: web.Request, body: bytes) -> web.Response:
        if not UUID_RE.match(request.match_info["cid"]):
            return _invalid(
                ["path", "connection_id"], "value is not a valid uuid", "type_error.uuid"
            )
        conn = find(rules, scope, request)
        if conn is None:
            return _error(404, "Accounting connection not found")
        return web.json_response(conn.to_json(state.base_url))

    def disconnect(
        rules: DialectRules, scope: str, request: web.Request, body: bytes
    ) -> web.Response:
        if not UUID_RE.match(request.match_info["cid"]):
            return _invalid(
                ["path", "connection_id"], "value is not a valid uuid", "type_error.uuid"
            )
        conn = find(rules, scope, request)
        if conn is None:
            return _error(404, "Accounting connection not found")
        with state._lock:
            conn.status = "disconnected"
            conn.updated_at = _now()
        return web.json_response(conn.to_json(state.base_url))

    async def authorize_page(request: web.Request) -> web.Response:
        cid = request.match_info["cid"].lower()
        conn = state.connections.get(cid)
        nonce = request.query.get("state", "")
        if conn is None or not hmac.compare_digest(conn.nonce.encode(), nonce.encode()):
            return web.Response(status=404, text="unknown authorization link\n")
        platform = request.query.get("platform") or state.default_platform
        if platform not in PLATFORMS:
            return web.Response(status=400, text="unknown platform\n")
        try:
            state.authorize(cid, platform)
        except ValueError as exc:
            return web.Response(status=409, text=f"{exc}\n")
        return web.Response(text=f"connected to {platform}\n")

    routes: list[web.RouteDef] = []
    for rules in (MONITE, TESOURO):
        base = PREFIX + rules.path
        routes += [
            web.get(base, handler(rules, listing)),
            web.post(base, handler(rules, create)),
            web.get(base + "/{cid}", handler(rules, get_one)),
            web.post(base + "/{cid}/disconnect", handler(rules, disconnect)),
        ]
    routes.append(web.get(PREFIX + "/standin/authorize/{cid}", authorize_page))
    return routes


def make_app(state: ConnectionsState) -> web.Application:
    """The connections stand-in alone (tokens: ``state``'s fixed set / validator)."""
    from aiohttp import web

    app = web.Application(client_max_size=64 * 1024)
    app.add_routes(connection_routes(state))
    return app


# --------------------------------------------------------------------------- running


@dataclass
class RunningStandin:
    url: str  # the profile base URL, ending in /v1
    port: int
    state: ConnectionsState
    _loop: asyncio.AbstractEventLoop
    _thread: threading.Thread
    _stop: Callable[[], None]

    def stop(self) -> None:
        self._stop()


def start_app_in_thread(
    app_factory: Callable[[], web.Application], *, host: str = "127.0.0.1", port: int = 0
) -> tuple[int, asyncio.AbstractEventLoop, threading.Thread, Callable[[], None]]:
    """Serve an aiohttp app from a daemon thread; returns (port, loop, thread, stop)."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def boot() -> None:
        runner = web.AppRunner(app_factory(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(boot())
        except Exception as exc:  # noqa: BLE001 - reported to the starting thread
            holder["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(holder["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="standin", daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in holder:
        raise RuntimeError(f"stand-in did not start: {holder['error']!r}")
    if "port" not in holder:
        raise RuntimeError("stand-in did not start in time")

    def stop() -> None:
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)

    return int(holder["port"]), loop, thread, stop


def start_standin(
    state: ConnectionsState | None = None,
    *,
    app_factory: Callable[[ConnectionsState], web.Application] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> RunningStandin:
    """Start the stand-in on loopback (port 0: a free one). Call ``.stop()`` when done."""
    state = state if state is not None else ConnectionsState()
    factory = app_factory or make_app
    bound, loop, thread, stop = start_app_in_thread(lambda: factory(state), host=host, port=port)
    state.base_url = f"http://{host}:{bound}{PREFIX}"
    return RunningStandin(state.base_url, bound, state, loop, thread, stop)


@dataclass
class RunningPlatform:
    """The token stand-in and the connection stand-in in one app on one port."""

    root: str  # http://127.0.0.1:PORT: the Tesouro profile's base_url
    auth: Any  # tests.support.platform_standin.StandinState
    connections: ConnectionsState
    _running: RunningStandin

    @property
    def monite_base(self) -> str:
        """The Monite profile's base_url (its token route is /v1/auth/token)."""
        return self.root + PREFIX

    def stop(self) -> None:
        self._running.stop()


def make_platform_app(auth_state: Any, state: ConnectionsState) -> web.Application:
    """The token stand-in's routes (``platform_standin.make_app``) plus the connection routes.

    Bearer tokens on the connection routes are the ones the token stand-in
    issued (``auth_state.lookup``): unknown gives 401, expired gives 401
    (Monite) or 400 "The token has been expired." (Tesouro).
    """
    from tests.support import platform_standin

    state._lookup = auth_state.lookup
    app = platform_standin.make_app(auth_state)
    app.add_routes(connection_routes(state))
    return app


def start_platform(clients: Mapping[str, str], *, port: int = 0) -> RunningPlatform:
    """Start the composed platform stand-in on 127.0.0.1 for these client credentials."""
    from tests.support import platform_standin

    auth_state = platform_standin.StandinState(clients=dict(clients))
    state = ConnectionsState()
    running = start_standin(
        state, app_factory=lambda st: make_platform_app(auth_state, st), port=port
    )
    return RunningPlatform(running.url.removesuffix(PREFIX), auth_state, state, running)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m tests.support.connections_standin",
        description="Run the accounting-connection stand-in on loopback (test/demo only).",
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--tokens-file",
        help="file with the accepted bearer tokens, one a line (default: a fresh one is "
        "generated and written to --write-token)",
    )
    parser.add_argument("--write-token", help="write a generated token to this file (0600)")
    parser.add_argument(
        "--clients-file",
        help='JSON {"client_id": "client_secret"}: also serve the token endpoints '
        "(tests/support/platform_standin.py) and accept the tokens they issue",
    )
    args = parser.parse_args(argv)
    tokens: list[str] = []
    if args.tokens_file:
        with open(args.tokens_file, encoding="utf-8") as fh:
            tokens = [line.strip() for line in fh if line.strip()]
    if args.write_token:
        import os

        token = "standin-" + secrets.token_urlsafe(24)
        fd = os.open(args.write_token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        tokens.append(token)
    if not tokens and not args.clients_file:
        parser.error("give --clients-file, --tokens-file or --write-token")
    running: RunningStandin | RunningPlatform
    if args.clients_file:
        with open(args.clients_file, encoding="utf-8") as fh:
            clients = json.load(fh)
        platform = start_platform(clients, port=args.port)
        for token in tokens:
            platform.connections.accept_token(token)
        running = platform
        url = platform.monite_base
    else:
        running = start_standin(ConnectionsState(accepted_tokens=tokens), port=args.port)
        url = running.url
    sys.stdout.write(f"url={url}\nroot={url.removesuffix(PREFIX)}\n")
    sys.stdout.flush()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    while not done.wait(1.0):
        pass
    running.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
