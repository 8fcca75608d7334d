"""Ask a running ``keycourier serve`` for a token (``KEYCOURIER_HELPER_URL``).

The URL is ``http://127.0.0.1:PORT``, ``https://host:PORT`` or
``unix:/path/to/socket``; plain ``http://`` is refused unless the host is
loopback (127.0.0.0/8, ::1, localhost), because the client key travels in
every request. The client key comes from ``KEYCOURIER_HELPER_KEY`` or the file
named by ``KEYCOURIER_HELPER_KEY_FILE``; never from argv.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from keycourier.errors import AuthError, ConfigError, PolicyError, UnavailableError, UsageError
from keycourier.partner.tokens import MAX_ACCESS_TOKEN_CHARS, MAX_LIFETIME_SECONDS, Token
from keycourier.redact import Secret, printable
from keycourier.urls import is_loopback_host

KEY_ENV: Final = "KEYCOURIER_HELPER_KEY"
KEY_FILE_ENV: Final = "KEYCOURIER_HELPER_KEY_FILE"
MAX_REPLY: Final = 64 * 1024
TIMEOUT: Final = 15.0  # seconds per request to the helper
# What a helper reply may contain, checked before anything reaches stdout, $GITHUB_ENV
# or a child's environment: a newline in a token would let a rogue helper add lines
# (``::add-mask::`` / workflow commands, env-file entries).
_TOKEN_RE: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_ACCESS_TOKEN_CHARS}}}")
_TOKEN_TYPE_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,32}")
_EXPIRES_AT_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:?\d{2})")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def read_key(env: Mapping[str, str]) -> Secret:
    value = env.get(KEY_ENV)
    if value:
        return Secret(value.strip())
    path = env.get(KEY_FILE_ENV)
    if path:
        try:
            with open(path, "rb") as fh:
                raw = fh.read(4097)
        except OSError as exc:
            raise ConfigError(f"cannot read {KEY_FILE_ENV} ({path}): {exc.strerror}") from None
        if len(raw) > 4096:
            raise ConfigError(f"{KEY_FILE_ENV} is too large to be a client key")
        return Secret(raw.strip())
    raise ConfigError(
        "KEYCOURIER_HELPER_URL is set but no client key was given",
        hints=[f"set {KEY_ENV} or {KEY_FILE_ENV} (made by 'keycourier helper client add')"],
    )


class HelperClient:
    def __init__(
        self, url: str, key: Secret, *, timeout: float = TIMEOUT, cafile: str | None = None
    ) -> None:
        self.url = url
        self._key = key
        self._timeout = timeout
        self._cafile = cafile

    @classmethod
    def from_env(
        cls, url: str, env: Mapping[str, str], *, timeout: float = TIMEOUT
    ) -> HelperClient:
        return cls(url, read_key(env), timeout=timeout, cafile=env.get("KEYCOURIER_HELPER_CACERT"))

    def _connection(self) -> http.client.HTTPConnection:
        if self.url.startswith("unix:"):
            return _UnixConnection(self.url[len("unix:") :], self._timeout)
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "KEYCOURIER_HELPER_URL must be http://HOST:PORT, https://HOST:PORT or unix:PATH"
            )
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=self._cafile)
            return http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self._timeout, context=ctx
            )
        if not is_loopback_host(parts.hostname):
            raise ConfigError(
                f"KEYCOURIER_HELPER_URL uses plain http:// to {parts.hostname[:100]!r}, which is "
                "not loopback: the client key would cross the network in clear",
                hints=["use https://HOST:PORT (KEYCOURIER_HELPER_CACERT for a private CA)"],
            )
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=self._timeout)

    def token(self, profile: str, *, clock: Callable[[], float] = time.time) -> Token:
        conn = self._connection()
        body = json.dumps({"profile": profile}).encode()
        try:
            conn.request(
                "POST",
                "/v1/token",
                body=body,
                headers={
                    "authorization": f"Bearer {self._key.reveal()}",
                    "content-type": "application/json",
                },
            )
            resp = conn.getresponse()
            data = resp.read(MAX_REPLY + 1)
            status = resp.status
        except OSError as exc:
            raise UnavailableError(
                f"cannot reach the token helper at {self.url} ({type(exc).__name__})",
                hints=["is 'keycourier serve' running?"],
            ) from None
        finally:
            conn.close()
        reason = _reason(data)
        if status == 200:
            return _parse(data, clock())
        if status == 401:
            raise AuthError(f"the token helper refused the client key{reason}")
        if status == 403:
            raise PolicyError(
                f"the token helper refused profile {profile!r} for this client{reason}"
            )
        if status == 404:
            raise ConfigError(f"the token helper has no profile {profile!r}{reason}")
        if status in (400, 413):
            raise UsageError(f"the token helper rejected the request{reason}")
        raise UnavailableError(f"the token helper answered HTTP {status}{reason}")


def _reason(data: bytes) -> str:
    try:
        doc = json.loads(data[:MAX_REPLY])
    except ValueError:
        return ""
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return f": {printable(doc['error'], 200)}"
    return ""


def _parse(data: bytes, now: float) -> Token:
    if len(data) > MAX_REPLY:
        raise UnavailableError("the token helper sent an oversized reply")
    try:
        doc = json.loads(data)
        access = doc["access_token"]
        expires = doc["expires_at"]
        token_type = doc.get("token_type", "Bearer")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UnavailableError("the token helper sent a malformed reply") from None
    if not isinstance(access, str) or not _TOKEN_RE.fullmatch(access):
        raise UnavailableError(
            "the token helper sent an access_token that is not 1 to "
            f"{MAX_ACCESS_TOKEN_CHARS} visible ASCII characters; refusing to use it"
        )
    if not isinstance(token_type, str) or not _TOKEN_TYPE_RE.fullmatch(token_type):
        raise UnavailableError("the token helper sent a malformed token_type; refusing it")
    expires_at = _timestamp(expires)
    lifetime = int(expires_at - now)
    if lifetime <= 0:
        raise UnavailableError("the token helper sent an expired token")
    if lifetime > MAX_LIFETIME_SECONDS:
        raise UnavailableError("the token helper sent an implausible expires_at")
    return Token(Secret(access), token_type, lifetime, now)


def _timestamp(expires: object) -> float:
    bad = UnavailableError("the token helper sent a malformed expires_at; refusing it")
    if not isinstance(expires, str) or not _EXPIRES_AT_RE.fullmatch(expires):
        raise bad
    try:
        return datetime.strptime(expires, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        raise bad from None
