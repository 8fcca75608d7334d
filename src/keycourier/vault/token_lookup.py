"""Ask Vault about a token: ``GET /v1/auth/token/lookup-self`` over aiohttp.

The caller brings the session, where Vault is and the token; it decides what the
token's policies allow and how long to trust the answer. This module knows nothing of
the helper and imports only aiohttp and keycourier's base modules.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from keycourier.errors import UnavailableError

if TYPE_CHECKING:
    from pathlib import Path

    from keycourier.redact import Secret


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What Vault says about a token it accepts."""

    policies: frozenset[str]  # its token policies and identity policies together
    ttl: int | None  # seconds left; None when Vault gives no positive whole number
    display_name: str  # at most 64 characters: else the accessor, else "token"
    accessor: str  # else the display name


async def lookup_self(
    session: aiohttp.ClientSession,
    addr: str,
    token: Secret,
    *,
    namespace: str | None,
    cacert: Path | None,
    timeout: float,
) -> TokenInfo | None:
    """What Vault at ``addr`` says about ``token``; None when it refuses the token.

    Refused: HTTP 400, 401 or 403, or a reply without a ``data`` object. Any other
    status, a transport error, a timeout or a reply that is not JSON raises
    ``UnavailableError``: the token could not be checked. ``cacert``: the CA file
    Vault's certificate is checked against (else the system's).
    """
    headers = {"X-Vault-Token": token.reveal()}
    if namespace:
        headers["X-Vault-Namespace"] = namespace
    try:
        async with session.get(
            addr.rstrip("/") + "/v1/auth/token/lookup-self",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            ssl=_ssl(cacert),
        ) as resp:
            if resp.status in (400, 401, 403):
                return None
            if resp.status != 200:
                raise UnavailableError(f"Vault answered HTTP {resp.status} to lookup-self")
            doc = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise UnavailableError(f"cannot verify the Vault token ({type(exc).__name__})") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        return None
    policies = set(data.get("policies") or []) | set(data.get("identity_policies") or [])
    ttl = data.get("ttl")
    name = str(data.get("display_name") or data.get("accessor") or "token")[:64]
    return TokenInfo(
        frozenset(policies),
        ttl if isinstance(ttl, int) and ttl > 0 else None,
        name,
        str(data.get("accessor") or name),
    )


def _ssl(cacert: Path | None) -> ssl.SSLContext | bool:
    if cacert is None:
        return True
    return ssl.create_default_context(cafile=str(cacert))
