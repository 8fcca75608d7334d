"""Ask a running ``keycourier serve`` for a token (``KEYCOURIER_HELPER_URL``).

The URL is ``http://127.0.0.1:PORT``, ``https://host:PORT`` or
``unix:/path/to/socket``. The client key comes from ``KEYCOURIER_HELPER_KEY``
or the file named by ``KEYCOURIER_HELPER_KEY_FILE``; never from argv.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from keycourier.errors import AuthError, ConfigError, PolicyError, UnavailableError, UsageError
from keycourier.partner.tokens import Token
from keycourier.redact import Secret

KEY_ENV: Final = "KEYCOURIER_HELPER_KEY"
KEY_FILE_ENV: Final = "KEYCOURIER_HELPER_KEY_FILE"
MAX_REPLY: Final = 64 * 1024


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
        self, url: str, key: Secret, *, timeout: float = 15.0, cafile: str | None = None
    ) -> None:
        self.url = url
        self._key = key
        self._timeout = timeout
        self._cafile = cafile

    @classmethod
    def from_env(cls, url: str, env: Mapping[str, str]) -> HelperClient:
        return cls(url, read_key(env), cafile=env.get("KEYCOURIER_HELPER_CACERT"))

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
        text = "".join(c for c in doc["error"][:200] if c.isprintable())
        return f": {text}"
    return ""


def _parse(data: bytes, now: float) -> Token:
    if len(data) > MAX_REPLY:
        raise UnavailableError("the token helper sent an oversized reply")
    try:
        doc = json.loads(data)
        access = doc["access_token"]
        expires_at = datetime.strptime(doc["expires_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
        token_type = str(doc.get("token_type", "Bearer"))
    except (ValueError, KeyError, TypeError):
        raise UnavailableError("the token helper sent a malformed reply") from None
    if not isinstance(access, str) or not access:
        raise UnavailableError("the token helper sent a malformed reply")
    lifetime = int(expires_at - now)
    if lifetime <= 0:
        raise UnavailableError("the token helper sent an expired token")
    return Token(Secret(access), token_type, lifetime, now)
