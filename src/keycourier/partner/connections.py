"""Accounting connections on the platform, in the Monite and the Tesouro dialects.

After the partner's QuickBooks/Xero keys are handed over, the platform's setup
guide has the partner create one accounting connection per entity (Monite) or
organization (Tesouro), give the returned ``connection_url`` to the entity's
user, and wait until the connection's ``status`` is ``connected`` with its
``platform`` set. Facts: ``docs/platform-apis.md`` sections 1.2, 1.3 and 1.5.

Layers, from the outside in:

* ``parse_*``: one strict, size-limited parser per thing the platform sends
  (a connection object, a list reply, an error body). After parsing, values
  are trusted: IDs are canonical UUIDs, URLs are http(s) without control
  characters, every text is printable and bounded.
* ``ConnectionClient``: the HTTP calls, with the bearer token taken from a
  ``TokenSource`` seam (a 401 invalidates it and retries exactly once),
  ``Retry-After`` honoured on 429, and every failure turned into a
  ``keycourier.errors`` subclass whose message is safe to show.
* ``create_connection`` / ``wait_for_connection`` / ``disconnect_connection``:
  the partner's workflow (one active connection per entity, ``--replace``,
  polling with backoff), each state change handed to a ``Recorder``.

This module never prints and never imports click or aiohttp. HTTP goes
through the stdlib (``urllib``), imported only when a request is sent.
"""

from __future__ import annotations

import enum
import json
import math
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import quote, urlsplit

from keycourier import __version__
from keycourier.durations import parse_seconds
from keycourier.errors import (
    AuthError,
    ConfigError,
    Error,
    IntegrityError,
    PolicyError,
    UnavailableError,
    UsageError,
)
from keycourier.partner.profiles import Dialect
from keycourier.partner.retry import RetryPolicy, retry_after
from keycourier.urls import base_url_problem, is_loopback_host

if TYPE_CHECKING:
    from keycourier.config import Settings
    from keycourier.ledger.interface import Recorder, RecordOutcome
    from keycourier.redact import Secret

# --------------------------------------------------------------------------- limits

MAX_RESPONSE_BYTES: Final = 256 * 1024
MAX_CONNECTIONS_PER_LIST: Final = 200
MAX_URL_CHARS: Final = 4096
MAX_TEXT_CHARS: Final = 512
MAX_ERRORS_PER_CONNECTION: Final = 32
MAX_JSON_DEPTH: Final = 16
MAX_ID_INPUT_CHARS: Final = 64

_UUID_RE: Final = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
_DATE_RE: Final = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_PLATFORM_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63}\Z")


# --------------------------------------------------------------------------- inputs


def parse_uuid(value: str, what: str) -> str:
    """Validate an entity/organization/connection ID at the edge; return it lower-case."""
    if len(value) > MAX_ID_INPUT_CHARS or not _UUID_RE.match(value):
        shown = value if len(value) <= MAX_ID_INPUT_CHARS else value[:MAX_ID_INPUT_CHARS] + "…"
        raise UsageError(
            f"{what} {safe_text(shown)!r} is not a UUID",
            hints=[f"a {what} looks like 3fa85f64-5717-4562-b3fc-2c963f66afa6"],
        )
    return value.lower()


MAX_WAIT_SECONDS: Final = 24 * 3600.0


def parse_duration(value: str, what: str = "timeout") -> float:
    """A wait: ``30m``, ``90s``, ``2h``, ``500ms`` or a bare number of seconds, more than 0
    and at most 24 h, in seconds (``keycourier.durations``; UsageError otherwise)."""
    try:
        return parse_seconds(
            value,
            what=what,
            units=("h", "m", "s", "ms"),
            bare_seconds=True,
            at_most=MAX_WAIT_SECONDS,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def safe_text(value: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Make a platform-supplied string safe to show on a terminal.

    Control and format characters (ANSI escapes, bidi overrides) become
    ``?``; the result is cut at ``limit`` characters.
    """
    out = []
    for ch in value[:limit]:
        category = unicodedata.category(ch)
        out.append("?" if category[0] == "C" else ch)
    text = "".join(out)
    return text + "…" if len(value) > limit else text


# --------------------------------------------------------------------------- dialects


@dataclass(frozen=True, slots=True)
class DialectSpec:
    collection_path: str
    scope_header: str
    scope_name: str  # what the user calls the scope: entity or organization
    default_version_header: str


DIALECTS: Final[Mapping[Dialect, DialectSpec]] = {
    Dialect.MONITE: DialectSpec(
        collection_path="/accounting_connections",
        scope_header="x-monite-entity-id",
        scope_name="entity",
        default_version_header="x-monite-version",
    ),
    Dialect.TESOURO: DialectSpec(
        collection_path="/accounting-connections",
        scope_header="x-organization-id",
        scope_name="organization",
        default_version_header="x-finops-version",
    ),
}

VERSION_HEADERS: Final = frozenset({"x-monite-version", "x-finops-version", "x-tesouro-version"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to call the connection API: built from a profile."""

    dialect: Dialect
    base_url: str  # without trailing slash, e.g. https://api.sandbox.monite.com/v1
    version_header: str
    version: str  # YYYY-MM-DD
    profile: str = "default"
    timeout: float = 30.0  # seconds per HTTP request

    @property
    def spec(self) -> DialectSpec:
        return DIALECTS[self.dialect]


def make_endpoint(
    *,
    dialect: str,
    base_url: str,
    version: str,
    version_header: str | None = None,
    profile: str = "default",
    timeout: float = 30.0,
) -> Endpoint:
    """Validate the pieces of an endpoint (they come from a config file or flags)."""
    parsed_dialect = next((d for d in DIALECTS if d.value == dialect), None)
    if parsed_dialect is None:
        raise ConfigError(
            f"profile {profile}: connections support the dialects "
            f"{', '.join(d.value for d in DIALECTS)}, not {safe_text(dialect[:40])!r}"
        )
    header = (version_header or DIALECTS[parsed_dialect].default_version_header).lower()
    if header not in VERSION_HEADERS:
        raise ConfigError(
            f"profile {profile}: version header must be one of {', '.join(sorted(VERSION_HEADERS))}"
        )
    if not _DATE_RE.match(version):
        raise ConfigError(f"profile {profile}: API version must be a date, YYYY-MM-DD")
    if not 0 < timeout <= 300:
        raise ConfigError(f"profile {profile}: timeout must be between 0 and 300 seconds")
    return Endpoint(
        dialect=parsed_dialect,
        base_url=check_base_url(base_url, profile),
        version_header=header,
        version=version,
        profile=profile,
        timeout=timeout,
    )


def check_base_url(url: str, profile: str) -> str:
    """https anywhere, http only on loopback; no credentials, query or fragment."""
    problem = base_url_problem(url)
    if problem is not None:
        raise ConfigError(
            f"profile {profile}: base URL {problem}",
            hints=["use the platform's https:// base URL"],
        )
    return url.rstrip("/")


# --------------------------------------------------------------------------- the connection


class ConnectionStatus(enum.StrEnum):
    PENDING_AUTH = "pending_auth"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    DEAUTHORIZED = "deauthorized"


@dataclass(frozen=True, slots=True)
class BusinessInfo:
    name: str | None = None
    legal_name: str | None = None
    email: str | None = None
    base_currency: str | None = None
    type: str | None = None


@dataclass(frozen=True, slots=True)
class Connection:
    """An ``AccountingConnectionResponse``, parsed."""

    id: str
    created_at: datetime
    updated_at: datetime
    connection_url: str
    status: ConnectionStatus | None = None
    platform: str | None = None
    errors: tuple[str, ...] = ()
    last_pull: datetime | None = None
    business_info: BusinessInfo | None = None

    @property
    def active(self) -> bool:
        """Does it hold the entity's one connection slot?

        Only ``disconnected`` frees it. ``deauthorized`` (the user withdrew
        access in the accounting system) and a missing status count as active
        on purpose: the platform's docs say the entity must be disconnected
        before a new connection can be made, so we fail closed.
        """
        return self.status is not ConnectionStatus.DISCONNECTED

    @property
    def ready(self) -> bool:
        return self.status is ConnectionStatus.CONNECTED and bool(self.platform)

    def to_json(self) -> dict[str, Any]:
        info = self.business_info
        return {
            "id": self.id,
            "status": self.status.value if self.status else None,
            "platform": self.platform,
            "connection_url": self.connection_url,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "last_pull": _iso(self.last_pull) if self.last_pull else None,
            "errors": list(self.errors),
            "business_info": None
            if info is None
            else {
                "name": info.name,
                "legal_name": info.legal_name,
                "email": info.email,
                "base_currency": info.base_currency,
                "type": info.type,
            },
        }


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- parsers


def _malformed(what: str) -> IntegrityError:
    return IntegrityError(
        f"the platform sent a malformed {what}",
        hints=["check the profile's base URL and API version; rerun with --debug"],
    )


def _reject_constant(name: str) -> object:
    raise ValueError(f"non-finite number {name}")


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def parse_json_body(body: bytes, what: str) -> object:
    """Decode a JSON reply: UTF-8, size-limited, no NaN/Infinity, bounded depth."""
    if len(body) > MAX_RESPONSE_BYTES:
        raise IntegrityError(f"the platform's {what} is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed(what) from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise _malformed(what)
    return value


def _text(obj: Mapping[str, Any], key: str, what: str, *, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _malformed(f"{what} (no {key})")
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise _malformed(f"{what} ({key})")
    return value


def _timestamp(obj: Mapping[str, Any], key: str, what: str, *, required: bool) -> datetime | None:
    raw = _text(obj, key, what, required=required)
    if raw is None:
        return None
    if len(raw) > 40:
        raise _malformed(f"{what} ({key})")
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _malformed(f"{what} ({key})") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def _connection_url(value: str) -> str:
    if len(value) > MAX_URL_CHARS or any(
        unicodedata.category(c)[0] == "C" or c.isspace() for c in value
    ):
        raise _malformed("connection (connection_url)")
    parts = urlsplit(value)
    host = parts.hostname or ""
    if not host or parts.scheme not in {"https", "http"}:
        raise _malformed("connection (connection_url is not an http(s) URL)")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise _malformed("connection (connection_url is plain http to a remote host)")
    if parts.username or parts.password:
        raise _malformed("connection (connection_url carries credentials)")
    return value


def parse_connection(obj: object) -> Connection:
    """Parse one ``AccountingConnectionResponse``.

    Known fields are checked strictly. Unknown fields are ignored: the
    platform adds fields over time (``business_info`` appeared in 2025) and
    the reply as a whole is already size- and depth-limited.
    """
    what = "connection"
    if not isinstance(obj, dict):
        raise _malformed(what)
    raw_id = _text(obj, "id", what, required=True)
    assert raw_id is not None  # noqa: S101 - required=True guarantees it (for mypy)
    if not _UUID_RE.match(raw_id):
        raise _malformed(f"{what} (id is not a UUID)")
    created = _timestamp(obj, "created_at", what, required=True)
    updated = _timestamp(obj, "updated_at", what, required=True)
    url = _text(obj, "connection_url", what, required=True)
    assert created is not None  # noqa: S101
    assert updated is not None  # noqa: S101
    assert url is not None  # noqa: S101
    status_raw = _text(obj, "status", what, required=False)
    status: ConnectionStatus | None = None
    if status_raw is not None:
        try:
            status = ConnectionStatus(status_raw)
        except ValueError:
            raise IntegrityError(
                "the platform reported an unknown connection status "
                f"{safe_text(status_raw[:40])!r}",
                hints=["known: " + ", ".join(s.value for s in ConnectionStatus)],
            ) from None
    platform = _text(obj, "platform", what, required=False)
    if platform is not None and not _PLATFORM_RE.match(platform):
        raise _malformed(f"{what} (platform)")
    return Connection(
        id=raw_id.lower(),
        created_at=created,
        updated_at=updated,
        connection_url=_connection_url(url),
        status=status,
        platform=platform,
        errors=_errors(obj.get("errors")),
        last_pull=_timestamp(obj, "last_pull", what, required=False),
        business_info=_business_info(obj.get("business_info")),
    )


def _errors(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ERRORS_PER_CONNECTION:
        raise _malformed("connection (errors)")
    out = []
    for item in value:
        if not isinstance(item, dict):
            raise _malformed("connection (errors)")
        message = _text(item, "message", "connection error", required=True)
        assert message is not None  # noqa: S101
        out.append(safe_text(message))
    return tuple(out)


def _business_info(value: object) -> BusinessInfo | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _malformed("connection (business_info)")
    what = "connection business_info"

    def pick(key: str) -> str | None:
        text = _text(value, key, what, required=False)
        return safe_text(text) if text is not None else None

    return BusinessInfo(
        name=pick("name"),
        legal_name=pick("legal_name"),
        email=pick("email"),
        base_currency=pick("base_currency"),
        type=pick("type"),
    )


def parse_connection_list(obj: object) -> tuple[Connection, ...]:
    """``{"data": [AccountingConnectionResponse, ...]}``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise _malformed("connection list")
    items = obj["data"]
    if len(items) > MAX_CONNECTIONS_PER_LIST:
        raise _malformed("connection list (too many entries)")
    return tuple(parse_connection(item) for item in items)


def describe_error_body(body: bytes) -> str:
    """Plain words from an ``ErrorSchemaResponse`` or ``HTTPValidationError`` body.

    Returns ``""`` when the body has neither shape. Never raises.
    """
    try:
        doc = parse_json_body(body, "error reply")
    except Error:
        return ""
    if not isinstance(doc, dict):
        return ""
    err = doc.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return safe_text(err["message"], 300)
    detail = doc.get("detail")
    if isinstance(detail, str):
        return safe_text(detail, 300)
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if not isinstance(item, dict):
                continue
            msg = item.get("msg")
            loc = item.get("loc")
            where = ""
            if isinstance(loc, list):
                names = [str(p) for p in loc if isinstance(p, str | int) and p != "body"]
                where = ".".join(names)
            if isinstance(msg, str):
                parts.append(f"{where}: {msg}" if where else msg)
        if len(detail) > 5:
            parts.append(f"and {len(detail) - 5} more")
        return safe_text("; ".join(parts), 400)
    return ""


def _error_type(body: bytes) -> str:
    try:
        doc = parse_json_body(body, "error reply")
    except Error:
        return ""
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        kind = doc["error"].get("type")
        if isinstance(kind, str):
            return kind
    return ""


# --------------------------------------------------------------------------- transport


class TokenSource(Protocol):
    """Where the partner bearer token comes from (the token helper's cache)."""

    def get(self) -> Secret: ...

    def invalidate(self) -> None: ...


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


class Transport(Protocol):
    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        timeout: float | None = None,
    ) -> HttpResponse:
        """One request; ``timeout`` (seconds) overrides the transport's own when given."""
        ...


class UrllibTransport:
    """Synchronous HTTP with the stdlib. Redirects are refused, not followed.

    Following a redirect would send the bearer token to wherever the reply
    points; the connection API never redirects, so a 3xx is an error.
    """

    def __init__(self, timeout: float = 30.0) -> None:
        self._timeout = timeout

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        timeout: float | None = None,
    ) -> HttpResponse:
        import http.client
        import urllib.error
        import urllib.request

        class _NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: object, **kwargs: object) -> None:
                return None

        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if is_loopback_host(urlsplit(url).hostname):
            handlers.append(urllib.request.ProxyHandler({}))  # loopback never via a proxy
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))  # noqa: S310 - URL validated by check_base_url
        try:
            with opener.open(request, timeout=timeout or self._timeout) as resp:
                return HttpResponse(
                    status=resp.status,
                    headers={k.lower(): v for k, v in resp.headers.items()},
                    body=resp.read(MAX_RESPONSE_BYTES + 1),
                )
        except urllib.error.HTTPError as exc:
            try:
                data = exc.read(MAX_RESPONSE_BYTES + 1)
            except (OSError, http.client.HTTPException):
                data = b""
            finally:
                exc.close()
            hdrs = {k.lower(): v for k, v in exc.headers.items()} if exc.headers else {}
            return HttpResponse(status=exc.code, headers=hdrs, body=data)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            host = urlsplit(url).netloc
            raise UnavailableError(
                f"cannot reach the platform at {host}: {safe_text(str(reason), 200)}",
                hints=["check the profile's base URL and your network, then retry"],
            ) from None


# --------------------------------------------------------------------------- the client


# connection calls: reads retried twice on 502/503/504 and network errors, 429s four times
CONNECTION_RETRY: Final = RetryPolicy(server_retries=2, rate_limit_retries=4, backoff=0.5)


class RateLimitedError(UnavailableError):
    """A 429 the client was told not to wait out; ``retry_after`` is the asked delay (s)."""

    def __init__(
        self, message: str, *, retry_after: float | None, hints: Iterable[str] = ()
    ) -> None:
        super().__init__(message, hints=hints)
        self.retry_after = retry_after


MIN_REQUEST_TIMEOUT: Final = 0.25  # seconds: the floor of a request's timeout under a deadline


@dataclass(frozen=True, slots=True)
class Deadline:
    """A point in ``clock`` time that a call must not outlive (``wait --timeout``)."""

    at: float
    clock: Callable[[], float] = time.monotonic

    def remaining(self) -> float:
        return self.at - self.clock()


class DeadlineExceededError(UnavailableError):
    """The deadline passed (or left no room for a retry) while a call kept failing.

    ``problem`` says what the last attempt ran into, in plain words (``503``,
    ``cannot reach the platform ...``); the caller turns it into its timeout.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(f"the deadline passed; last problem: {problem}")
        self.problem = problem


def _token_expired_400(resp: HttpResponse) -> bool:
    """Tesouro answers an expired token with 400 "The token has been expired."."""
    if resp.status != 400:
        return False
    text = describe_error_body(resp.body).lower()
    return "token" in text and "expired" in text


class ConnectionClient:
    """The platform's accounting-connection endpoints for one profile."""

    def __init__(
        self,
        endpoint: Endpoint,
        tokens: TokenSource,
        *,
        transport: Transport | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.endpoint = endpoint
        self._tokens = tokens
        self._transport: Transport = transport or UrllibTransport(endpoint.timeout)
        self._retry = retry or CONNECTION_RETRY
        self._sleep = sleep
        self._now = now

    # -- public calls

    def list(self, scope_id: str) -> tuple[Connection, ...]:
        resp = self._call("GET", "", scope_id, expect=200)
        return parse_connection_list(parse_json_body(resp.body, "connection list"))

    def get(
        self,
        scope_id: str,
        connection_id: str,
        *,
        wait_out_rate_limits: bool = True,
        deadline: Deadline | None = None,
    ) -> Connection:
        """One connection. With ``wait_out_rate_limits=False`` a 429 is not slept on
        here but raised at once as ``RateLimitedError`` (``wait`` keeps its own deadline).

        With a ``deadline``, no retry pause and no request timeout runs past it
        (a request gets at least ``MIN_REQUEST_TIMEOUT``); when it passes while
        the call keeps failing, ``DeadlineExceededError`` names the last problem.
        """
        resp = self._call(
            "GET",
            "/" + quote(connection_id),
            scope_id,
            expect=200,
            wait_out_rate_limits=wait_out_rate_limits,
            deadline=deadline,
        )
        return parse_connection(parse_json_body(resp.body, "connection"))

    def create(self, scope_id: str, *, platform: str | None = None) -> Connection:
        body = None if platform is None else json.dumps({"platform": platform}).encode()
        resp = self._call("POST", "", scope_id, expect=201, body=body)
        return parse_connection(parse_json_body(resp.body, "connection"))

    def disconnect(self, scope_id: str, connection_id: str) -> Connection:
        path = "/" + quote(connection_id) + "/disconnect"
        resp = self._call("POST", path, scope_id, expect=200)
        return parse_connection(parse_json_body(resp.body, "connection"))

    # -- plumbing

    def _headers(self, scope_id: str, token: Secret, has_body: bool) -> dict[str, str]:
        headers = {
            "Authorization": "Bearer " + token.reveal(),
            self.endpoint.version_header: self.endpoint.version,
            self.endpoint.spec.scope_header: scope_id,
            "Accept": "application/json",
            "User-Agent": f"keycourier/{__version__}",
        }
        if has_body:
            headers["Content-Type"] = "application/json"
        return headers

    def _call(
        self,
        method: str,
        path: str,
        scope_id: str,
        *,
        expect: int,
        body: bytes | None = None,
        wait_out_rate_limits: bool = True,
        deadline: Deadline | None = None,
    ) -> HttpResponse:
        url = self.endpoint.base_url + self.endpoint.spec.collection_path + path
        refreshed = False
        rate_limited = 0
        server_errors = 0
        while True:
            timeout: float | None = None
            if deadline is not None:  # a poll right at the deadline still gets the floor
                left = deadline.remaining()
                timeout = max(min(self.endpoint.timeout, left), MIN_REQUEST_TIMEOUT)
            try:
                token = self._tokens.get()
            except UnavailableError as exc:
                if deadline is not None and deadline.remaining() <= 0:
                    raise DeadlineExceededError(f"no partner token: {exc.message}") from None
                raise
            try:
                resp = self._transport.send(
                    method,
                    url,
                    self._headers(scope_id, token, body is not None),
                    body,
                    timeout=timeout,
                )
            except UnavailableError as exc:
                if method == "GET" and server_errors < self._retry.server_retries:
                    self._pause(self._retry.pause(server_errors + 1), deadline, exc.message)
                    server_errors += 1
                    continue
                if deadline is not None and deadline.remaining() <= 0:
                    raise DeadlineExceededError(exc.message) from None
                raise
            if resp.status == expect:
                return resp
            static = isinstance(self._tokens, StaticTokenSource)  # no fresh token to get
            if (resp.status == 401 or _token_expired_400(resp)) and not refreshed and not static:
                self._tokens.invalidate()
                refreshed = True
                continue
            if resp.status == 429 and not wait_out_rate_limits:
                asked = retry_after(resp.headers.get("retry-after"), now=self._now)
                raise RateLimitedError("the platform is rate-limiting us (429)", retry_after=asked)
            if resp.status == 429 and rate_limited < self._retry.rate_limit_retries:
                delay = retry_after(resp.headers.get("retry-after"), now=self._now)
                if delay is None:
                    delay = self._retry.pause(rate_limited + 1)
                if delay > self._retry.max_retry_after:
                    raise UnavailableError(
                        f"the platform is rate-limiting us and asks to wait {math.ceil(delay)} s",
                        hints=["retry later"],
                    )
                self._sleep(delay)
                rate_limited += 1
                continue
            if (
                method == "GET"
                and resp.status in {502, 503, 504}
                and server_errors < self._retry.server_retries
            ):
                problem = self._error(method, resp, refreshed).message
                self._pause(self._retry.pause(server_errors + 1), deadline, problem)
                server_errors += 1
                continue
            error = self._error(method, resp, refreshed)
            if isinstance(error, UnavailableError) and deadline and deadline.remaining() <= 0:
                raise DeadlineExceededError(error.message)
            raise error

    def _pause(self, seconds: float, deadline: Deadline | None, problem: str) -> None:
        """Sleep before a retry; under a deadline, give up now if the retry would start too late."""
        if deadline is not None and seconds >= deadline.remaining():
            raise DeadlineExceededError(problem)
        self._sleep(seconds)

    def _error(self, method: str, resp: HttpResponse, refreshed: bool) -> Error:
        status = resp.status
        said = describe_error_body(resp.body)
        request_id = safe_text(resp.headers.get("x-request-id", ""), 80)
        hints = [f"platform request ID: {request_id}"] if request_id else []
        detail = f": {said}" if said else ""
        scope = self.endpoint.spec.scope_name
        if (status in {401, 403} or _token_expired_400(resp)) and isinstance(
            self._tokens, StaticTokenSource
        ):
            return AuthError(
                f"the platform refused {self._tokens.origin} ({status}){detail}",
                hints=[
                    *hints,
                    "a given token cannot be refreshed here: put a valid one there, or leave "
                    "out --token-file so that the token helper gets one for profile "
                    f"{self.endpoint.profile}",
                ],
            )
        if status in {401, 403} or _token_expired_400(resp):
            extra = " even after a fresh token" if refreshed else ""
            return AuthError(
                f"the platform refused the partner token ({status}){extra}{detail}",
                hints=[
                    *hints,
                    f"check profile {self.endpoint.profile}'s credentials and environment",
                ],
            )
        if status == 400 and _error_type(resp.body) == "missing_api_version":
            return ConfigError(
                f"the platform wants an API version header ({status}){detail}",
                hints=[*hints, "set the profile's version and version header"],
            )
        if status == 404:
            return UsageError(
                f"no such accounting connection for this {scope} (404){detail}",
                hints=[*hints, f"list them with: keycourier connection list --{scope} ID"],
            )
        if status == 422:
            return UsageError(
                f"the platform rejected the request as invalid (422){detail}", hints=hints
            )
        if status == 429:
            return UnavailableError(
                f"the platform is still rate-limiting us (429){detail}",
                hints=[*hints, "retry later"],
            )
        if status >= 500:
            return UnavailableError(
                f"the platform failed ({status}){detail}", hints=[*hints, "retry later"]
            )
        if 300 <= status < 400:
            return UnavailableError(
                f"the platform answered with a redirect ({status}); keycourier does not follow it",
                hints=[*hints, "check the profile's base URL"],
            )
        return PlatformRefusalError(
            f"the platform refused the {method} ({status}){detail}", status=status, hints=hints
        )


class PlatformRefusalError(UsageError):
    """Another 4xx: shown in plain words; ``status`` kept for callers."""

    def __init__(self, message: str, *, status: int, hints: Iterable[str] = ()) -> None:
        super().__init__(message, hints=hints)
        self.status = status


# --------------------------------------------------------------------------- workflow


@dataclass(frozen=True, slots=True)
class Recorded:
    event: str
    outcome: RecordOutcome


@dataclass(frozen=True, slots=True)
class CreateResult:
    connection: Connection
    replaced: tuple[Connection, ...] = ()
    recorded: tuple[Recorded, ...] = ()


@dataclass(frozen=True, slots=True)
class DisconnectResult:
    connection: Connection
    recorded: tuple[Recorded, ...] = ()


@dataclass(frozen=True, slots=True)
class WaitResult:
    connection: Connection
    polls: int
    recorded: tuple[Recorded, ...] = ()


RecorderFactory = Callable[[], "Recorder"]


@dataclass
class _Recording:
    """Opens the recorder on the first event, so reads never touch the ledger."""

    factory: RecorderFactory | None
    actor: str
    endpoint: Endpoint
    done: list[Recorded] = field(default_factory=list)
    _recorder: Recorder | None = None

    def record(self, kind: str, scope_id: str, conn: Connection) -> None:
        if self.factory is None:
            return
        from keycourier.ledger.interface import Event, EventType

        event = Event(
            type=EventType(kind),
            at=datetime.now(UTC),
            actor=self.actor,
            data={
                "entity_id": scope_id,
                "connection_id": conn.id,
                "dialect": self.endpoint.dialect.value,
                "scope": self.endpoint.spec.scope_name,
                "profile": self.endpoint.profile,
                "status": conn.status.value if conn.status else None,
                "platform": conn.platform,
            },
        )
        try:
            if self._recorder is None:
                self._recorder = self.factory()
            outcome = self._recorder.record(event)
        except Error as exc:
            raise type(exc)(
                f"{exc.message} (connection {conn.id} is {conn.status or 'unknown'} on the "
                f"platform, but the {kind} event was not recorded)",
                hints=exc.hints,
            ) from None
        self.done.append(Recorded(kind, outcome))

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None


def describe(conn: Connection) -> str:
    return (
        f"{conn.id} (platform {conn.platform or 'not chosen yet'}, "
        f"status {conn.status.value if conn.status else 'unknown'})"
    )


def create_connection(
    client: ConnectionClient,
    scope_id: str,
    *,
    replace: bool = False,
    confirm_replace: Callable[[Sequence[Connection]], bool] = lambda _: False,
    platform: str | None = None,
    recorder: RecorderFactory | None = None,
    actor: str = "partner",
) -> CreateResult:
    """Create the scope's accounting connection, honouring one-active-per-entity.

    Lists first; refuses (PolicyError, exit 7) while one is active unless
    ``replace``, in which case ``confirm_replace`` must agree and every
    active connection is disconnected (and recorded) before the new one is
    created. A non-201 reply to the create is re-checked with a list, since
    the platform documents no status code for "already exists".
    """
    scope = client.endpoint.spec.scope_name
    recording = _Recording(recorder, actor, client.endpoint)
    try:
        active = [c for c in client.list(scope_id) if c.active]
        replaced: list[Connection] = []
        if active and not replace:
            first = active[0]
            raise PolicyError(
                f"{scope} {scope_id} already has an active accounting connection: "
                f"{describe(first)}",
                hints=[
                    f"each {scope} can connect to one accounting system at a time",
                    "to disconnect it and create a new one, add --replace",
                ],
            )
        if active:
            if not confirm_replace(active):
                raise PolicyError("not replacing the active connection: not confirmed")
            for old in active:
                gone = client.disconnect(scope_id, old.id)
                recording.record("connection_disconnected", scope_id, gone)
                replaced.append(gone)
        try:
            conn = client.create(scope_id, platform=platform)
        except PlatformRefusalError as exc:
            still = [c for c in client.list(scope_id) if c.active]
            if still:
                raise PolicyError(
                    f"the platform refused to create a connection ({exc.status}); "
                    f"{scope} {scope_id} has an active one: {describe(still[0])}",
                    hints=["to disconnect it and create a new one, add --replace"],
                ) from None
            raise
        recording.record("connection_created", scope_id, conn)
        return CreateResult(conn, tuple(replaced), tuple(recording.done))
    finally:
        recording.close()


def disconnect_connection(
    client: ConnectionClient,
    scope_id: str,
    connection_id: str,
    *,
    recorder: RecorderFactory | None = None,
    actor: str = "partner",
) -> DisconnectResult:
    recording = _Recording(recorder, actor, client.endpoint)
    try:
        conn = client.disconnect(scope_id, connection_id)
        if conn.status is not ConnectionStatus.DISCONNECTED:
            raise IntegrityError(
                f"the platform answered the disconnect of {connection_id} with status "
                f"{conn.status.value if conn.status else 'unknown'}",
                hints=["check with: keycourier connection get"],
            )
        recording.record("connection_disconnected", scope_id, conn)
        return DisconnectResult(conn, tuple(recording.done))
    finally:
        recording.close()


@dataclass(frozen=True, slots=True)
class WaitPolicy:
    first: float = 2.0
    factor: float = 1.5
    maximum: float = 30.0


def wait_for_connection(
    client: ConnectionClient,
    scope_id: str,
    connection_id: str,
    *,
    timeout: float,
    policy: WaitPolicy | None = None,
    recorder: RecorderFactory | None = None,
    actor: str = "partner",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_poll: Callable[[Connection], None] | None = None,
) -> WaitResult:
    """Poll until ``connected`` with a platform; raise on a dead end or timeout.

    ``deauthorized`` -> AuthError (5); ``disconnected`` or errors in the
    object -> PolicyError (7); timeout -> UnavailableError (6, retry ``wait``).

    A 429 is handled here, not in the client, so no sleep runs past the
    deadline: wait ``Retry-After`` (or the current pause when it is absent,
    and never less than that pause), cut to the time left, and poll again.
    When the deadline comes first, the timeout says the platform was
    rate-limiting. ``polls`` counts every GET, 429s included.

    The client's own retries (502/503/504, network errors), its request
    timeouts and a token refresh are bounded by the same deadline; when it
    passes during them, the timeout names the last problem.
    """
    policy = policy or WaitPolicy()
    deadline = clock() + timeout
    bound = Deadline(deadline, clock)
    pause = policy.first
    polls = 0
    last: Connection | None = None
    while True:
        try:
            conn = client.get(scope_id, connection_id, wait_out_rate_limits=False, deadline=bound)
        except DeadlineExceededError as exc:
            raise UnavailableError(
                f"connection {connection_id} is not connected after the timeout: "
                f"the last poll failed ({exc.problem}); {_seen(last)}",
                hints=["rerun later: keycourier connection wait"],
            ) from None
        except RateLimitedError as exc:
            polls += 1
            asked = max(exc.retry_after or 0.0, pause)
            remaining = deadline - clock()
            if remaining > 0:
                sleep(min(asked, remaining))
            pause = min(pause * policy.factor, policy.maximum)
            if asked > remaining:  # the deadline came before the platform's Retry-After
                raise _rate_limited_timeout(connection_id, asked, last) from None
            continue
        polls += 1
        last = conn
        if on_poll is not None:
            on_poll(conn)
        if conn.errors:
            raise PolicyError(
                f"connection {conn.id} reports errors: " + "; ".join(conn.errors[:3]),
                hints=["fix the cause, then disconnect and create a new connection"],
            )
        if conn.status is ConnectionStatus.DEAUTHORIZED:
            raise AuthError(
                f"connection {conn.id} was deauthorized"
                + (f" in {conn.platform}" if conn.platform else ""),
                hints=[
                    "the user withdrew access in the accounting system",
                    "create a new one with: keycourier connection create --replace",
                ],
            )
        if conn.status is ConnectionStatus.DISCONNECTED:
            raise PolicyError(
                f"connection {conn.id} is disconnected",
                hints=["create a new one with: keycourier connection create"],
            )
        if conn.ready:
            recording = _Recording(recorder, actor, client.endpoint)
            try:
                recording.record("connection_connected", scope_id, conn)
            finally:
                recording.close()
            return WaitResult(conn, polls, tuple(recording.done))
        remaining = deadline - clock()
        if remaining <= 0:
            raise UnavailableError(
                f"connection {conn.id} is still "
                f"{conn.status.value if conn.status else 'without a status'} after the timeout",
                hints=[
                    "send the connection_url to the user again",
                    "then rerun: keycourier connection wait",
                ],
            )
        sleep(min(pause, remaining))
        pause = min(pause * policy.factor, policy.maximum)


def _rate_limited_timeout(
    connection_id: str, asked: float, last: Connection | None
) -> UnavailableError:
    return UnavailableError(
        f"connection {connection_id} is not connected after the timeout: the platform was "
        f"rate-limiting us (429, asked to wait {math.ceil(asked)} s); {_seen(last)}",
        hints=["rerun later: keycourier connection wait"],
    )


def _seen(last: Connection | None) -> str:
    if last is None:
        return "no status seen yet"
    return f"last status seen: {last.status.value if last.status else 'none'}"


class StaticTokenSource:
    """A token that cannot be refreshed (a token file, a test). ``invalidate`` is a no-op;
    a refused token is not retried. ``origin`` names it in errors ("the partner token
    from the file tok.txt")."""

    def __init__(self, token: Secret, origin: str = "the given partner token") -> None:
        self._token = token
        self.origin = origin

    def get(self) -> Secret:
        return self._token

    def invalidate(self) -> None:
        return None


# --------------------------------------------------------------------------- wiring


def endpoint_for_profile(settings: Settings, name: str) -> Endpoint:
    """The connection endpoint of profile ``name``, parsed by the token helper's parser.

    The profile's ``base_url`` is the platform's API base. Monite's already
    ends in ``/v1`` (``https://api.sandbox.monite.com/v1``); Tesouro's token
    endpoint lives at the host root (``/openid/connect/token``), so a base URL
    that does not end in ``/v1`` gets ``/v1`` appended for connection calls
    (``https://api.sandbox.tesouro.com/v1/accounting-connections``). The
    version header is the profile's, so tokens and connections use the same.
    """
    from keycourier.partner.profiles import get_profile

    profile = get_profile(settings, name)
    if profile.dialect not in DIALECTS:
        raise ConfigError(
            f"profile {name}: connections support the dialects "
            f"{', '.join(d.value for d in DIALECTS)}, not {profile.dialect.value}",
            hints=["the oauth2 dialect is for tokens only"],
        )
    if profile.version is None:
        raise ConfigError(
            f"profile {name}: connection calls need an API version",
            hints=[
                f"set profiles.{name}.version, e.g. 2024-05-25 (Monite) or 2025-06-23 (Tesouro)"
            ],
        )
    base = profile.base_url.rstrip("/")
    if not urlsplit(base).path.endswith("/v1"):
        base += "/v1"
    return make_endpoint(
        dialect=profile.dialect.value,
        base_url=base,
        version=profile.version,
        version_header=profile.version_header,
        profile=name,
        timeout=profile.timeout,
    )
