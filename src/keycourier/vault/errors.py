"""How a Vault failure becomes a keycourier error: one table for hvac, requests and http.client.

``status_error`` maps an HTTP status (and Vault's ``errors`` text) to a keycourier error;
``translate`` maps an exception raised by hvac, requests, ``ssl``, a socket or
``http.client`` to the same errors; ``call`` runs one hvac call under that translation. The
hvac path (``kv``, ``client``) and the keep-alive path (``fastkv``) share them, so a refusal
is the same error whichever transport met it.

:class:`NotFoundError` and :class:`CasMismatchError` live here, not beside the KV helpers,
because they are two rows of this table: the keep-alive transport raises them from a bare
HTTP status as the hvac path does from an hvac exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keycourier.errors import AuthError, ConfigError, Error, IntegrityError, UnavailableError


class NotFoundError(ConfigError):
    """HTTP 404: nothing at the path (a ConfigError, so callers that do not ask see one)."""


class CasMismatchError(IntegrityError):
    """A KV v2 check-and-set write was refused: the record moved on meanwhile."""


def status_error(status: int, where: str, errors: str = "") -> Error:
    """The keycourier error for Vault's HTTP ``status`` answering ``where``."""
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
    # Imported here so that importing this module (for its two error classes) stays
    # cheap; hvac imports requests, http.client and ssl in any case.
    import http.client
    import ssl

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
                return status_error(status, where, errors)
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


def call(where: str, fn: Callable[..., Any], *args: object, **kwargs: object) -> Any:  # noqa: ANN401
    """``fn(*args, **kwargs)`` (an hvac call), any failure translated for ``where``."""
    try:
        return fn(*args, **kwargs)
    except Error:
        raise
    except Exception as exc:  # noqa: BLE001 - adapter boundary
        raise translate(exc, where) from None
