"""Partner access tokens from the platform: the three token dialects and their errors.

* ``monite``: ``POST {base}/auth/token``, JSON body ``{grant_type, client_id,
  client_secret}``, ``x-monite-version`` header (docs/platform-apis.md 1.2);
* ``tesouro``: ``POST {base}/openid/connect/token``, form-encoded body, with
  ``x-tesouro-version`` (or ``x-finops-version``) when a version is set (1.5);
* ``oauth2``: any RFC 6749 section 4.4 client_credentials endpoint, with
  ``client_secret_basic`` (RFC 6749 2.3.1, form-urlencoded ID and secret) or
  ``client_secret_post``.

The lifetime is always read from ``expires_in``; a reply without it is refused
rather than guessed. It is counted from when the request was *sent*, not from
when the reply arrived: the platform started the lifetime somewhere in between,
so a slow reply shortens the token's life here rather than stretching it past
the real expiry. 429 honours ``Retry-After``; 5xx, timeouts and network
errors are retried with exponential backoff and full jitter, a bounded number
of times; 401 is an ``AuthError`` that names the profile and the credential
source. Upstream text is shown only after it is cut, stripped of control
characters and scrubbed of the client ID and secret.

aiohttp (with asyncio and random, for the default ``sleep`` and ``rand``) is imported
inside ``fetch_token`` only, so that reading a cached ``Token`` never pays for them.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

from keycourier import __version__
from keycourier._record import record
from keycourier.errors import AuthError, ConfigError, Error, UnavailableError
from keycourier.partner.profiles import ClientAuth, Dialect
from keycourier.partner.retry import RetryPolicy, retry_after
from keycourier.redact import Secret, fingerprint, printable

if TYPE_CHECKING:
    import aiohttp

    from keycourier.partner.profiles import Profile

MAX_TOKEN_RESPONSE_BYTES: Final = 64 * 1024
MAX_ACCESS_TOKEN_CHARS: Final = 16 * 1024
MAX_LIFETIME_SECONDS: Final = 366 * 24 * 3600
_TOKEN_CHARS: Final = re.compile(r"[\x21-\x7e]+")


@record
class ClientCredentials:
    client_id: str
    client_secret: Secret
    source: str  # a description of where they came from, never the values

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id=****, source={self.source!r})"


@record
class Token:
    """An access token and its lifetime, as the platform issued it."""

    access_token: Secret
    token_type: str
    expires_in: int
    # seconds since the epoch (wall clock) when the request that got this token was
    # sent: the platform issued it later, so expires_at errs on the early side
    issued_at: float

    @property
    def expires_at(self) -> float:
        return self.issued_at + self.expires_in

    def refresh_at(self, fraction: float) -> float:
        return self.issued_at + self.expires_in * fraction

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now))

    @property
    def fingerprint(self) -> str:
        return fingerprint("access-token", self.access_token.reveal_bytes())

    def expires_at_iso(self) -> str:
        return iso_utc(self.expires_at)


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _upstream_message(body: bytes, scrub: tuple[str, ...]) -> str:
    """A short, safe summary of a platform error body (Monite/Tesouro/RFC 6749 shapes)."""
    try:
        doc = json.loads(body[:MAX_TOKEN_RESPONSE_BYTES].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ""
    if not isinstance(doc, dict):
        return ""
    err = doc.get("error")
    if isinstance(err, dict):
        kind = err.get("type")
        msg = err.get("message")
        parts = [str(p) for p in (kind, msg) if isinstance(p, str)]
        return printable(": ".join(parts), 200, scrub=scrub)
    if isinstance(err, str):  # RFC 6749 5.2
        desc = doc.get("error_description")
        text = err + (f": {desc}" if isinstance(desc, str) else "")
        return printable(text, 200, scrub=scrub)
    detail = doc.get("detail")
    if isinstance(detail, list):  # FastAPI HTTPValidationError; never show "input"
        items = []
        for item in detail[:3]:
            if isinstance(item, dict):
                loc = item.get("loc")
                where = ".".join(str(x) for x in loc) if isinstance(loc, list) else "?"
                items.append(f"{where}: {item.get('msg', '')}")
        return printable("; ".join(items), 200, scrub=scrub)
    return ""


def parse_token_response(body: bytes, *, now: float) -> Token:
    """Parse a 200 token reply; UnavailableError when it is not a usable token.

    ``now`` is when the request was sent (the token's ``issued_at``).
    """
    if len(body) > MAX_TOKEN_RESPONSE_BYTES:
        raise UnavailableError("the token endpoint sent an oversized reply")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UnavailableError("the token endpoint sent a reply that is not JSON") from None
    if not isinstance(doc, dict):
        raise UnavailableError("the token endpoint sent a reply that is not a JSON object")
    access = doc.get("access_token")
    if (
        not isinstance(access, str)
        or not access
        or len(access) > MAX_ACCESS_TOKEN_CHARS
        or not _TOKEN_CHARS.fullmatch(access)
    ):
        raise UnavailableError("the token endpoint reply has no usable access_token")
    token_type = doc.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise UnavailableError("the token endpoint issued a token that is not a Bearer token")
    expires_in = doc.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit() and len(expires_in) < 10:
        expires_in = int(expires_in)  # some servers send a numeric string
    if isinstance(expires_in, bool) or not isinstance(expires_in, int):
        raise UnavailableError(
            "the token endpoint reply has no expires_in",
            hints=["keycourier never assumes a token lifetime"],
        )
    if not 1 <= expires_in <= MAX_LIFETIME_SECONDS:
        raise UnavailableError(f"the token endpoint sent an implausible expires_in ({expires_in})")
    return Token(Secret(access), "Bearer", expires_in, now)


def build_request(profile: Profile, creds: ClientCredentials) -> tuple[dict[str, str], bytes]:
    """Headers and body for one token request in the profile's dialect."""

    headers = {
        "accept": "application/json",
        "user-agent": f"keycourier/{__version__}",
    }
    if profile.version_header and profile.version:
        headers[profile.version_header] = profile.version
    secret = creds.client_secret.reveal()
    if profile.dialect is Dialect.MONITE:
        headers["content-type"] = "application/json"
        body = json.dumps(
            {
                "grant_type": "client_credentials",
                "client_id": creds.client_id,
                "client_secret": secret,
            }
        ).encode()
        return headers, body
    headers["content-type"] = "application/x-www-form-urlencoded"
    form = {"grant_type": "client_credentials"}
    if profile.dialect is Dialect.OAUTH2 and profile.client_auth is ClientAuth.BASIC:
        # RFC 6749 2.3.1: each part form-urlencoded before base64.
        pair = f"{quote(creds.client_id, safe='')}:{quote(secret, safe='')}"
        headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        form["client_id"] = creds.client_id
        form["client_secret"] = secret
    if profile.scope:
        form["scope"] = profile.scope
    return headers, urlencode(form).encode()


@record
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class UpstreamAuthError(AuthError):
    """The platform refused the client credentials (401/403, invalid_client)."""


class UpstreamUnavailableError(UnavailableError):
    """The platform could not issue a token now; ``retry_after`` says when to retry."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, hints: Iterable[str] = ()
    ) -> None:
        super().__init__(message, hints=hints)
        self.retry_after = retry_after


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    timeout: float,
) -> _Reply:
    import aiohttp

    async with session.post(
        url,
        data=body,
        headers=dict(headers),
        timeout=aiohttp.ClientTimeout(total=timeout),
        allow_redirects=False,
    ) as resp:
        data = await resp.content.read(MAX_TOKEN_RESPONSE_BYTES + 1)
        return _Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data)


async def fetch_token(
    profile: Profile,
    creds: ClientCredentials,
    *,
    session: aiohttp.ClientSession | None = None,
    retry: RetryPolicy | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.time,
    rand: Callable[[], float] | None = None,
) -> Token:
    """One token from the platform, with the retries described in the module docstring.

    ``sleep`` waits between retries (default ``asyncio.sleep``), ``rand`` draws the
    jitter (default ``random.random``)."""
    import asyncio
    import random

    import aiohttp

    if sleep is None:
        sleep = asyncio.sleep
    if rand is None:
        rand = random.random

    policy = retry or RetryPolicy(server_retries=profile.max_retries)
    headers, body = build_request(profile, creds)
    scrub = (creds.client_secret.reveal(), creds.client_id)
    owned = session is None
    sess = session or aiohttp.ClientSession()
    failures = 0
    limited = 0
    try:
        while True:
            reason: str
            wait: float | None = None
            # The lifetime counts from before the request leaves: a reply that is slow to
            # arrive (up to profile.timeout) must not push expires_at past the real expiry.
            sent = clock()
            try:
                reply = await _post(sess, profile.token_url, headers, body, profile.timeout)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                reason = f"cannot reach the token endpoint ({type(exc).__name__})"
            else:
                rid = reply.headers.get("x-request-id")
                suffix = f" (x-request-id {printable(rid, 64)})" if rid else ""
                if reply.status == 200:
                    return parse_token_response(reply.body, now=sent)
                message = _upstream_message(reply.body, scrub)
                detail = f": {message}" if message else ""
                if reply.status == 429:
                    wait = retry_after(reply.headers.get("retry-after"))
                    limited += 1
                    if limited > policy.rate_limit_retries or (
                        wait is not None and wait > policy.max_retry_after
                    ):
                        raise UpstreamUnavailableError(
                            f"profile {profile.name}: the token endpoint is rate limiting{suffix}",
                            retry_after=wait,
                            hints=["retry later; the platform allows about 30 requests per second"],
                        )
                    await sleep(wait if wait is not None else _backoff(policy, limited, rand))
                    continue
                _raise_for_status(profile, creds, reply.status, detail, suffix)
                reason = f"the token endpoint answered HTTP {reply.status}{detail}{suffix}"
            failures += 1
            if failures > policy.server_retries:
                raise UpstreamUnavailableError(
                    f"profile {profile.name}: {reason}",
                    retry_after=None,
                    hints=[f"gave up after {failures} attempts; retry later"],
                )
            await sleep(_backoff(policy, failures, rand))
    finally:
        if owned:
            await sess.close()


def _backoff(policy: RetryPolicy, attempt: int, rand: Callable[[], float]) -> float:
    return policy.pause(attempt) * rand()  # full jitter


def _raise_for_status(
    profile: Profile, creds: ClientCredentials, status: int, detail: str, suffix: str
) -> None:
    """Raise the domain error for a non-retryable status; return for retryable ones."""

    if status in (401, 403) or (status == 400 and "invalid_client" in detail):
        raise UpstreamAuthError(
            f"profile {profile.name}: the platform refused the client credentials "
            f"from {creds.source} (HTTP {status}{detail}){suffix}",
            hints=[
                "check that the client ID and secret belong to this environment "
                f"({profile.environment.value}); sandbox and production credentials differ"
            ],
        )
    if status in (400, 404, 405, 415, 422):
        hints: list[str] = []
        if "missing_api_version" in detail:
            hints.append(
                f"set profiles.{profile.name}.version"
                f" (the {profile.version_header or 'version'} header)"
            )
        if status == 422 and profile.dialect is Dialect.MONITE:
            hints.append("Monite wants a UUID client_id and no extra fields")
        if status == 404:
            hints.append(f"check profiles.{profile.name}.base_url and token_path")
        raise ConfigError(
            f"profile {profile.name}: the token endpoint rejected the request"
            f" (HTTP {status}{detail}){suffix}",
            hints=hints,
        )
    if 500 <= status <= 599 or status in (408, 425):
        return
    raise UpstreamUnavailableError(
        f"profile {profile.name}: unexpected HTTP {status} from the token endpoint{suffix}"
    )


def describe_error(exc: Error) -> str:
    """The one-line reason the helper gives its clients for a failed refresh."""
    return exc.message


def json_payload(token: Token, *, now: float) -> dict[str, Any]:
    """The ``--format json`` / ``POST /v1/token`` shape."""
    return {
        "access_token": token.access_token.reveal(),
        "token_type": token.token_type,
        "expires_in": token.remaining(now),
        "expires_at": token.expires_at_iso(),
    }
