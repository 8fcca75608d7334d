"""Log in to Vault: the address, the token or credential file, an authenticated hvac client.

``connect`` logs in with the method ``[vault] auth`` names (token, AppRole or JWT) and
returns an hvac client; ``ping`` proves that client is accepted. hvac is imported inside
``connect`` only: the helpers here that read settings, the address and the token are also
used by the keep-alive transport (``fastkv``), which must not pay for hvac.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from keycourier.config import Settings
from keycourier.errors import AuthError, ConfigError, Error
from keycourier.files import read_limited
from keycourier.redact import Secret
from keycourier.vault.errors import call, translate

if TYPE_CHECKING:
    from pathlib import Path

    import hvac

    from keycourier.config import VaultSettings

MAX_CREDENTIAL_FILE_BYTES = 64 * 1024


def check_addr(addr: str) -> urllib.parse.SplitResult:
    """The parts of ``addr`` (VAULT_ADDR), which must be an http(s) URL with a host."""
    parts = urllib.parse.urlsplit(addr)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(
            f"VAULT_ADDR must be an http(s) URL, got {addr[:80]!r}",
            hints=["for example VAULT_ADDR=https://vault.example.com:8200"],
        )
    return parts


def _read_credential_file(path: Path, what: str) -> Secret:
    raw = read_limited(
        path, f"the Vault {what} file {path}", MAX_CREDENTIAL_FILE_BYTES, error=ConfigError
    )
    value = raw.decode("utf-8", errors="replace").strip()
    if not value:
        raise ConfigError(f"the Vault {what} file {path} is empty")
    return Secret(value)


def settings_and_env(
    settings: Settings | VaultSettings,
) -> tuple[VaultSettings, Mapping[str, str]]:
    """The Vault settings, and the environment their variables are read from."""
    if isinstance(settings, Settings):
        return settings.vault, (settings.env or os.environ)
    return settings, os.environ


def token_from(vs: VaultSettings, environ: Mapping[str, str]) -> Secret:
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

    vs, default_env = settings_and_env(settings)
    environ = default_env if env is None else env
    if not vs.addr:
        raise ConfigError(
            "no Vault configured", hints=["set VAULT_ADDR or [vault] addr in the config"]
        )
    check_addr(vs.addr)
    verify: bool | str = str(vs.cacert) if vs.cacert else True
    if vs.cacert is not None and not vs.cacert.is_file():
        raise ConfigError(f"VAULT_CACERT {vs.cacert} is not a readable file")
    client = hvac.Client(url=vs.addr, namespace=vs.namespace, timeout=vs.timeout, verify=verify)
    try:
        if vs.auth == "token":
            client.token = token_from(vs, environ).reveal()
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


def token_of(client: hvac.Client) -> Secret:
    """The client's current token (after log-in), wrapped."""
    return Secret(str(client.token or ""))


def ping(client: hvac.Client) -> None:
    """Prove Vault is reachable, unsealed and accepts the token (auth/token/lookup-self)."""
    call("a token look-up", client.auth.token.lookup_self)
