"""The one Vault/OpenBao adapter: log in, translate errors, KV v2 helpers.

hvac is the client for everything (log-in, reads, metadata, sys/*). The hot
write path (one KV v2 write per recorded event, thousands during ``sync``)
may use :class:`FastKV`, a small keep-alive ``http.client`` transport that
speaks the same HTTP API and raises through the same translation table.

Every hvac/requests/http.client failure leaves this module as a keycourier
error: :class:`~keycourier.errors.AuthError` (exit 5) for 401/403 and log-in
failures, :class:`~keycourier.errors.UnavailableError` (exit 6) for
connection errors, timeouts, 5xx, sealed or uninitialised servers, 429;
:class:`~keycourier.errors.ConfigError` (exit 3) for bad addresses, TLS trust
problems, missing token/secret-ID files; :class:`CasMismatchError` (an
``IntegrityError``) for a check-and-set refusal. Messages never hold a token,
a secret ID, a JWT or secret data.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keycourier.errors import AuthError, ConfigError, Error, IntegrityError, UnavailableError
from keycourier.redact import Secret

if TYPE_CHECKING:
    import hvac

    from keycourier.config import Settings, VaultSettings

MAX_CREDENTIAL_FILE_BYTES = 64 * 1024
_SAFE_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@=+")


class NotFoundError(ConfigError):
    """HTTP 404: nothing at the path (a ConfigError, so callers that do not ask see one)."""


class CasMismatchError(IntegrityError):
    """A KV v2 check-and-set write was refused: the record moved on meanwhile."""


@dataclass(frozen=True, slots=True)
class KvVersion:
    """One version of a KV v2 secret. ``data`` is None for deleted/destroyed versions."""

    version: int
    data: Mapping[str, Any] | None
    created_time: str
    deletion_time: str
    destroyed: bool
    custom_metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class KvMetadata:
    current_version: int
    versions: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    custom_metadata: Mapping[str, Any] = field(default_factory=dict)


# -- validation -----------------------------------------------------------------------


def check_path(path: str, what: str = "Vault path") -> str:
    """Refuse empty, absolute, traversing or oddly-charactered KV paths."""
    if not path or len(path) > 512:
        raise ConfigError(f"{what} must be 1-512 characters")
    if path.startswith("/") or path.endswith("/") or "//" in path:
        raise ConfigError(f"{what} must be relative, without empty segments")
    if any(seg in {".", ".."} for seg in path.split("/")):
        raise ConfigError(f"{what} must not contain '.' or '..' segments")
    if not set(path) <= _SAFE_PATH:
        raise ConfigError(f"{what} contains characters outside [A-Za-z0-9-_./:@=+]")
    return path


# Where `ingest` stores handed-over credentials (policies/vault/receiver.hcl): only the
# receiver may write there and no shipped policy lets any role read the data back.
INGEST_PREFIX = "handed-over"
# keycourier's provenance records (every role reads them) and the platform API
# credentials the token helper reads: never a place for handed-over credentials
RESERVED_PREFIXES = ("keycourier", "platform")


def check_ingest_path(path: str) -> str:
    """A --vault-path for `ingest`: a valid KV path under ``handed-over/`` (UsageError else)."""
    from keycourier.errors import UsageError

    try:
        check_path(path, "--vault-path")
    except ConfigError as exc:
        raise UsageError(exc.message) from None
    first = path.split("/", 1)[0]
    if first in RESERVED_PREFIXES:
        raise UsageError(
            f"--vault-path {path[:80]!r} is under {first}/, which other roles can read "
            f"({'provenance records' if first == 'keycourier' else 'the token helper'})",
            hints=[
                f"store handed-over credentials under {INGEST_PREFIX}/, e.g. "
                f"{INGEST_PREFIX}/acme/quickbooks"
            ],
        )
    if first != INGEST_PREFIX or "/" not in path:
        raise UsageError(
            f"--vault-path must be under {INGEST_PREFIX}/ (the receiver's prefix in "
            "policies/vault/receiver.hcl, which no other role can read)",
            hints=[f"for example --vault-path {INGEST_PREFIX}/acme/quickbooks"],
        )
    return path


def _check_addr(addr: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(addr)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(
            f"VAULT_ADDR must be an http(s) URL, got {addr[:80]!r}",
            hints=["for example VAULT_ADDR=https://vault.example.com:8200"],
        )
    return parts


# -- error translation ----------------------------------------------------------------


def _status_error(status: int, where: str, errors: str = "") -> Error:
    detail = f": {errors[:200]}" if errors else ""
    if status in {401, 403}:
        return AuthError(
            f"Vault refused {where} (permission denied, HTTP {status})",
            hints=["check the token's policies with 'keycourier doctor --role ...'"],
        )
    if status == 400 and "check-and-set" in errors:
        return CasMismatchError(f"Vault refused {where}: check-and-set version mismatch")
    if status in {429, 500, 502, 503, 504} or status == 501:
        why = {429: "rate limited", 501: "not initialised", 503: "sealed or in standby"}.get(
            status, "server error"
        )
        return UnavailableError(f"Vault is unavailable for {where} ({why}, HTTP {status})")
    if status == 404:
        return NotFoundError(f"Vault has nothing at {where} (HTTP 404)")
    if status == 412:
        return UnavailableError(f"Vault is not yet consistent for {where} (HTTP 412)")
    return ConfigError(f"Vault rejected {where} (HTTP {status}){detail}")


def translate(exc: BaseException, where: str) -> Error:
    """Map an hvac, requests or socket exception to a keycourier error."""
    import hvac.exceptions as hx
    import requests

    if isinstance(exc, Error):
        return exc
    if isinstance(exc, hx.VaultError):
        errors = (
            " ".join(str(e) for e in (exc.errors or []))
            if isinstance(exc.errors, list)
            else str(exc.errors or "")
        )
        table: dict[type[hx.VaultError], int] = {
            hx.InvalidRequest: 400,
            hx.Unauthorized: 401,
            hx.Forbidden: 403,
            hx.InvalidPath: 404,
            hx.PreconditionFailed: 412,
            hx.RateLimitExceeded: 429,
            hx.InternalServerError: 500,
            hx.VaultNotInitialized: 501,
            hx.BadGateway: 502,
            hx.VaultDown: 503,
        }
        for cls, status in table.items():
            if isinstance(exc, cls):
                return _status_error(status, where, errors)
        return UnavailableError(f"unexpected Vault answer for {where} ({type(exc).__name__})")
    if isinstance(exc, requests.exceptions.SSLError | ssl.SSLError):
        return ConfigError(
            f"TLS verification failed talking to Vault for {where}",
            hints=["set VAULT_CACERT to the CA bundle that signed the Vault certificate"],
        )
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return ConfigError(f"VAULT_ADDR is not a usable URL ({type(exc).__name__})")
    if isinstance(exc, requests.exceptions.RequestException | OSError | http.client.HTTPException):
        return UnavailableError(
            f"Vault is unreachable for {where} ({type(exc).__name__})",
            hints=["check VAULT_ADDR and that the server is running and unsealed"],
        )
    return UnavailableError(
        f"unexpected failure talking to Vault for {where} ({type(exc).__name__})"
    )


# -- log-in ---------------------------------------------------------------------------


def _read_credential_file(path: Path, what: str) -> Secret:
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CREDENTIAL_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the Vault {what} file {path}: {exc.strerror}") from None
    if len(raw) > MAX_CREDENTIAL_FILE_BYTES:
        raise ConfigError(f"the Vault {what} file {path} is too large")
    value = raw.decode("utf-8", errors="replace").strip()
    if not value:
        raise ConfigError(f"the Vault {what} file {path} is empty")
    return Secret(value)


def _vault_settings(settings: Settings | VaultSettings) -> tuple[VaultSettings, Mapping[str, str]]:
    from keycourier.config import Settings

    if isinstance(settings, Settings):
        return settings.vault, (settings.env or os.environ)
    return settings, os.environ


def _token_from(vs: VaultSettings, environ: Mapping[str, str]) -> Secret:
    """The Vault token for ``auth = "token"``: [vault] token_file, else the token variable."""
    if vs.token_file is not None:
        return _read_credential_file(vs.token_file, "token")
    if environ.get(vs.token_env):
        return Secret(environ[vs.token_env].strip())
    raise AuthError(
        "no Vault token",
        hints=[f"set {vs.token_env}, or [vault] token_file, or use approle/jwt auth"],
    )


def connect(
    settings: Settings | VaultSettings, *, env: Mapping[str, str] | None = None
) -> hvac.Client:
    """An authenticated hvac client (token, AppRole or JWT), or a translated error."""
    import hvac

    vs, default_env = _vault_settings(settings)
    environ = default_env if env is None else env
    if not vs.addr:
        raise ConfigError(
            "no Vault configured", hints=["set VAULT_ADDR or [vault] addr in the config"]
        )
    _check_addr(vs.addr)
    verify: bool | str = str(vs.cacert) if vs.cacert else True
    if vs.cacert is not None and not vs.cacert.is_file():
        raise ConfigError(f"VAULT_CACERT {vs.cacert} is not a readable file")
    client = hvac.Client(url=vs.addr, namespace=vs.namespace, timeout=vs.timeout, verify=verify)
    try:
        if vs.auth == "token":
            client.token = _token_from(vs, environ).reveal()
        elif vs.auth == "approle":
            if not vs.role_id or vs.secret_id_file is None:
                raise ConfigError("AppRole auth needs [vault] role_id and secret_id_file")
            secret_id = _read_credential_file(vs.secret_id_file, "secret ID")
            client.auth.approle.login(
                role_id=vs.role_id,
                secret_id=secret_id.reveal(),
                mount_point=vs.auth_mount or "approle",
            )
        elif vs.auth == "jwt":
            if not vs.jwt_role or vs.jwt_file is None:
                raise ConfigError("JWT auth needs [vault] jwt_role and jwt_file")
            jwt = _read_credential_file(vs.jwt_file, "JWT")
            client.auth.jwt.jwt_login(
                role=vs.jwt_role, jwt=jwt.reveal(), path=vs.auth_mount or "jwt"
            )
        else:  # pragma: no cover - config.load validates
            raise ConfigError(f"unknown Vault auth method {vs.auth!r}")
    except Error:
        raise
    except Exception as exc:  # noqa: BLE001 - the adapter boundary translates everything
        err = translate(exc, f"{vs.auth} log-in")
        if isinstance(err, ConfigError) and vs.auth != "token":
            err = AuthError(f"Vault refused the {vs.auth} log-in", hints=err.hints)
        raise err from None
    return client


# -- KV v2 ----------------------------------------------------------------------------


def _call(where: str, fn: Callable[..., Any], *args: object, **kwargs: object) -> Any:  # noqa: ANN401
    try:
        return fn(*args, **kwargs)
    except Error:
        raise
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        raise translate(exc, where) from None


def _is_404(fn: Callable[..., Any], *args: object, **kwargs: object) -> tuple[bool, Any]:
    import hvac.exceptions as hx

    try:
        return False, fn(*args, **kwargs)
    except hx.InvalidPath:
        return True, None


def kv_read(client: hvac.Client, mount: str, path: str) -> Mapping[str, Any] | None:
    """The latest data of a KV v2 secret, or None when there is none (or it was deleted)."""
    found = kv_read_version(client, mount, path)
    return None if found is None else found.data


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
    vs, default_env = _vault_settings(settings)
    environ = default_env if env is None else env
    if not vs.addr:
        raise ConfigError(
            "no Vault configured", hints=["set VAULT_ADDR or [vault] addr in the config"]
        )
    check_path(path)
    _check_addr(vs.addr)
    if vs.cacert is not None and not vs.cacert.is_file():
        raise ConfigError(f"VAULT_CACERT {vs.cacert} is not a readable file")
    kv = FastKV(vs, _token_from(vs, environ))
    try:
        return kv.read(mount, path)
    finally:
        kv.close()


def kv_read_version(
    client: hvac.Client, mount: str, path: str, version: int | None = None
) -> KvVersion | None:
    """One version (default: the latest) or None when absent. Deleted versions have data None."""
    check_path(path)
    where = f"a read of {mount}/{path}"
    try:
        missing, resp = _is_404(
            client.secrets.kv.v2.read_secret_version,
            path=path,
            mount_point=mount,
            version=version,
            raise_on_deleted_version=False,
        )
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        raise translate(exc, where) from None
    if missing or not isinstance(resp, dict):
        return None
    body = resp.get("data") or {}
    meta = body.get("metadata") or {}
    data = body.get("data")
    return KvVersion(
        version=int(meta.get("version") or 0),
        data=data if isinstance(data, dict) else None,
        created_time=str(meta.get("created_time") or ""),
        deletion_time=str(meta.get("deletion_time") or ""),
        destroyed=bool(meta.get("destroyed")),
        custom_metadata=meta.get("custom_metadata"),
    )


def kv_write(
    client: hvac.Client, mount: str, path: str, data: Mapping[str, Any], *, cas: int | None
) -> int:
    """Write a new version (with check-and-set when ``cas`` is given); return its number."""
    check_path(path)
    resp = _call(
        f"a write to {mount}/{path}",
        client.secrets.kv.v2.create_or_update_secret,
        path=path,
        secret=dict(data),
        cas=cas,
        mount_point=mount,
    )
    return int(resp["data"]["version"])


def kv_read_metadata(client: hvac.Client, mount: str, path: str) -> KvMetadata | None:
    check_path(path)
    where = f"a metadata read of {mount}/{path}"
    try:
        missing, resp = _is_404(
            client.secrets.kv.v2.read_secret_metadata, path=path, mount_point=mount
        )
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        raise translate(exc, where) from None
    if missing or not isinstance(resp, dict):
        return None
    body = resp.get("data") or {}
    versions = {int(k): v for k, v in (body.get("versions") or {}).items()}
    return KvMetadata(
        current_version=int(body.get("current_version") or 0),
        versions=versions,
        custom_metadata=dict(body.get("custom_metadata") or {}),
    )


def kv_list(client: hvac.Client, mount: str, path: str) -> list[str]:
    """The key names directly under ``path`` (folders end with "/"); empty when there are none."""
    check_path(path)
    where = f"a list of {mount}/{path}"
    try:
        missing, resp = _is_404(client.secrets.kv.v2.list_secrets, path=path, mount_point=mount)
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        raise translate(exc, where) from None
    if missing or not isinstance(resp, dict):
        return []
    keys = (resp.get("data") or {}).get("keys") or []
    return [str(k) for k in keys if isinstance(k, str)]


def kv_write_custom_metadata(
    client: hvac.Client, mount: str, path: str, custom: Mapping[str, str]
) -> None:
    """Set ``custom_metadata`` (only that: the write carries no other metadata parameter)."""
    check_path(path)
    _call(
        f"a metadata write to {mount}/{path}",
        client.adapter.post,
        f"/v1/{mount}/metadata/{path}",
        json={"custom_metadata": {str(k): str(v)[:512] for k, v in custom.items()}},
    )


class VaultKv:
    """The KV v2 operations of ingest (``handover.KvStore``) on one mount of a client."""

    def __init__(self, client: hvac.Client, mount: str) -> None:
        self.client = client
        self.mount = mount

    @classmethod
    def connect(cls, settings: Settings) -> VaultKv:
        """The KV mount of ``settings.vault``, logged in as ``connect`` does; checked
        reachable (``ping``) so that a script fails before it opens anything."""
        client = connect(settings)
        ping(client)
        return cls(client, settings.vault.mount)

    def read_metadata(self, path: str) -> KvMetadata | None:
        return kv_read_metadata(self.client, self.mount, path)

    def write(self, path: str, data: Mapping[str, str], *, cas: int) -> int:
        return kv_write(self.client, self.mount, path, data, cas=cas)

    def write_metadata(self, path: str, custom: Mapping[str, str]) -> None:
        kv_write_custom_metadata(self.client, self.mount, path, custom)


# -- fast keep-alive transport for the hot write path -----------------------------------


def _decode(status: int, raw: bytes, where: str) -> Any:  # noqa: ANN401 - decoded JSON
    if status >= 400:
        errors = ""
        try:
            errors = " ".join(str(e) for e in json.loads(raw).get("errors") or [])
        except (ValueError, AttributeError):
            errors = ""
        raise _status_error(status, where, errors)
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
        parts = _check_addr(settings.addr)
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


def token_of(client: hvac.Client) -> Secret:
    """The client's current token (after log-in), wrapped."""
    return Secret(str(client.token or ""))


def ping(client: hvac.Client) -> None:
    """Prove Vault is reachable, unsealed and accepts the token (auth/token/lookup-self)."""
    _call("a token look-up", client.auth.token.lookup_self)
