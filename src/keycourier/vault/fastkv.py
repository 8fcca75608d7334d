"""KV v2 over one keep-alive ``http.client`` connection, for the hot Vault paths.

The ledger's mirror writes one KV v2 record per recorded event (thousands during
``sync``), and a cached ``keycourier token`` whose credentials are in Vault reads one
secret and exits: :class:`FastKV` speaks the same HTTP API as hvac at about a fifth of its
CPU cost per call, without importing hvac or requests, and raises through the same
translation table (``errors``). ``kv_read_direct`` is ``kv.kv_read`` over it.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keycourier.errors import ConfigError, UnavailableError
from keycourier.redact import Secret
from keycourier.vault.client import check_addr, settings_and_env, token_from
from keycourier.vault.errors import NotFoundError, status_error, translate
from keycourier.vault.paths import check_path

if TYPE_CHECKING:
    from keycourier.config import Settings, VaultSettings


def kv_read_direct(
    settings: Settings | VaultSettings,
    mount: str,
    path: str,
    *,
    env: Mapping[str, str] | None = None,
) -> Mapping[str, Any] | None:
    """``kv_read`` with token auth over one ``http.client`` GET (``FastKV``), without hvac.

    For commands that read one secret and exit, such as a cached ``keycourier
    token`` whose credentials are in Vault: importing hvac and requests would be
    most of their start-up. Same checks, errors and result as ``connect`` +
    ``kv_read``; other auth methods (a log-in first) use those.
    """
    vs, default_env = settings_and_env(settings)
    environ = default_env if env is None else env
    if not vs.addr:
        raise ConfigError(
            "no Vault configured", hints=["set VAULT_ADDR or [vault] addr in the config"]
        )
    check_path(path)
    check_addr(vs.addr)
    if vs.cacert is not None and not vs.cacert.is_file():
        raise ConfigError(f"VAULT_CACERT {vs.cacert} is not a readable file")
    kv = FastKV(vs, token_from(vs, environ))
    try:
        return kv.read(mount, path)
    finally:
        kv.close()


def _decode(status: int, raw: bytes, where: str) -> Any:  # noqa: ANN401 - decoded JSON
    if status >= 400:
        errors = ""
        try:
            errors = " ".join(str(e) for e in json.loads(raw).get("errors") or [])
        except (ValueError, AttributeError):
            errors = ""
        raise status_error(status, where, errors)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise UnavailableError(f"Vault gave a non-JSON answer to {where} (HTTP {status})") from None


class _OneWrite:
    """Send a request's headers and body in one write (``send`` buffers, ``getresponse`` flushes).

    http.client writes the header block and the body separately; on a busy
    loopback every write wakes the server, so one write per request halves that.
    """

    _pending: list[bytes]

    def send(self, data: Any) -> None:  # noqa: ANN401 - http.client's signature
        if isinstance(data, bytes | bytearray):
            self._pending.append(bytes(data))
            return
        self._flush()
        super().send(data)  # type: ignore[misc]

    def _flush(self) -> None:
        if self._pending:
            blob = b"".join(self._pending)
            self._pending.clear()
            super().send(blob)  # type: ignore[misc]

    def getresponse(self) -> http.client.HTTPResponse:
        self._flush()
        return super().getresponse()  # type: ignore[misc,no-any-return]


class _OneWriteHTTP(_OneWrite, http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        self._pending = []
        super().__init__(*args, **kwargs)


class _OneWriteHTTPS(_OneWrite, http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        self._pending = []
        super().__init__(*args, **kwargs)


class FastKV:
    """KV v2 writes over one keep-alive ``http.client`` connection (not thread-safe).

    Same HTTP API and error translation as the hvac path; about a fifth of
    its CPU cost per call. Use one instance per thread.
    """

    def __init__(self, settings: VaultSettings, token: Secret) -> None:
        if not settings.addr:
            raise ConfigError("no Vault configured")
        parts = check_addr(settings.addr)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._timeout = settings.timeout
        self._ctx: ssl.SSLContext | None = None
        if self._https:
            self._ctx = ssl.create_default_context(
                cafile=str(settings.cacert) if settings.cacert else None
            )
        self._headers = {"X-Vault-Token": token.reveal(), "Content-Type": "application/json"}
        if settings.namespace:
            self._headers["X-Vault-Namespace"] = settings.namespace
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FastKV({self._host}:{self._port})"

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            conn: http.client.HTTPConnection
            if self._https:
                conn = _OneWriteHTTPS(
                    self._host, self._port, timeout=self._timeout, context=self._ctx
                )
            else:
                conn = _OneWriteHTTP(self._host, self._port, timeout=self._timeout)
            conn.connect()
            if conn.sock is not None:
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, url: str, body: Mapping[str, Any] | None, where: str) -> Any:  # noqa: ANN401 - decoded JSON
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        for attempt in (0, 1):
            try:
                conn = self._connection()
                conn.request(method, self._prefix + url, body=payload, headers=self._headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                # A kept-alive connection the server closed: retry once on a fresh one
                # (safe for cas writes: a duplicate attempt fails the cas check).
                self.close()
                if attempt:
                    raise translate(exc, where) from None
                continue
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise translate(exc, where) from None
            if 300 <= resp.status < 400:
                # A standby that cannot forward answers 307 + Location (the active node).
                return self._follow(resp.getheader("Location") or "", method, payload, where)
            return _decode(resp.status, raw, where)
        raise UnavailableError(f"Vault is unreachable for {where}")  # pragma: no cover

    def _follow(self, location: str, method: str, payload: bytes | None, where: str) -> Any:  # noqa: ANN401
        """Repeat the request once at a redirect target, on a one-shot connection."""
        parts = urllib.parse.urlsplit(location)
        if parts.scheme != ("https" if self._https else "http") or not parts.hostname:
            raise UnavailableError(
                f"Vault redirected {where} to an unusable location"
                " (a standby without an active node?)",
                hints=["retry later, or point VAULT_ADDR at the active node"],
            )
        conn: http.client.HTTPConnection
        port = parts.port or (443 if self._https else 80)
        if self._https:
            conn = http.client.HTTPSConnection(
                parts.hostname, port, timeout=self._timeout, context=self._ctx
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, port, timeout=self._timeout)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target, body=payload, headers=self._headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise translate(exc, where + " (after a standby redirect)") from None
        finally:
            conn.close()
        if 300 <= resp.status < 400:
            raise UnavailableError(f"Vault redirected {where} twice (leader election in progress?)")
        return _decode(resp.status, raw, where)

    def read(self, mount: str, path: str) -> Mapping[str, Any] | None:
        """The latest data of a KV v2 secret; None when there is none or it was deleted."""
        where = f"a read of {mount}/{path}"
        try:
            with self._lock:
                resp = self.request("GET", f"/v1/{mount}/data/{path}", None, where)
        except NotFoundError:  # no secret, or its latest version deleted or destroyed
            return None
        body = resp.get("data") if isinstance(resp, dict) else None
        data = body.get("data") if isinstance(body, dict) else None
        return data if isinstance(data, dict) else None

    def write(self, mount: str, path: str, data: Mapping[str, Any], *, cas: int | None) -> int:
        body: dict[str, Any] = {"data": dict(data)}
        if cas is not None:
            body["options"] = {"cas": cas}
        where = f"a write to {mount}/{path}"
        with self._lock:
            resp = self.request("POST", f"/v1/{mount}/data/{path}", body, where)
        try:
            return int(resp["data"]["version"])
        except (TypeError, KeyError, ValueError):
            raise UnavailableError(f"Vault gave an unexpected answer to {where}") from None
