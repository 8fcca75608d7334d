"""The connection API's HTTP client: one profile's calls, with retries and a deadline.

``ConnectionClient`` takes the bearer token from a ``TokenSource`` (a 401
invalidates it and retries exactly once), honours ``Retry-After`` on 429,
retries reads on 502/503/504 and network errors, keeps within a ``Deadline``
when given one, and turns every failure into a ``keycourier.errors`` subclass
whose message is safe to show. HTTP goes through the stdlib (``urllib``),
imported only when a request is sent.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol
from urllib.parse import quote, urlsplit

from keycourier import __version__
from keycourier.errors import AuthError, ConfigError, Error, UnavailableError, UsageError
from keycourier.partner.connections.model import (
    MAX_RESPONSE_BYTES,
    Connection,
    Endpoint,
    describe_error_body,
    error_type,
    parse_connection,
    parse_connection_list,
    parse_json_body,
)
from keycourier.partner.retry import RetryPolicy, retry_after
from keycourier.redact import Secret, printable
from keycourier.urls import is_loopback_host

# --------------------------------------------------------------------------- the token


class TokenSource(Protocol):
    """Where the partner bearer token comes from (the token helper's cache)."""

    def get(self) -> Secret: ...

    def invalidate(self) -> None: ...


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


# --------------------------------------------------------------------------- transport


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
                f"cannot reach the platform at {host}: {printable(str(reason), 200)}",
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
        request_id = printable(resp.headers.get("x-request-id", ""), 80)
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
        if status == 400 and error_type(resp.body) == "missing_api_version":
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
